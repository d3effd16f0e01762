# DeepLabv3 R50-D8, Cityscapes 512x1024, 80k, with DO-Conv in the heads only: every k x k conv (k > 1)
# of the ASPP decode head (the dilation 12/24/36 branches and the 3x3 bottleneck) and of the FCN
# auxiliary head. The backbone and all 1x1 convs (conv_seg included) stay plain. Nothing else changes
# from the stock baseline config.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    decode_head=dict(conv_cfg=dict(type='DOConv')),
    auxiliary_head=dict(conv_cfg=dict(type='DOConv')))
