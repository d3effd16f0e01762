# Faster R-CNN R50-FPN, 1x, COCO, with DO-Conv in the head only: every k x k conv (k > 1) outside the
# backbone (the FPN's 3x3 output convs, the RPN's 3x3 conv). The backbone stays plain. Nothing else
# changes from the stock baseline config.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['doconv_mm'], allow_failed_imports=False)

model = dict(
    neck=dict(conv_cfg=dict(type='DOConv')),
    # the stock RPNHead hard-codes nn.Conv2d; this one is the same head with a conv_cfg
    rpn_head=dict(type='ConvCfgRPNHead', conv_cfg=dict(type='DOConv')))
