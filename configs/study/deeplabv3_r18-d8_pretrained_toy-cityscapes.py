# The segmentation baseline of the DO-Conv study (tools/study.py, `make study`): the demo's stock
# toy DeepLabv3 R18-D8, started from a ResNetV1c-18 backbone pretrained as a plain network on a
# differently seeded toy set (as the paper starts from ImageNet); the whole network trains, as in
# mmseg's Cityscapes schedules.
_base_ = '../demo/deeplabv3_r18-d8_toy-cityscapes.py'

backbone_checkpoint = 'work_dirs/study/seg/pretrained_backbone.pth'  # written by tools/study.py
max_iters = 150

model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=backbone_checkpoint)))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters,
                        by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=25)
default_hooks = dict(checkpoint=dict(interval=25, max_keep_ckpts=1))
