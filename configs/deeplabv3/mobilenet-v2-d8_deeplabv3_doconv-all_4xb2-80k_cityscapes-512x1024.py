# DeepLabv3 with a MobileNetV2-D8 backbone, Cityscapes 512x1024, 80k, with DO-Conv across the whole
# network. MobileNetV2's 3x3 depthwise convs (groups = channels) train as DO-DConv. mmcls://mobilenet_v2
# loads into DO-Conv exactly.
_base_ = 'mmseg::mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(conv_cfg=dict(type='DOConv')),
    decode_head=dict(conv_cfg=dict(type='DOConv')),
    auxiliary_head=dict(conv_cfg=dict(type='DOConv')))
