# DeepLabv3 R50-D8, Cityscapes 512x1024, 80k, with DO-Conv across the whole network: the heads of the
# doconv-head config plus every k x k conv of the ResNetV1c backbone (the three 3x3 stem convs and the
# bottlenecks' 3x3, dilated ones included). open-mmlab://resnet50_v1c loads into DO-Conv exactly.
_base_ = './deeplabv3_r50-d8_doconv-head_4xb2-80k_cityscapes-512x1024.py'

model = dict(backbone=dict(conv_cfg=dict(type='DOConv')))
