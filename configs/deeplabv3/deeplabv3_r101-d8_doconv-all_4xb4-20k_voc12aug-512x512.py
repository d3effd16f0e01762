# DeepLabv3 R101-D8, PASCAL VOC 2012 + aug 512x512, 20k, with DO-Conv across the whole network: the
# heads plus every k x k conv of the ResNetV1c-101 backbone. open-mmlab://resnet101_v1c loads exactly.
_base_ = './deeplabv3_r101-d8_doconv-head_4xb4-20k_voc12aug-512x512.py'

model = dict(backbone=dict(conv_cfg=dict(type='DOConv')))
