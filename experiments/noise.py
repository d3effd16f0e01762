"""Where a study's noise comes from: the size of its validation set or its training seeds
(``tools/study.py --noise``; docs/study.md).

Every finished fine-tuning run of the study (config x seed) is evaluated once more, through
``tools/test.py`` with its predictions kept, on a large validation split drawn by the same
generator with another seed. Per task, per DO-Conv config against stock, ``d[s][k]`` is the
paired difference of the final metric (DO-Conv - stock, same seed ``s``) on the ``k``-th of the
disjoint subsets of the large split as big as the study's validation set (16 images for det, 8
for seg). Every seed is scored on the same subsets, as every seed of a study is scored on the
same validation set, so ``d`` splits two ways (a two-way analysis of variance without
replication, :func:`decompose`):

- the seed effect: what a seed changes in the difference on every image (variance over seeds);
- the image effect: what a subset's images change in the difference of every seed alike
  (variance over subsets of the mean over seeds): a validation set that happens to favour
  DO-Conv favours it for all seeds;
- their interaction: what is left, the part of a subset's effect that differs from seed to seed.

A study of ``S`` seeds that scores all of them on the same ``N`` validation images estimates the
difference with variance ``seed / S + interaction(N) / S + image(N)``, the image and interaction
variances scaled from the subsets' size ``n`` to ``N`` by ``n / N`` (as for a mean over images;
subsets of 2, 4, ... times ``n`` show how the pooled within-seed variance shrinks): more seeds
never shrink the shared image term, only more images do. The sizing gives the 95% half-width of
that estimate around the true difference (a normal quantile, the variances taken as known), the
fewest seeds that reach a target half-width at each ``N``, and the fewest images below which no
number of seeds reaches it, each with an interval from the 95% chi-square intervals of the seed
and image mean squares (``S0 - 1`` and ``K - 1`` degrees of freedom for ``S0`` seeds and ``K``
subsets: from three seeds, the seed mean square's interval runs from 0.27 to 40 times its
estimate). Beside it,
the paired comparison on the whole large split (mean, 95% interval, p, minimum detectable
effect): the study's own question answered with the validation noise made small.

The predictions of each run record the checkpoint they came from (:mod:`.fingerprint`) and are
made again when the run's last checkpoint changes (resumed to a longer schedule, trained again).

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
import shutil
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from doconv_mm.atomic import write_files
from .compare import config_name, last_checkpoint, run_dir
from .fingerprint import is_current, record_sources, sources
from .kernels import kernel_env
from .paired_stats import chi2_quantile, paired, t_quantile
from .records import read as read_record
from .records import record_path
from .records import write as write_record
from .study import STUDY_IMAGES, TASKS, data_options

# the large validation split: its images, the generator's seed, where it goes, the study's own
# validation size and the half-width the study should reach
SPLITS = {
    'det': dict(data='data/toy_coco_noise', study_images=STUDY_IMAGES['det'], target=0.01),
    'seg': dict(data='data/toy_cityscapes_noise', study_images=STUDY_IMAGES['seg'], target=0.5),
}
# Evaluated 16 images at a time instead of the configs' 4, the toy detector predicts the same
# boxes bit for bit (its images all have one size, so a batch pads none) in a third less time
# (docs/study.md, "Evaluation cost").
EVAL_OPTIONS = {'det': ['test_dataloader.batch_size=16'], 'seg': []}
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


def decompose(diffs: Dict[int, Sequence[float]], subset_images: int,
              confidence: float = 0.95) -> dict:
    """The paired differences ``diffs[seed][k]`` on the same disjoint subsets ``k`` of
    ``subset_images`` images for every seed, split into seed, image and interaction variances
    (module doc), each a variance of the difference on one subset. The components come from the
    mean squares by their expectations (``E[MS_seed] = inter + K seed``, ``E[MS_image] = inter +
    S image``, ``E[MS_inter] = inter``), clamped at 0; ``low`` and ``high`` hold them again with the
    seed and image mean squares at the ends of their ``confidence`` chi-square intervals."""
    seeds = sorted(diffs)
    counts = {len(diffs[s]) for s in seeds}
    if len(seeds) < 2 or len(counts) != 1 or counts.pop() < 2:
        raise ValueError(f'decompose: need two or more seeds, each with the same two or more '
                         f'subsets; got subsets per seed {[len(diffs[s]) for s in seeds]}')
    d = np.array([diffs[s] for s in seeds], np.float64)
    n_seeds, n_subsets = d.shape
    grand, rows, cols = d.mean(), d.mean(1), d.mean(0)
    ms = dict(seed=n_subsets * float(((rows - grand) ** 2).sum()) / (n_seeds - 1),
              image=n_seeds * float(((cols - grand) ** 2).sum()) / (n_subsets - 1),
              inter=float(((d - rows[:, None] - cols[None, :] + grand) ** 2).sum())
              / ((n_seeds - 1) * (n_subsets - 1)))
    df = dict(seed=n_seeds - 1, image=n_subsets - 1, inter=(n_seeds - 1) * (n_subsets - 1))

    def components(ms_seed: float, ms_image: float) -> dict:
        return dict(seed_var=max((ms_seed - ms['inter']) / n_subsets, 0.0),
                    image_var=max((ms_image - ms['inter']) / n_seeds, 0.0),
                    inter_var=ms['inter'], subset_images=subset_images)

    def ends(key: str) -> tuple:  # E[MS] at the ends of the chi-square interval of MS
        tail = (1 - confidence) / 2
        return tuple(ms[key] * df[key] / chi2_quantile(q, df[key]) for q in (1 - tail, tail))

    (seed_lo, seed_hi), (image_lo, image_hi) = ends('seed'), ends('image')
    return dict(seeds=n_seeds, subsets=n_subsets, mean_squares=ms, df=df,
                **components(ms['seed'], ms['image']),
                low=components(seed_lo, image_lo), high=components(seed_hi, image_hi))


def estimate_var(parts: dict, seeds: int, images: int) -> float:
    """The variance of a study's mean paired difference over ``seeds`` seeds, all scored on the
    same ``images`` validation images: the shared image term is not divided by the seeds."""
    scale = parts['subset_images'] / images
    return (parts['seed_var'] + parts['inter_var'] * scale) / seeds + parts['image_var'] * scale


def half_width(parts: dict, seeds: int, images: int, confidence: float = 0.95) -> float:
    """The half-width of the interval that holds a study's estimate ``confidence`` of the time
    around the true difference, for ``seeds`` seeds and ``images`` validation images."""
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    return z * math.sqrt(estimate_var(parts, seeds, images))


def seeds_needed(parts: dict, images: int, target: float, most: int = 1000) -> Optional[int]:
    """The fewest seeds (>= 2) whose half-width at ``images`` images is at most ``target``; None
    past ``most`` (and wherever the shared image term alone exceeds it)."""
    for seeds in range(2, most + 1):
        if half_width(parts, seeds, images) <= target:
            return seeds
    return None


def t_half_width(parts: dict, seeds: int, images: int, confidence: float = 0.95) -> float:
    """The half-width of the paired t-interval over ``seeds`` seeds that a study prints for its
    fixed ``images`` validation images (:func:`.paired_stats.paired` of the per-seed
    differences), at the expected variance of those differences, ``t(S-1) * sqrt((seed +
    interaction(N)) / S)``. That interval holds the effect on those images: the image term they
    share is not in it (:func:`half_width` holds the effect on new images)."""
    scale = parts['subset_images'] / images
    return t_quantile(0.5 + confidence / 2, seeds - 1) * math.sqrt(
        (parts['seed_var'] + parts['inter_var'] * scale) / seeds)


def t_seeds_needed(parts: dict, images: int, target: float, most: int = 1000) -> Optional[int]:
    """The fewest seeds (>= 2) whose :func:`t_half_width` at ``images`` images is at most
    ``target``; None past ``most``."""
    return next((s for s in range(2, most + 1) if t_half_width(parts, s, images) <= target), None)


def images_needed(parts: dict, target: float, confidence: float = 0.95) -> int:
    """The fewest validation images at which some number of seeds reaches ``target``: where the
    shared image term's half-width alone falls below it."""
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    return math.floor(z * z * parts['image_var'] * parts['subset_images'] / target ** 2) + 1


def _evaluate_run(root: str, workspace: str, task: str, config: str, checkpoint: str, data: str,
                  out: str) -> None:
    """``tools/test.py`` of one run on the large split, its predictions kept at ``out`` (a .pkl
    for det, a folder of maps for seg); written whole or not at all."""
    stem, ext = osp.splitext(out)
    tmp = stem + '.tmp' + ext  # mmdet wants a .pkl
    subprocess.run([sys.executable, osp.join(root, 'tools', 'test.py'), config, checkpoint,
                    '--out', tmp, '--work-dir', osp.join(osp.dirname(out), 'logs'), '--cfg-options',
                    *data_options(task, data), *EVAL_OPTIONS[task]], cwd=workspace,
                   env=kernel_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    os.replace(tmp, out)


def _remove(path: str) -> None:
    if osp.isdir(path):
        shutil.rmtree(path)
    elif osp.exists(path):
        os.remove(path)


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


def evaluated(record: dict, images: int) -> Optional[dict]:
    """The record's evaluation on the large split of ``images`` images, if it is of the record's
    checkpoint."""
    large = record.get('large', {}).get(str(images))
    if large is None or large['checkpoint'] != record['checkpoint']['sha256'] \
            or large['seed'] != NOISE_SEED:
        return None
    return large


def needs_checkpoint(images: int):
    """For :meth:`.compare.Comparison.train`: a recorded run is needed on this machine when its
    record lacks its evaluation on ``images`` images."""
    return lambda config, seed, record: evaluated(record, images) is None


def _sizes(task: str, images: int) -> List[int]:
    """The subset sizes the large split is scored in: the study's validation size, doubled while
    four subsets or more fit."""
    n = SPLITS[task]['study_images']
    return [n * 2 ** k for k in range(int(math.log2(images // n)) + 1)
            if images // (n * 2 ** k) >= 4]


def evaluate_run(root: str, workspace: str, task: str, config: str, seed: int, images: int,
                 log=print, records_dir: Optional[str] = None) -> dict:
    """The run's evaluation on ``images`` new validation images, from its record
    (``records_dir``/``task``, default ``workspace``/work_dirs/study/records), or evaluated from
    its checkpoint and its record completed."""
    task_records = osp.join(records_dir or osp.join(workspace, 'work_dirs', 'study', 'records'),
                            task)
    name = config_name(config)
    path = record_path(task_records, name, seed)
    record = read_record(path)
    if record is None:
        raise RuntimeError(f'{task}: {name} seed {seed} has no record ({path}); '
                           f'tools/study.py trains it first')
    large = evaluated(record, images)
    if large is None:
        data = osp.join(workspace, SPLITS[task]['data'] + f'_{images}')
        large = _evaluate(root, workspace, task, config, seed, images, data,
                          _sizes(task, images), record, log)
        record['large'] = {**record.get('large', {}), str(images): large}
        write_record(path, record)
    return large


def run_task(root: str, workspace: str, task: str, seeds: Sequence[int], images: int,
             log=print, records_dir: Optional[str] = None) -> dict:
    """Decompose each DO-Conv config's paired difference against stock on ``images`` new
    validation images (module doc), from the study's records (``records_dir``/``task``, default
    ``workspace``/work_dirs/study/records): a run whose record lacks that evaluation is evaluated
    from its checkpoint, and its record completed."""
    spec, split = TASKS[task], SPLITS[task]
    n, sizes = split['study_images'], _sizes(task, images)
    values = {}  # config -> seed -> {'full': metric, size: [metric per subset]}
    for config in spec['configs']:
        name = config_name(config)
        for seed in seeds:
            large = evaluate_run(root, workspace, task, config, seed, images, log, records_dir)
            values.setdefault(name, {})[seed] = {
                'full': large['full'], **{size: large['subsets'][str(size)] for size in sizes}}
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
        parts = decompose(by_size[n], n)
        parts['val_var_by_size'] = {
            size: statistics.fmean(statistics.variance(d[s]) for s in seeds)
            for size, d in by_size.items()}
        parts['paired'] = paired([values[name][s]['full'] for s in seeds],
                                 [base[s]['full'] for s in seeds])
        result['configs'][name] = parts
    return result


def _evaluate(root: str, workspace: str, task: str, config: str, seed: int, images: int,
              data: str, sizes: Sequence[int], record: dict, log) -> dict:
    """The run's metric on the large split, whole and per subset of each size, from its
    checkpoint, which must be the one its record holds; its predictions are kept beside the run
    (and made again when its checkpoint changes)."""
    spec, name = TASKS[task], config_name(config)
    study = osp.join(workspace, 'work_dirs', 'study', task)
    work_dir = run_dir(study, osp.join(root, config), seed)
    try:
        checkpoint = last_checkpoint(work_dir)
    except FileNotFoundError:
        raise RuntimeError(f'{task}: {name} seed {seed} is not evaluated on {images} images and '
                           f'its checkpoint is not here ({work_dir}); tools/study.py --noise '
                           f'{images} trains it again first') from None
    source = sources(checkpoint=checkpoint)
    if source['checkpoint']['sha256'] != record['checkpoint']['sha256']:
        raise RuntimeError(f'{task}: {name} seed {seed}: its checkpoint {checkpoint} is not the '
                           f'one its record holds; tools/study.py records it first')
    subprocess.run([sys.executable, osp.join(root, 'tools', 'make_toy_data.py'), spec['format'],
                    data, '--num-train', '0', '--num-val', str(images), '--seed',
                    str(NOISE_SEED)], cwd=workspace, check=True, stdout=subprocess.DEVNULL)
    ext = '.pkl' if task == 'det' else ''
    out = osp.join(study, 'noise', f'{images}', name, f'seed{seed}{ext}')
    if not is_current(out, source):  # new, or the run's checkpoint changed since
        _remove(out)
        os.makedirs(osp.dirname(out), exist_ok=True)
        log(f'{task}: {name} seed {seed} on {images} new validation images')
        _evaluate_run(root, workspace, task, osp.join(root, config), checkpoint, data, out)
        record_sources(out, source)
    scorer = _scorer(task, data, out)
    return dict(seed=NOISE_SEED, checkpoint=source['checkpoint']['sha256'],
                full=scorer.metric(scorer.images),
                subsets={str(size): [scorer.metric(s) for s in subsets(scorer.images, size)]
                         for size in sizes})


def _sd(var: float) -> str:
    return f'{math.sqrt(var):.4f}'


def _seeds(parts: dict, images: int, target: float) -> str:
    need = seeds_needed(parts, images, target)
    return str(need) if need else '> 1000'


def markdown(results: Sequence[dict], seeds_grid=(3, 5, 10, 20)) -> str:
    """The decomposition and the sizing, one table each per task."""
    out = []
    for r in results:
        n, big, target = r['study_images'], r['images'], r['target']
        k = len(r['seeds'])
        out.append(f"**{r['task']}**: paired differences against {r['baseline']}, {k} seeds, "
                   f"{big} new validation images in {big // n} subsets of {n} (the study's "
                   f"validation size), every seed scored on the same subsets; standard deviations "
                   f"of the difference on {n} images, with the 95% interval of the seed and image "
                   f"terms:\n")
        out.append(f'| config | seed sd | image sd (shared by the seeds) | interaction sd | '
                   f'validation share of the study\'s variance ({k} seeds, {n} images) | '
                   f'difference on {big} images, mean (per seed) |')
        out.append('| --- ' * 6 + '|')
        for name, c in r['configs'].items():
            total = estimate_var(c, k, n)
            share = f"{1 - c['seed_var'] / k / total:.0%}" if total > 0 else 'n/a'
            diffs = ', '.join(f'{d:+.4f}' for d in c['paired']['diffs'])
            cells = [f"{_sd(c[key])} [{_sd(c['low'][key])}, {_sd(c['high'][key])}]"
                     for key in ('seed_var', 'image_var')]
            out.append(f"| {name} | {cells[0]} | {cells[1]} | {_sd(c['inter_var'])} | "
                       f"{share} | {c['paired']['mean']:+.4f} ({diffs}) |")
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
        out.append('Validation sd of the difference by subset size, within a seed (image and '
                   'interaction terms together; images: sd; a mean over images would halve it '
                   'for every 4x):\n')
        for name, c in r['configs'].items():
            out.append(f'- {name}: ' + ', '.join(
                f'{size}: {_sd(c["val_var_by_size"][size])}' for size in sizes))
        out.append('')
        images_grid = sorted({n, 128, big, 4 * big})
        out.append(f'95% half-width of the estimate of a study of S seeds scored on the same N '
                   f'validation images (target {target}); last column: the fewest seeds that '
                   f'reach the target at N images, [at the low end, at the high end] of the '
                   f'seed and image variances\' intervals:\n')
        head = ' | '.join(f'S = {s}' for s in seeds_grid)
        for name, c in r['configs'].items():
            out.append(f'{name}:\n')
            out.append(f'| N | {head} | seeds for ±{target} |')
            out.append('| --- |' + ' --- |' * (len(seeds_grid) + 1))
            for images in images_grid:
                cells = ' | '.join(f'{half_width(c, s, images):.4f}' for s in seeds_grid)
                out.append(f"| {images} | {cells} | {_seeds(c, images, target)} "
                           f"[{_seeds(c['low'], images, target)}, "
                           f"{_seeds(c['high'], images, target)}] |")
            out.append(f"\nThe fewest validation images at which enough seeds reach "
                       f"±{target} (below them the shared image term alone is wider): "
                       f"{images_needed(c, target)} [{images_needed(c['low'], target)}, "
                       f"{images_needed(c['high'], target)}].\n")
            need = [t_seeds_needed(p, big, target) for p in (c, c['low'], c['high'])]
            out.append(f"The paired t-interval over seeds on these {big} images (README's; it "
                       f"holds the effect on them, not the image term): expected half-width "
                       + ', '.join(f'{t_half_width(c, s, big):.4f} at S = {s}'
                                   for s in sorted({*seeds_grid[1:], k})
                                   if s >= 2) +
                       f"; the fewest seeds for ±{target}: " + ' '.join(
                           [str(need[0] or '> 1000'), f"[{need[1] or '> 1000'}, "
                            f"{need[2] or '> 1000'}]"]) + '.\n')
    return '\n'.join(out)


def write(results: Sequence[dict], path_prefix: str) -> List[str]:
    """``PREFIX.md`` and ``PREFIX.json``, written whole, both or neither."""
    return write_files({path_prefix + '.md': markdown(results) + '\n',
                        path_prefix + '.json': json.dumps(list(results), indent=1, default=str)
                        + '\n'})
