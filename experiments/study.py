"""The paper's protocol at a scale that runs on a CPU (``tools/study.py``, ``make study``).

Per task (det: Faster R-CNN R18-FPN on toy COCO; seg: DeepLabv3 R18-D8 on toy Cityscapes):

1. pretrain the stock network from scratch on a toy set drawn with another seed (the demo's
   config and schedule): the stand-in for ImageNet pretraining;
2. keep its backbone as a plain checkpoint (tensors only, the format of published backbones);
3. fine-tune from that backbone on the main toy set: stock, DO-Conv in the head only, DO-Conv
   across the whole network (``configs/study/``: identical schedules and hyper-parameters; the
   DO-Conv layers load the plain weights as D = 0), several seeds each, through
   :class:`.compare.Comparison`, which pairs the runs by seed and writes the report.

Every run, the pretraining included, writes its record when it finishes (:mod:`.records`): a
recorded run is not trained again, so a study stopped anywhere continues from its records, in a
later session or on another machine, and one whose runs are all recorded reports without
training anything. The pretraining's record holds the backbone's content hash, which the
fine-tuning runs' fingerprints hold: where a fine-tuning run has to train and the backbone is not
here, the pretraining runs again, and it must write the same backbone (the kernels are pinned,
:mod:`.kernels`) or the study stops. Like each fine-tuning run (:class:`.compare.Comparison`), the
pretraining records its fingerprint and a result trained with another one stops the study
(``retrain``: trained again, and the fine-tuning runs after it).
"""
import io
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
from typing import Callable, Dict, Optional, Sequence

import torch

from doconv_mm.atomic import write

from . import records
from .compare import (Comparison, StaleRun, config_name, fingerprint_differences, last_checkpoint,
                      pick_metric, read_logs, seed_options, stale_message, write_report)
from .fingerprint import (differences, file_id, resolved_config, run_fingerprint,
                          write_fingerprint)
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
# the sized study's seeds: enough for a 95% half-width of about 0.01 bbox mAP and 0.5 mIoU on
# the large split (the noise study's sizing, docs/study.md; for detection, its sizing on the first
# ten seeds: 19 for DO-Conv head, 14 for DO-Conv all)
SEEDS = {'det': list(range(19)), 'seg': list(range(6))}
# tools/study.py --quick: every step on a schedule of minutes, a smoke run of the pipeline (its
# numbers say nothing about DO-Conv): the pretraining's options, then the fine-tuning runs'
QUICK = {
    'det': (['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
             'default_hooks.checkpoint.interval=1'],
            ['train_cfg.max_epochs=2']),
    'seg': (['train_cfg.max_iters=20', 'train_cfg.val_interval=20',
             'default_hooks.checkpoint.interval=20', 'param_scheduler.0.end=20'],
            ['train_cfg.max_iters=30', 'train_cfg.val_interval=10',
             'default_hooks.checkpoint.interval=10', 'param_scheduler.0.end=30']),
}
PRETRAIN_SEED = 100  # the pretraining set's images and the pretraining run's seed
STUDY_IMAGES = {'det': 16, 'seg': 8}  # the toy sets' validation images (tools/make_toy_data.py)


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
    buffer = io.BytesIO()  # not the file: torch.save names the archive after the file's name
    torch.save({'state_dict': state}, buffer)
    write(dst, buffer.getvalue())  # the same weights give the same bytes, in any session
    return len(state)


def run_task(root: str, workspace: str, task: str, seeds: Sequence[int],
             cfg_options: Sequence[str] = (), log: Callable[[str], None] = print,
             progress: Optional[Callable[[], None]] = None, retrain: bool = False,
             records_dir: Optional[str] = None, need_checkpoint=None, after_seed=None,
             pretrain_options: Sequence[str] = ()) -> Dict:
    """One task's steps 1-3 (see the module doc); returns the comparison's report
    (``cfg_options``: of every fine-tuning run; ``pretrain_options``: of the pretraining). Each run,
    the pretraining included, is recorded in ``records_dir``/``task`` (default
    ``workspace``/work_dirs/study/records; :mod:`.records`): a recorded run is not trained again
    (unless ``need_checkpoint(config, seed, record)``; :meth:`.Comparison.train`, which calls
    ``after_seed(seed)`` when a seed's runs are done), and the pretraining runs only when a
    fine-tuning run has to train. ``retrain``: the pretraining and
    the fine-tuning runs trained with another fingerprint than this call's are trained again."""
    spec = TASKS[task]
    study = osp.join(workspace, 'work_dirs', 'study', task)
    task_records = osp.join(records_dir or osp.join(workspace, 'work_dirs', 'study', 'records'),
                            task)
    py, tools = sys.executable, osp.join(root, 'tools')
    for data, seed in ((spec['data'], 0), (spec['pretrain_data'], PRETRAIN_SEED)):
        subprocess.run([py, osp.join(tools, 'make_toy_data.py'), spec['format'],
                        osp.join(workspace, data), '--seed', str(seed)], cwd=workspace,
                       check=True, stdout=subprocess.DEVNULL)
    backbone = osp.join(study, 'pretrained_backbone.pth')
    pretrain_dir = osp.join(study, 'pretrain')
    options = [*seed_options(PRETRAIN_SEED), *data_options(task, spec['pretrain_data']),
               *pretrain_options]
    fingerprint = run_fingerprint(resolved_config(osp.join(root, spec['pretrain']), options),
                                  PRETRAIN_SEED, workspace)
    pre_path = records.record_path(task_records, config_name(spec['pretrain']), PRETRAIN_SEED)
    pre = records.read(pre_path)
    started = osp.isfile(osp.join(pretrain_dir, 'last_checkpoint'))
    diff, where = (fingerprint_differences(pretrain_dir, fingerprint), pretrain_dir) if started \
        else ([], None)
    if not diff and pre is not None:
        diff, where = differences(pre['fingerprint'], fingerprint), pre_path
    if diff and not retrain:
        raise StaleRun(stale_message(f'{task} pretraining', where, diff))
    if diff:  # pretrain again; the fine-tuning runs follow (their fingerprints hold the backbone)
        for path in (pretrain_dir, backbone, pre_path):
            if osp.isdir(path):
                shutil.rmtree(path)
            elif osp.isfile(path):
                os.remove(path)
        started, pre = False, None
    # the backbone as its record knows it, where its file is not here
    known = {osp.relpath(backbone, workspace): pre['backbone']} if pre is not None else {}

    def comparison(checkpoints):
        return Comparison(root, [osp.join(root, c) for c in spec['configs']], seeds, study,
                          cfg_options, cwd=workspace, retrain=retrain, records=task_records,
                          checkpoints=checkpoints)

    if not osp.isfile(backbone) and (pre is None or comparison(known).pending(need_checkpoint)):
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
    here = file_id(backbone) if osp.isfile(backbone) else None
    if here is not None and pre is not None and here != pre['backbone'] and not retrain:
        raise RuntimeError(
            f'{task} pretraining did not repeat: the backbone {backbone} differs from the one '
            f'its record {pre_path} holds, from which the fine-tuning runs recorded there '
            f'trained; --retrain trains the pretraining and them again')
    if here is not None and (pre is None or here != pre['backbone']):
        pre = dict(records.from_run(root, pretrain_dir, config_name(spec['pretrain']),
                                    PRETRAIN_SEED, fingerprint, read_logs(pretrain_dir),
                                    last_checkpoint(pretrain_dir)), backbone=here)
        records.write(pre_path, pre)
    compared = comparison({} if here is not None else known)
    log(f'{task}: fine-tuning {len(spec["configs"])} configs x {len(seeds)} seeds')
    compared.train(progress, need_checkpoint, after_seed)
    report = compared.collect()
    report['paths'] = write_report(report, osp.join(study, 'compare'))
    return report


def recorded_seeds(records_dir: str, task: str, seeds: Sequence[int], needs=None) -> list:
    """The seeds of ``seeds`` whose fine-tuning runs are all recorded in ``records_dir``/``task``
    and, with ``needs(config, seed, record)`` (what still needs a run's checkpoint: an
    evaluation not recorded yet), need nothing more: a study in progress reports these."""
    def done(config, seed):
        record = records.read(records.record_path(osp.join(records_dir, task),
                                                  config_name(config), seed))
        return record is not None and not (needs and needs(config, seed, record))

    return [s for s in seeds if all(done(c, s) for c in TASKS[task]['configs'])]


LABELS = {'det': ('det, Faster R-CNN R18-FPN, bbox mAP', 4),
          'seg': ('seg, DeepLabv3 R18-D8, mIoU', 2)}  # a task's row label and its digits


def _difference(d: dict, digits: int) -> str:
    return (f"{d['mean']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}], "
            f"{d['p']:.3f}")


def speed_summary(speeds: Dict[str, dict]) -> str:
    """README's training-speed table: per task, each DO-Conv config's paired difference against
    stock [95% CI], p, of the training loss in each third of the schedule and of the metric at
    the first validation (``speeds``: :func:`.speed.compare_speed` of each task's report)."""
    lines = ['| task | quantity | DO-Conv head − stock [95% CI], p | DO-Conv all − stock [95% CI], '
             'p |', '| --- | --- | --- | --- |']
    for task, sp in speeds.items():
        label, digits = LABELS[task]
        rows = [(f'training loss, iterations {lo}-{hi}', [c['loss'][w] for c in
                                                          sp['configs'].values()], 4)
                for w, (lo, hi) in enumerate(sp['windows'])]
        rows.append((f"{sp['metric']} at the first validation (step {sp['steps'][0]} of "
                     f"{sp['steps'][-1]})", [c['val'][0] for c in sp['configs'].values()],
                     digits))
        for quantity, diffs, k in rows:
            lines.append(f'| {label.split(", ")[0]} | {quantity} | '
                         + ' | '.join(_difference(d, k) for d in diffs) + ' |')
    return '\n'.join(lines)


def summary(reports: Dict[str, dict], noise_results: Sequence[dict] = ()) -> str:
    """README's table: per task, stock's final metric (mean ± std over seeds) and each DO-Conv
    config's paired difference [95% CI], p, on the study's validation set (``reports``, as
    :meth:`.Comparison.collect` makes them) and on the large split (``noise_results``, as
    :func:`.noise.run_task` makes them); then the machines the runs came from."""
    lines = ['| task | seeds | validation images | stock (mean ± std) | DO-Conv head − stock '
             '[95% CI], p | DO-Conv all − stock [95% CI], p |', '| --- ' * 6 + '|']
    large = {r['task']: r for r in noise_results}
    every = []
    for task, report in reports.items():
        label, digits = LABELS[task]
        base = report['baseline']
        rows = [(STUDY_IMAGES[task], report['configs'][base]['values'], report['comparisons'])]
        if task in large:
            r = large[task]
            rows.append((r['images'], list(r['metrics'][base].values()),
                         {name: c['paired'] for name, c in r['configs'].items()}))
        for images, stock, comparisons in rows:
            cells = [f'{statistics.fmean(stock):.{digits}f} ± {statistics.stdev(stock):.{digits}f}']
            cells += [_difference(d, digits) for d in comparisons.values()]
            lines.append(f'| {label} | {len(stock)} | {images} | ' + ' | '.join(cells) + ' |')
        every += report['machines']
    merged = {}  # the machines of all tasks, each once
    for m in every:
        merged.setdefault(m['id'], dict(m, runs=0))['runs'] += m['runs']
    every = list(merged.values())
    runs = sum(m['runs'] for m in every)
    commits = sorted({c for report in reports.values() for c in report['commits']})
    lines += ['', f'{runs} fine-tuning runs, recorded at {", ".join(commits) or "unknown"}, from '
              + '; '.join(f"{records.describe(m)}: {m['runs']}" for m in every) + '.']
    return '\n'.join(lines)
