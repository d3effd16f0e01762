# The fine-tuning baseline of the DO-Conv study (tools/study.py, `make study`): the demo's stock
# toy detector, started from a ResNet-18 backbone pretrained as a plain network on a differently
# seeded toy set (as the paper starts from ImageNet), with the stock Faster R-CNN's treatment of a
# pretrained backbone (stem and first stage frozen, BN statistics kept) and a shorter schedule.
_base_ = '../demo/faster-rcnn_r18_fpn_toy-coco.py'

backbone_checkpoint = 'work_dirs/study/det/pretrained_backbone.pth'  # written by tools/study.py
max_epochs = 6

model = dict(
    backbone=dict(frozen_stages=1, norm_eval=True,
                  init_cfg=dict(_delete_=True, type='Pretrained',
                                checkpoint=backbone_checkpoint)))
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[5], gamma=0.1)
]
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1))
