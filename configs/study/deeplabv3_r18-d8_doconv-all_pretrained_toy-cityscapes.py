# The study's segmentation baseline with DO-Conv across the whole network: the change of
# configs/deeplabv3/deeplabv3_r50-d8_doconv-all_4xb2-80k_cityscapes-512x1024.py. The pretrained
# plain backbone loads as D = 0.
_base_ = './deeplabv3_r18-d8_pretrained_toy-cityscapes.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(conv_cfg=dict(type='DOConv')),
    decode_head=dict(conv_cfg=dict(type='DOConv')),
    auxiliary_head=dict(conv_cfg=dict(type='DOConv')))
