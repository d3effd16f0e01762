"""The paper's protocol at a scale that runs on a CPU (``tools/study.py``, ``make study``).

Per task (det: Faster R-CNN R18-FPN on toy COCO; seg: DeepLabv3 R18-D8 on toy Cityscapes):

1. pretrain the stock network from scratch on a toy set drawn with another seed (the demo's
   config and schedule): the stand-in for ImageNet pretraining;
2. keep its backbone as a plain checkpoint (tensors only, the format of published backbones);
3. fine-tune from that backbone on the main toy set: stock, DO-Conv in the head only, DO-Conv
   across the whole network (``configs/study/``: identical schedules and hyper-parameters; the
   DO-Conv layers load the plain weights as D = 0), several seeds each, through
   :class:`.compare.Comparison`, which pairs the runs by seed and writes the report.

Every step is skipped when its result exists, so an interrupted study continues where it stopped;
the pretraining, like each fine-tuning run (:class:`.compare.Comparison`), records its fingerprint
and a result trained with another one stops the study (``retrain``: trained again, and the
fine-tuning runs after it, whose fingerprints hold the backbone's content).
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
from typing import Callable, Dict, Optional, Sequence

import torch

from doconv_mm.atomic import write

from .compare import (Comparison, StaleRun, fingerprint_differences, last_checkpoint, pick_metric,
                      read_logs, seed_options, stale_message, write_report)
from .fingerprint import resolved_config, run_fingerprint, write_fingerprint
from .kernels import kernel_env

TASKS = {
    'det': dict(
        format='coco', data='data/toy_coco', pretrain_data='data/toy_coco_pretrain',
        pretrain='configs/demo/faster-rcnn_r18_fpn_toy-coco.py', prefix='backbone.',
        configs=['configs/study/faster-rcnn_r18_fpn_pretrained_toy-coco.py',
                 'configs/study/faster-rcnn_r18_fpn_doconv-head_pretrained_toy-coco.py',
                 'configs/study/faster-rcnn_r18_fpn_doconv-all_pretrained_toy-coco.py']),
    'seg': dict(
        format='cityscapes', data='data/toy_cityscapes',
        pretrain_data='data/toy_cityscapes_pretrain',
        pretrain='configs/demo/deeplabv3_r18-d8_toy-cityscapes.py', prefix='backbone.',
        configs=['configs/study/deeplabv3_r18-d8_pretrained_toy-cityscapes.py',
                 'configs/study/deeplabv3_r18-d8_doconv-head_pretrained_toy-cityscapes.py',
                 'configs/study/deeplabv3_r18-d8_doconv-all_pretrained_toy-cityscapes.py']),
}
PRETRAIN_SEED = 100  # the pretraining set's images and the pretraining run's seed


def data_options(task: str, data_root: str) -> list:
    """cfg-options that point a demo config at another copy of its toy dataset."""
    root = data_root.rstrip('/') + '/'
    options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    if task == 'det':
        ann = root + 'annotations/instances_val2017.json'
        options += [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']
    return options


def backbone_checkpoint(src: str, dst: str, prefix: str = 'backbone.') -> int:
    """Write ``src``'s backbone weights (``prefix`` stripped) to ``dst`` as ``{'state_dict':
    ...}`` of tensors only, loadable with ``weights_only=True``; returns the tensor count."""
    ckpt = torch.load(src, map_location='cpu', weights_only=False)  # this study's own file
    state = {k[len(prefix):]: v for k, v in ckpt['state_dict'].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f'{src} holds no weights under {prefix!r}')
    write(dst, lambda tmp: torch.save({'state_dict': state}, tmp))
    return len(state)


def run_task(root: str, workspace: str, task: str, seeds: Sequence[int],
             cfg_options: Sequence[str] = (), log: Callable[[str], None] = print,
             progress: Optional[Callable[[], None]] = None, retrain: bool = False) -> Dict:
    """One task's steps 1-3 (see the module doc); returns the comparison's report. ``retrain``:
    the pretraining and the fine-tuning runs trained with another fingerprint than this call's
    are trained again (:class:`.Comparison`)."""
    spec = TASKS[task]
    study = osp.join(workspace, 'work_dirs', 'study', task)
    py, tools = sys.executable, osp.join(root, 'tools')
    for data, seed in ((spec['data'], 0), (spec['pretrain_data'], PRETRAIN_SEED)):
        subprocess.run([py, osp.join(tools, 'make_toy_data.py'), spec['format'],
                        osp.join(workspace, data), '--seed', str(seed)], cwd=workspace,
                       check=True, stdout=subprocess.DEVNULL)
    backbone = osp.join(study, 'pretrained_backbone.pth')
    pretrain_dir = osp.join(study, 'pretrain')
    options = [*seed_options(PRETRAIN_SEED), *data_options(task, spec['pretrain_data'])]
    fingerprint = run_fingerprint(resolved_config(osp.join(root, spec['pretrain']), options),
                                  PRETRAIN_SEED, workspace)
    started = osp.isfile(osp.join(pretrain_dir, 'last_checkpoint'))
    diff = fingerprint_differences(pretrain_dir, fingerprint) if started else []
    if diff and not retrain:
        raise StaleRun(stale_message(f'{task} pretraining', pretrain_dir, diff))
    if diff:  # pretrain again; the fine-tuning runs follow (their fingerprints hold the backbone)
        shutil.rmtree(pretrain_dir)
        if osp.isfile(backbone):
            os.remove(backbone)
        started = False
    if not osp.isfile(backbone):
        log(f'{task}: pretraining the stock network on {spec["pretrain_data"]} '
            f'({spec["pretrain"]})')
        cmd = [py, osp.join(tools, 'train.py'), osp.join(root, spec['pretrain']), '--work-dir',
               pretrain_dir, '--cfg-options', *options] + (['--resume'] if started else [])
        if not started:
            write_fingerprint(pretrain_dir, fingerprint)
        with open(osp.join(pretrain_dir, 'study_train.log'), 'a') as f:
            subprocess.run(cmd, cwd=workspace, env=kernel_env(), check=True, stdout=f,
                           stderr=subprocess.STDOUT)
        n = backbone_checkpoint(last_checkpoint(pretrain_dir), backbone, spec['prefix'])
        val = read_logs(pretrain_dir)['val']
        metric = pick_metric(val[max(val)], None)
        log(f'{task}: pretrained ({metric} {val[max(val)][metric]}); {n} backbone tensors -> '
            f'{backbone}')
    comparison = Comparison(root, [osp.join(root, c) for c in spec['configs']], seeds, study,
                            cfg_options, cwd=workspace, retrain=retrain)
    log(f'{task}: fine-tuning {len(spec["configs"])} configs x {len(seeds)} seeds')
    comparison.train(progress)
    report = comparison.collect()
    report['paths'] = write_report(report, osp.join(study, 'compare'))
    return report
