# Faster R-CNN ResNeXt-101 32x4d FPN, 1x, COCO, with DO-Conv across the whole network. The
# bottlenecks' 3x3 convs are grouped (groups=32), so they train as DO-GConv: D acts on each global
# input channel, whatever group reads it. open-mmlab://resnext101_32x4d loads into DO-Conv exactly.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(conv_cfg=dict(type='DOConv')),
    neck=dict(conv_cfg=dict(type='DOConv')),
    rpn_head=dict(type='ConvCfgRPNHead', conv_cfg=dict(type='DOConv')))
