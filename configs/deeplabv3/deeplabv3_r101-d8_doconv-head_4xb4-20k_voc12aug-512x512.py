# DeepLabv3 R101-D8, PASCAL VOC 2012 + aug 512x512, 20k, with DO-Conv in the heads only (see the
# Cityscapes doconv-head config for which convs). Nothing else changes from the stock baseline config.
_base_ = 'mmseg::deeplabv3/deeplabv3_r101-d8_4xb4-20k_voc12aug-512x512.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    decode_head=dict(conv_cfg=dict(type='DOConv')),
    auxiliary_head=dict(conv_cfg=dict(type='DOConv')))
