# The study's baseline with DO-Conv in the head only: the change of
# configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-head_1x_coco.py (FPN and RPN convs).
_base_ = './faster-rcnn_r18_fpn_pretrained_toy-coco.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    neck=dict(conv_cfg=dict(type='DOConv')),
    rpn_head=dict(type='ConvCfgRPNHead', conv_cfg=dict(type='DOConv')))
