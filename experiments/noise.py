"""Where a study's noise comes from: the size of its validation set or its training seeds
(``tools/study.py --noise``; docs/study.md).

Every finished fine-tuning run of the study (config x seed) is evaluated once more, through
``tools/test.py`` with its predictions kept, on a large validation split drawn by the same
generator with another seed. Per task, per DO-Conv config against stock, with ``d`` the paired
difference of the final metric (DO-Conv - stock, same seed, same images):

- validation noise: the variance of ``d`` between disjoint subsets of the large split as big as the
  study's validation set (16 images for det, 8 for seg), pooled over seeds; subsets of 2, 4, ...
  times that size show how it shrinks with the images;
- seed noise: the variance of ``d`` over seeds on the whole large split, less the validation share
  left at that size (the study-size variance scaled by ``n / N``, as for a mean over images);
- the paired comparison on the whole large split (mean, 95% interval, p, minimum detectable
  effect): the study's own question answered with the validation noise made small;
- the interval that a study of ``S`` seeds and ``N`` validation images would have: half-width
  ``t(0.975, S - 1) * sqrt((seed variance + validation variance at N) / S)``, and the seeds that
  reach a target half-width.

Subset metrics are the configs' own: COCO bbox mAP through pycocotools' COCOeval restricted to
the subset's images, mIoU as mmseg's IoUMetric computes it from per-image class areas; on the whole
split they equal what ``tools/test.py`` reports (``tests/experiments/test_noise.py``).
"""
import contextlib
import io
import json
import math
import os
import os.path as osp
import pickle
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from doconv_mm.atomic import write_files
from .compare import config_name, last_checkpoint, run_dir
from .paired_stats import paired, t_quantile
from .study import TASKS, data_options

# the large validation split: its images, the generator's seed, where it goes, the study's own
# validation size and the half-width the study should reach
SPLITS = {
    'det': dict(data='data/toy_coco_noise', study_images=16, target=0.01),
    'seg': dict(data='data/toy_cityscapes_noise', study_images=8, target=0.5),
}
NOISE_SEED = 7
SEG_IGNORE = 255


def detections(pkl: str) -> List[dict]:
    """COCO-format detections (``loadRes``'s input) from ``tools/test.py --out`` of an mmdet
    config, with the labels mapped to category ids as mmdet's CocoMetric maps them."""
    with open(pkl, 'rb') as f:
        samples = pickle.load(f)
    dets = []
    for s in samples:
        pred = s['pred_instances']
        boxes, scores, labels = (pred[k].tolist() for k in ('bboxes', 'scores', 'labels'))
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            dets.append(dict(image_id=int(s['img_id']), score=score, category_id=int(label),
                             bbox=[x0, y0, x1 - x0, y1 - y0]))
    return dets


class DetSubsets:
    """COCO bbox mAP of one run's detections on any subset of the split's images."""

    def __init__(self, ann_file: str, dets: List[dict]) -> None:
        from pycocotools.coco import COCO
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO(ann_file)
            # mmdet's label k is the k-th category of the file (the toy set lists its classes)
            cat_ids = self.gt.getCatIds()
            for d in dets:
                d['category_id'] = cat_ids[d['category_id']]
            self.dt = self.gt.loadRes(dets) if dets else None
        self.cat_ids, self.images = cat_ids, sorted(self.gt.getImgIds())

    def metric(self, image_ids: Sequence[int]) -> float:
        if self.dt is None:
            return 0.0
        from pycocotools.cocoeval import COCOeval
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(self.gt, self.dt, 'bbox')
            ev.params.catIds, ev.params.imgIds = self.cat_ids, list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[0])


class SegSubsets:
    """mIoU (in %) of one run's predicted maps on any subset of the split's images."""

    def __init__(self, pairs: Sequence[tuple], num_classes: int) -> None:
        import cv2
        areas = []
        for pred_png, gt_png in pairs:
            pred = cv2.imread(pred_png, cv2.IMREAD_UNCHANGED).astype(np.int64)
            gt = cv2.imread(gt_png, cv2.IMREAD_UNCHANGED).astype(np.int64)
            keep = gt != SEG_IGNORE
            pred, gt = pred[keep], gt[keep]
            inter = np.bincount(gt[pred == gt], minlength=num_classes)[:num_classes]
            area_pred = np.bincount(pred, minlength=num_classes)[:num_classes]
            area_gt = np.bincount(gt, minlength=num_classes)[:num_classes]
            areas.append((inter, area_pred + area_gt - inter))
        self.inter = np.array([a[0] for a in areas], np.float64)
        self.union = np.array([a[1] for a in areas], np.float64)
        self.images = list(range(len(pairs)))

    def metric(self, image_ids: Sequence[int]) -> float:
        idx = list(image_ids)
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = self.inter[idx].sum(0) / self.union[idx].sum(0)
        return float(np.nanmean(iou) * 100)  # classes absent from the subset count as nan


def subsets(images: Sequence[int], size: int) -> List[List[int]]:
    """``images`` (in their order) cut into ``len(images) // size`` disjoint subsets of ``size``."""
    return [list(images[k * size:(k + 1) * size]) for k in range(len(images) // size)]


def decompose(diffs_by_subset: Dict[int, List[float]], diffs_full: Dict[int, float],
              subset_images: int, full_images: int) -> dict:
    """The variance of a paired difference split into validation and seed noise (module doc).

    Args:
        diffs_by_subset: per seed, the difference on each disjoint subset of ``subset_images``.
        diffs_full: per seed, the difference on the whole split of ``full_images``.
    """
    seeds = sorted(diffs_full)
    if len(seeds) < 2 or any(len(diffs_by_subset[s]) < 2 for s in seeds):
        raise ValueError('decompose: need two or more seeds and two or more subsets per seed')
    val = statistics.fmean(statistics.variance(diffs_by_subset[s]) for s in seeds)
    full = statistics.variance([diffs_full[s] for s in seeds])
    val_full = val * subset_images / full_images
    return dict(seeds=len(seeds), subsets=len(diffs_by_subset[seeds[0]]),
                subset_images=subset_images, full_images=full_images, val_var=val,
                full_var=full, seed_var=max(full - val_full, 0.0),
                mean_full=statistics.fmean(diffs_full[s] for s in seeds))


def half_width(seed_var: float, val_var: float, subset_images: int, seeds: int, images: int,
               confidence: float = 0.95) -> float:
    """The paired interval's half-width for ``seeds`` seeds and ``images`` validation images."""
    var = seed_var + val_var * subset_images / images
    return t_quantile(0.5 + confidence / 2, seeds - 1) * math.sqrt(var / seeds)


def seeds_needed(seed_var: float, val_var: float, subset_images: int, images: int,
                 target: float, most: int = 1000) -> Optional[int]:
    """The fewest seeds (>= 2) whose half-width at ``images`` images is at most ``target``; None
    past ``most``."""
    for seeds in range(2, most + 1):
        if half_width(seed_var, val_var, subset_images, seeds, images) <= target:
            return seeds
    return None


def _evaluate_run(root: str, workspace: str, task: str, config: str, checkpoint: str, data: str,
                  out: str) -> None:
    """``tools/test.py`` of one run on the large split, its predictions kept at ``out`` (a .pkl
    for det, a folder of maps for seg); written whole or not at all."""
    stem, ext = osp.splitext(out)
    tmp = stem + '.tmp' + ext  # mmdet wants a .pkl
    subprocess.run([sys.executable, osp.join(root, 'tools', 'test.py'), config, checkpoint,
                    '--out', tmp, '--work-dir', osp.join(osp.dirname(out), 'logs'), '--cfg-options',
                    *data_options(task, data)], cwd=workspace, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    os.replace(tmp, out)


def _scorer(task: str, data: str, out: str):
    if task == 'det':
        return DetSubsets(osp.join(data, 'annotations', 'instances_val2017.json'),
                          detections(out))
    gt_dir = osp.join(data, 'gtFine', 'val', 'toycity')
    stems = sorted(f[:-len('_gtFine_labelTrainIds.png')] for f in os.listdir(gt_dir)
                   if f.endswith('_gtFine_labelTrainIds.png'))
    pairs = [(osp.join(out, s + '_leftImg8bit.png'),
              osp.join(gt_dir, s + '_gtFine_labelTrainIds.png')) for s in stems]
    return SegSubsets(pairs, num_classes=19)


def run_task(root: str, workspace: str, task: str, seeds: Sequence[int], images: int,
             log=print) -> dict:
    """Evaluate the study's finished runs of ``task`` on ``images`` new validation images and
    decompose each DO-Conv config's paired difference against stock (module doc)."""
    spec, split = TASKS[task], SPLITS[task]
    study = osp.join(workspace, 'work_dirs', 'study', task)
    data = osp.join(workspace, split['data'] + f'_{images}')
    subprocess.run([sys.executable, osp.join(root, 'tools', 'make_toy_data.py'), spec['format'],
                    data, '--num-train', '0', '--num-val', str(images), '--seed',
                    str(NOISE_SEED)], cwd=workspace, check=True, stdout=subprocess.DEVNULL)
    n = split['study_images']
    sizes = [n * 2 ** k for k in range(int(math.log2(images // n)) + 1) if images // (n * 2 ** k)
             >= 4]
    values = {}  # config -> seed -> {'full': metric, size: [metric per subset]}
    for config in spec['configs']:
        name = config_name(config)
        for seed in seeds:
            ext = '.pkl' if task == 'det' else ''
            out = osp.join(study, 'noise', f'{images}', name, f'seed{seed}{ext}')
            if not osp.exists(out):
                os.makedirs(osp.dirname(out), exist_ok=True)
                log(f'{task}: {name} seed {seed} on {images} new validation images')
                _evaluate_run(root, workspace, task, osp.join(root, config),
                              last_checkpoint(run_dir(study, osp.join(root, config), seed)),
                              data, out)
            scorer = _scorer(task, data, out)
            values.setdefault(name, {})[seed] = {
                'full': scorer.metric(scorer.images),
                **{size: [scorer.metric(s) for s in subsets(scorer.images, size)]
                   for size in sizes}}
    names = [config_name(c) for c in spec['configs']]
    base = values[names[0]]
    result = dict(task=task, images=images, study_images=n, sizes=sizes, seeds=list(seeds),
                  target=split['target'], baseline=names[0],
                  metrics={name: {s: v['full'] for s, v in by_seed.items()}
                           for name, by_seed in values.items()},
                  configs={})
    for name in names[1:]:
        by_size = {size: {s: [a - b for a, b in zip(values[name][s][size], base[s][size])]
                          for s in seeds} for size in sizes}
        full = {s: values[name][s]['full'] - base[s]['full'] for s in seeds}
        parts = decompose(by_size[n], full, n, images)
        parts['val_var_by_size'] = {
            size: statistics.fmean(statistics.variance(d[s]) for s in seeds)
            for size, d in by_size.items()}
        parts['paired'] = paired([values[name][s]['full'] for s in seeds],
                                 [base[s]['full'] for s in seeds])
        result['configs'][name] = parts
    return result


def _sd(var: float) -> str:
    return f'{math.sqrt(var):.4f}' if var < 1 else f'{math.sqrt(var):.2f}'


def markdown(results: Sequence[dict], seeds_grid=(3, 5, 10, 20)) -> str:
    """The decomposition and the sizing, one table each per task."""
    out = []
    for r in results:
        n, big, target = r['study_images'], r['images'], r['target']
        out.append(f"**{r['task']}**: paired differences against {r['baseline']}, "
                   f"{len(r['seeds'])} seeds, {big} new validation images (subsets of {n}, the "
                   f"study's validation size); standard deviations:\n")
        out.append('| config | validation sd, {n} images | seed sd | validation share at {n} '
                   'images | difference on {big} images, mean (per seed) |'.format(n=n, big=big))
        out.append('| --- | --- | --- | --- | --- |')
        for name, c in r['configs'].items():
            share = c['val_var'] / (c['val_var'] + c['seed_var'])
            diffs = ', '.join(f'{d:+.4f}' for d in c['paired']['diffs'])
            out.append(f"| {name} | {_sd(c['val_var'])} | {_sd(c['seed_var'])} | {share:.0%} | "
                       f"{c['mean_full']:+.4f} ({diffs}) |")
        out.append('')
        out.append(f"The study's runs compared on the {big} new images (paired by seed; "
                   f"MDE: the minimum detectable effect, 80% power at p < 0.05):\n")
        out.append('| config | difference (mean) | 95% CI | p (paired t-test) | MDE |')
        out.append('| --- | --- | --- | --- | --- |')
        for name, c in r['configs'].items():
            pr = c['paired']
            out.append(f"| {name} | {pr['mean']:+.4f} | [{pr['ci_low']:+.4f}, "
                       f"{pr['ci_high']:+.4f}] | {pr['p']:.3f} | {pr['mde']:.4f} |")
        out.append('')
        sizes = r['sizes']
        out.append('Validation sd of the difference by subset size (images: sd; a mean over '
                   'images would halve it for every 4x):\n')
        for name, c in r['configs'].items():
            out.append(f'- {name}: ' + ', '.join(
                f'{size}: {_sd(c["val_var_by_size"][size])}' for size in sizes))
        out.append('')
        images_grid = sorted({n, 128, big, 4 * big})
        out.append(f'95% half-width of the paired interval for S seeds and N validation images, '
                   f'from these variances (target {target}); last column: the fewest seeds '
                   f'that reach it at N images:\n')
        head = ' | '.join(f'S = {s}' for s in seeds_grid)
        for name, c in r['configs'].items():
            out.append(f'{name}:\n')
            out.append(f'| N | {head} | seeds for ±{target} |')
            out.append('| --- |' + ' --- |' * (len(seeds_grid) + 1))
            for images in images_grid:
                cells = ' | '.join(f"{half_width(c['seed_var'], c['val_var'], n, s, images):.4f}"
                                   for s in seeds_grid)
                need = seeds_needed(c['seed_var'], c['val_var'], n, images, target)
                out.append(f'| {images} | {cells} | {need if need else "> 1000"} |')
            out.append('')
    return '\n'.join(out)


def write(results: Sequence[dict], path_prefix: str) -> List[str]:
    """``PREFIX.md`` and ``PREFIX.json``, written whole, both or neither."""
    return write_files({path_prefix + '.md': markdown(results) + '\n',
                        path_prefix + '.json': json.dumps(list(results), indent=1, default=str)
                        + '\n'})
