# Faster R-CNN R50-FPN, 1x, COCO, with DO-Conv across the whole network: the head convs of the
# doconv-head config plus every k x k conv of the ResNet-50 (the 7x7 stem and the bottlenecks' 3x3).
# The backbone still starts from torchvision://resnet50: plain weights load into DO-Conv exactly.
_base_ = './faster-rcnn_r50_fpn_doconv-head_1x_coco.py'

model = dict(backbone=dict(conv_cfg=dict(type='DOConv')))
