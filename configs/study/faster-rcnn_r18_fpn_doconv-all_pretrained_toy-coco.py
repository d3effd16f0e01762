# The study's baseline with DO-Conv across the whole network: the change of
# configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-all_1x_coco.py. The pretrained plain backbone
# loads as D = 0, so training starts from exactly the baseline's network.
_base_ = './faster-rcnn_r18_fpn_pretrained_toy-coco.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(conv_cfg=dict(type='DOConv')),
    neck=dict(conv_cfg=dict(type='DOConv')),
    rpn_head=dict(type='ConvCfgRPNHead', conv_cfg=dict(type='DOConv')))
