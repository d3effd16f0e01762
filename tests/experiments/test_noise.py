"""The noise decomposition (experiments/noise.py): its statistics against closed forms and a
simulated two-level experiment, its subset metrics against mmdet's CocoMetric and mmseg's
IoUMetric on the same predictions; run_task end to end on evaluations on disk."""
import json
import math
import pickle
import random
import statistics
import subprocess
import sys
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch

from experiments import noise
from experiments.compare import config_name
from experiments.noise import (DetSubsets, SegSubsets, decompose, half_width, markdown,
                               seeds_needed, subsets)
from experiments.paired_stats import paired, t_quantile
from mm_helpers import ROOT


def test_subsets_are_disjoint_and_in_order():
    assert subsets(list(range(10)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert subsets([5, 6], 4) == []


def test_decompose_closed_form():
    by_subset = {0: [0.1, 0.3, 0.2], 1: [0.0, 0.4, -0.1], 2: [0.2, 0.2, 0.5]}
    full = {0: 0.20, 1: 0.10, 2: 0.30}
    out = decompose(by_subset, full, subset_images=16, full_images=48)
    val = (statistics.variance([0.1, 0.3, 0.2]) + statistics.variance([0.0, 0.4, -0.1])
           + statistics.variance([0.2, 0.2, 0.5])) / 3
    assert out['val_var'] == pytest.approx(val, rel=1e-12)
    assert out['full_var'] == pytest.approx(0.01, rel=1e-12)  # variance of 0.2, 0.1, 0.3
    assert out['seed_var'] == pytest.approx(max(0.01 - val / 3, 0.0), abs=1e-15)
    assert out['mean_full'] == pytest.approx(0.2)
    # a seed variance below what the validation share explains is clamped at zero
    assert decompose({0: [0, 1], 1: [1, 0]}, {0: 0.0, 1: 0.0}, 16, 32)['seed_var'] == 0.0
    with pytest.raises(ValueError, match='two or more seeds'):
        decompose({0: [0.1, 0.2]}, {0: 0.1}, 16, 32)


def test_half_width_is_the_paired_interval_and_seeds_needed_is_the_least():
    diffs = [0.012, -0.004, 0.021, 0.007, 0.0]
    ci = paired(diffs, [0.0] * 5)
    assert half_width(statistics.variance(diffs), 0.0, 16, 5, 16) == pytest.approx(
        ci['ci_high'] - ci['mean'], rel=1e-9)
    # with validation noise only, the variance falls as 1/images
    assert half_width(0.0, 4e-4, 16, 3, 64) == pytest.approx(
        t_quantile(0.975, 2) * math.sqrt(1e-4 / 3), rel=1e-12)
    s = seeds_needed(1e-4, 2e-3, 16, 512, 0.01)
    assert half_width(1e-4, 2e-3, 16, s, 512) <= 0.01 < half_width(1e-4, 2e-3, 16, s - 1, 512)
    assert seeds_needed(1.0, 0.0, 16, 512, 1e-6, most=50) is None


def test_decompose_recovers_a_simulated_two_level_experiment():
    """Differences with a seed effect (sd 0.01) plus per-image noise (sd 0.08; a metric that
    averages images): over 300 seeds the estimates land within 15% of the truth."""
    rng = random.Random(0)
    seed_sd, image_sd, n, big = 0.01, 0.08, 16, 512
    by_subset, full = {}, {}
    for s in range(300):
        effect = rng.gauss(0.0, seed_sd)
        per_image = [effect + rng.gauss(0.0, image_sd) for _ in range(big)]
        by_subset[s] = [statistics.fmean(sub) for sub in subsets(per_image, n)]
        full[s] = statistics.fmean(per_image)
    out = decompose(by_subset, full, n, big)
    assert out['val_var'] == pytest.approx(image_sd ** 2 / n, rel=0.15)
    assert out['seed_var'] == pytest.approx(seed_sd ** 2, rel=0.15)


def _coco(tmp_path):
    """A 6-image COCO file with 2 categories and detections of mixed quality."""
    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for i in range(6):
        images.append(dict(id=i + 1, file_name=f'{i}.jpg', height=100, width=100))
        for j in range(3):
            x, y, w, h = (float(v) for v in rng.uniform(5, 40, 4))
            cat = int(rng.integers(2))
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=[62, 37][cat],
                             bbox=[x, y, w, h], area=w * h, iscrowd=0))
            jitter = rng.normal(0, 0.7, 4) * (j + 1)
            x0, y0 = x + jitter[0], y + jitter[1]
            dets.append((i + 1, [x0, y0, x0 + w + jitter[2], y0 + h + jitter[3]],
                         float(rng.uniform(0.3, 1)), cat if j < 2 else 1 - cat))
    categories = [dict(id=62, name='tv'), dict(id=37, name='sports ball')]  # not sorted by id
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=categories)))
    return str(path), dets


def test_det_subsets_equal_mmdet_coco_metric(tmp_path):
    from mmdet.evaluation import CocoMetric
    ann, dets = _coco(tmp_path)
    coco_dets = [dict(image_id=i, score=s, category_id=label, bbox=[x0, y0, x1 - x0, y1 - y0])
                 for i, (x0, y0, x1, y1), s, label in dets]
    scorer = DetSubsets(ann, coco_dets)

    def reference(image_ids):
        metric = CocoMetric(ann_file=ann, metric='bbox', outfile_prefix=str(tmp_path / 'r'))
        metric.dataset_meta = dict(classes=('tv', 'sports ball'))
        metric.img_ids = list(image_ids)
        results = [(None, dict(img_id=i, bboxes=np.array([b]), scores=np.array([s]),
                               labels=np.array([label])))
                   for i, b, s, label in dets if i in image_ids]
        return metric.compute_metrics(results)['bbox_mAP']

    for ids in ([1, 2, 3, 4, 5, 6], [2, 5], [1, 3, 4]):
        ours = scorer.metric(ids)
        assert 0.05 < ours < 0.95
        assert ours == pytest.approx(reference(ids), abs=5e-4)  # mmdet rounds to 3 decimals


def test_seg_subsets_equal_mmseg_iou_metric(tmp_path):
    import torch
    from mmseg.evaluation import IoUMetric
    rng = np.random.default_rng(0)
    pairs, maps = [], []
    for i in range(5):
        gt = rng.integers(0, 4, (12, 20)).astype(np.uint8)
        gt[rng.random((12, 20)) < 0.1] = 255  # ignored pixels
        pred = np.where(rng.random((12, 20)) < 0.7, gt % 255, rng.integers(0, 5, (12, 20)))
        pred = pred.astype(np.uint8)
        paths = (str(tmp_path / f'p{i}.png'), str(tmp_path / f'g{i}.png'))
        cv2.imwrite(paths[0], pred)
        cv2.imwrite(paths[1], gt)
        pairs.append(paths)
        maps.append((pred, gt))
    scorer = SegSubsets(pairs, num_classes=19)
    for ids in ([0, 1, 2, 3, 4], [1, 3], [4]):
        metric = IoUMetric(ignore_index=255)
        metric.dataset_meta = dict(classes=tuple(str(c) for c in range(19)))
        results = [IoUMetric.intersect_and_union(torch.from_numpy(maps[i][0]).long(),
                                                 torch.from_numpy(maps[i][1]).long(), 19, 255)
                   for i in ids]
        assert scorer.metric(ids) == pytest.approx(metric.compute_metrics(results)['mIoU'],
                                                   abs=5e-3)  # mmseg rounds to 2 decimals


def test_markdown_names_every_config_and_the_target():
    parts = dict(decompose({0: [0.1, 0.3, 0.2], 1: [0.0, 0.4, -0.1]}, {0: 0.2, 1: 0.1}, 16, 48),
                 val_var_by_size={16: 0.02}, paired=paired([0.5, 0.4], [0.3, 0.3]))
    text = markdown([dict(task='det', images=48, study_images=16, sizes=[16], seeds=[0, 1],
                          target=0.01, baseline='stock', configs={'do-all': parts})])
    assert 'do-all' in text and 'stock' in text and '±0.01' in text
    assert f"{math.sqrt(parts['val_var']):.4f}" in text
    # the paired comparison on the large split: mean 0.15, sd 0.0707, t(0.975, 1) = 12.706
    half = 12.7062 * 0.1 / 2 ** 0.5 / 2 ** 0.5
    assert f'| do-all | +0.1500 | [{0.15 - half:+.4f}, {0.15 + half:+.4f}] |' in text


def test_run_task_scores_and_pairs_finished_evaluations(tmp_path):
    """run_task end to end on evaluations already on disk (as tools/test.py --out writes them;
    none is run): predictions equal to the ground truth except on chosen images, per config and
    seed; the metrics, the paired differences, the decomposition and the reports follow them."""
    images, seeds = 64, [0, 1]
    data = tmp_path / f"{noise.SPLITS['det']['data']}_{images}"
    subprocess.run([sys.executable, 'tools/make_toy_data.py', 'coco', str(data), '--num-train',
                    '0', '--num-val', str(images), '--seed', str(noise.NOISE_SEED)], cwd=ROOT,
                   check=True, capture_output=True)
    gt = json.loads((data / 'annotations' / 'instances_val2017.json').read_text())
    label = {c['id']: k for k, c in enumerate(gt['categories'])}
    anns = defaultdict(list)
    for a in gt['annotations']:
        anns[a['image_id']].append(a)
    ids = sorted(im['id'] for im in gt['images'])
    names = [config_name(c) for c in noise.TASKS['det']['configs']]
    # images without predictions: stock misses every 4th (shifted by seed), DO-Conv head every
    # 8th, DO-Conv all none
    every = {names[0]: 4, names[1]: 8, names[2]: None}
    for name, n in every.items():
        for seed in seeds:
            samples = []
            for k, img in enumerate(ids):
                found = [] if n and (k + seed) % n == 0 else anns[img]
                boxes = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in found)]
                samples.append(dict(img_id=img, pred_instances=dict(
                    bboxes=torch.tensor(boxes).reshape(-1, 4), scores=torch.ones(len(found)),
                    labels=torch.tensor([label[a['category_id']] for a in found]).long())))
            out = tmp_path / 'work_dirs/study/det/noise' / str(images) / name / f'seed{seed}.pkl'
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(pickle.dumps(samples))
    r = noise.run_task(ROOT, str(tmp_path), 'det', seeds, images, log=lambda msg: None)
    assert r['sizes'] == [16] and r['baseline'] == names[0]
    assert r['metrics'][names[2]] == {0: 1.0, 1: 1.0}  # every box found
    assert all(0 < r['metrics'][names[0]][s] < r['metrics'][names[1]][s] < 1 for s in seeds)
    for name in names[1:]:
        c = r['configs'][name]
        diffs = [r['metrics'][name][s] - r['metrics'][names[0]][s] for s in seeds]
        assert c['paired']['diffs'] == diffs
        assert c['paired']['mean'] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
        # validation variance: between the four subsets of 16 images, pooled over seeds
        scorers = {(n, s): noise.DetSubsets(
            str(data / 'annotations' / 'instances_val2017.json'), noise.detections(str(
                tmp_path / 'work_dirs/study/det/noise' / str(images) / n / f'seed{s}.pkl')))
            for n in (name, names[0]) for s in seeds}
        val = statistics.fmean(statistics.variance(
            scorers[name, s].metric(sub) - scorers[names[0], s].metric(sub)
            for sub in noise.subsets(ids, 16)) for s in seeds)
        assert c['val_var'] == pytest.approx(val, abs=1e-12) and val > 0
    text = noise.markdown([r])
    assert f"| {names[2]} | {r['configs'][names[2]]['paired']['mean']:+.4f} |" in text
    paths = noise.write([r], str(tmp_path / 'noise'))
    assert json.loads(open(paths[1]).read())[0]['metrics'][names[2]] == {'0': 1.0, '1': 1.0}
