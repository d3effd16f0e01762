"""The noise decomposition (experiments/noise.py): its statistics against a least-squares fit,
closed forms and a simulated two-way experiment with a per-image effect shared by the seeds
(where the formula it replaces fails), its subset metrics against mmdet's CocoMetric and mmseg's
IoUMetric on the same predictions; run_task end to end on evaluations on disk."""
import json
import math
import os.path as osp
import pickle
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch

from experiments import noise, records
from experiments.compare import config_name
from experiments.fingerprint import file_id
from experiments.noise import (DetSubsets, SegSubsets, decompose, estimate_var, half_width,
                               images_needed, markdown, seeds_needed, subsets, t_half_width,
                               t_seeds_needed)
from experiments.paired_stats import paired, t_quantile
from mm_helpers import ROOT


def test_subsets_are_disjoint_and_in_order():
    assert subsets(list(range(10)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert subsets([5, 6], 4) == []


def additive_fit_rss(d, seeds=True, images=True):
    """The residual sum of squares of ``d[s][k]`` fitted by least squares with a constant, plus a
    term per seed and per subset where asked (the reference for the mean squares)."""
    n_seeds, n_subsets = d.shape
    cols = [np.ones(d.size)]
    if seeds:
        cols += [np.repeat(np.eye(n_seeds)[i], n_subsets) for i in range(1, n_seeds)]
    if images:
        cols += [np.tile(np.eye(n_subsets)[k], n_seeds) for k in range(1, n_subsets)]
    x = np.stack(cols, 1)
    coef = np.linalg.lstsq(x, d.ravel(), rcond=None)[0]
    return float(((d.ravel() - x @ coef) ** 2).sum())


def test_decompose_equals_the_two_way_least_squares_fit():
    """The mean squares from the sums of squares a least-squares fit leaves (reduction on adding
    the seed or subset terms); the components from their expectations; the interval ends from
    the chi-square quantiles (df 2: -2 ln(1 - q) exactly; df 3 from tables)."""
    d = np.array([[0.10, 0.30, 0.20, 0.05], [0.00, 0.40, -0.10, 0.15], [0.20, 0.25, 0.50, 0.30]])
    out = decompose({7: d[0], 3: d[1], 5: d[2]}, subset_images=16)
    order = [1, 2, 0]  # seeds sorted: 3, 5, 7
    d = d[order]
    full = additive_fit_rss(d)
    ms_inter = full / 6
    ms_seed = (additive_fit_rss(d, seeds=False) - full) / 2
    ms_image = (additive_fit_rss(d, images=False) - full) / 3
    assert out['mean_squares']['inter'] == pytest.approx(ms_inter, rel=1e-10)
    assert out['mean_squares']['seed'] == pytest.approx(ms_seed, rel=1e-10)
    assert out['mean_squares']['image'] == pytest.approx(ms_image, rel=1e-10)
    assert out['df'] == dict(seed=2, image=3, inter=6)
    assert out['inter_var'] == pytest.approx(ms_inter, rel=1e-10)
    assert out['seed_var'] == pytest.approx(max((ms_seed - ms_inter) / 4, 0), abs=1e-15)
    assert out['image_var'] == pytest.approx(max((ms_image - ms_inter) / 3, 0), abs=1e-15)
    chi2_df2 = {q: -2 * math.log(1 - q) for q in (0.025, 0.975)}
    assert out['high']['seed_var'] == pytest.approx(
        (ms_seed * 2 / chi2_df2[0.025] - ms_inter) / 4, rel=1e-9)
    assert out['low']['seed_var'] == pytest.approx(
        max((ms_seed * 2 / chi2_df2[0.975] - ms_inter) / 4, 0), abs=1e-12)
    assert out['high']['image_var'] == pytest.approx(
        (ms_image * 3 / 0.2157953 - ms_inter) / 3, rel=1e-6)  # chi2(0.025, 3) = 0.2157953
    # no seed effect beyond the interaction: clamped at zero
    assert decompose({0: [0, 1], 1: [1, 0]}, 16)['seed_var'] == 0.0
    with pytest.raises(ValueError, match='two or more seeds'):
        decompose({0: [0.1, 0.2]}, 16)
    with pytest.raises(ValueError, match=r'subsets per seed \[2, 3\]'):
        decompose({0: [0.1, 0.2], 1: [0.1, 0.2, 0.3]}, 16)


def test_half_width_and_what_is_needed_closed_form():
    parts = dict(seed_var=1e-4, image_var=2e-4, inter_var=3e-4, subset_images=16)
    # seed 1e-4 / 4 + interaction 3e-4 * 16/64 / 4 + image 2e-4 * 16/64 undivided
    var = 1e-4 / 4 + 3e-4 / 16 + 2e-4 / 4
    assert estimate_var(parts, 4, 64) == pytest.approx(var, rel=1e-12)
    assert half_width(parts, 4, 64) == pytest.approx(1.959963985 * math.sqrt(var), rel=1e-9)
    s = seeds_needed(parts, 512, 0.01)
    assert half_width(parts, s, 512) <= 0.01 < half_width(parts, s - 1, 512)
    # the image term alone at N images: 1.96^2 * 2e-4 * 16 / N < 0.01^2 from N = 123
    n = images_needed(parts, 0.01)
    assert n == 123 and seeds_needed(parts, n - 1, 0.01) is None
    assert seeds_needed(parts, n, 0.01, most=10 ** 6) is not None


def experiment(rng, seeds, images, seed_sd, image_sd, inter_sd):
    """Paired differences per seed and image: a seed effect, an effect of each image shared by
    every seed, and an interaction; the ``image_sd`` and ``inter_sd`` of a mean over 16 images."""
    a = rng.normal(0, seed_sd, (seeds, 1))
    b = rng.normal(0, image_sd * 4, (1, images))
    e = rng.normal(0, inter_sd * 4, (seeds, images))
    return a + b + e


# seed sd 0.0105; image sd 0.0142 and interaction sd 0.015 on the study's 16 images
SIM = dict(seed_sd=0.0105, image_sd=0.0142, inter_sd=0.015)


def test_predicted_half_width_matches_the_spread_of_a_studys_estimate():
    """A two-way experiment with a per-image effect shared by the seeds. The noise split (1000
    seeds scored on the same 512 images in 32 subsets of 16) predicts the half-width of a study
    of 12 seeds on 256 images; 4000 such studies (fresh seeds and images each) find the 95th
    percentile of their estimate's error within 5% of it (the percentile's own standard error
    is 1.5%, the prediction's about 2.5% here). The formula this replaces, on the same split,
    predicts 0.0073 (within 5%) where the truth is 0.0094 (within 5%): the shared image term
    inside its validation variance, divided by the seeds, and taken from its seed variance."""
    rng = np.random.default_rng(0)
    split = experiment(rng, 1000, 512, **SIM)
    by_subset = {s: [row[k * 16:(k + 1) * 16].mean() for k in range(32)]
                 for s, row in enumerate(split)}
    parts = decompose(by_subset, 16)
    predicted = half_width(parts, 12, 256)

    errors = np.array([experiment(rng, 12, 256, **SIM).mean() for _ in range(4000)])
    truth = float(np.quantile(np.abs(errors), 0.95))  # the true difference is 0
    assert predicted == pytest.approx(truth, rel=0.05)
    assert truth == pytest.approx(0.0094, rel=0.05)

    # the old formula: validation variance pooled within seeds, seed variance from the whole
    # split's differences less that validation share, both divided by the seeds
    val = statistics.fmean(statistics.variance(v) for v in by_subset.values())
    full = statistics.variance(split.mean(1))
    seed_var = max(full - val * 16 / 512, 0.0)
    old = t_quantile(0.975, 11) * math.sqrt((seed_var + val * 16 / 256) / 12)
    assert old == pytest.approx(0.0073, rel=0.05)
    assert old < 0.85 * truth


def test_t_half_width_is_the_mean_paired_interval_a_study_prints():
    """README's interval: the paired t-interval over 12 seeds on 256 fixed images. Closed form
    ``t(11) sqrt((seed + interaction * 16/256) / 12)``; over 4000 simulated studies (fresh seeds
    and images each) the intervals that :func:`paired` prints are that wide on average, times
    E[s] / sigma = c4(12) = 0.9775 (within 2%), whatever the images' shared effect (it is in
    every seed's difference alike); the fewest seeds for a target meet it, one fewer do not."""
    parts = dict(seed_var=SIM['seed_sd'] ** 2, image_var=SIM['image_sd'] ** 2,
                 inter_var=SIM['inter_sd'] ** 2, subset_images=16)
    expected = t_quantile(0.975, 11) * math.sqrt((0.0105 ** 2 + 0.015 ** 2 / 16) / 12)
    assert t_half_width(parts, 12, 256) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(1)
    widths = []
    for _ in range(4000):
        per_seed = experiment(rng, 12, 256, **SIM).mean(1)
        d = paired(list(per_seed), [0.0] * 12)
        widths.append((d['ci_high'] - d['ci_low']) / 2)
    c4 = math.sqrt(2 / 11) * math.exp(math.lgamma(6) - math.lgamma(5.5))
    assert c4 == pytest.approx(0.9775, abs=1e-4)
    assert statistics.fmean(widths) == pytest.approx(c4 * expected, rel=0.02)
    s = t_seeds_needed(parts, 256, 0.008)
    assert t_half_width(parts, s, 256) <= 0.008 < t_half_width(parts, s - 1, 256)


def test_intervals_cover_the_true_variances():
    """From 3 seeds x 32 subsets (the detection split), the 95% intervals of the seed and image
    variances hold the true ones in 95% of 4000 experiments, within 0.015 (binomial sd 0.0034)."""
    rng = np.random.default_rng(1)
    truth = dict(seed_var=SIM['seed_sd'] ** 2, image_var=SIM['image_sd'] ** 2)
    covered = dict(seed_var=0, image_var=0)
    for _ in range(4000):
        split = experiment(rng, 3, 512, **SIM)
        parts = decompose({s: row.reshape(32, 16).mean(1) for s, row in enumerate(split)}, 16)
        for key, value in truth.items():
            covered[key] += parts['low'][key] <= value <= parts['high'][key]
    for key in truth:
        assert covered[key] / 4000 == pytest.approx(0.95, abs=0.015), key


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
    parts = dict(decompose({0: [0.1, 0.3, 0.2], 1: [0.0, 0.4, -0.1]}, 16),
                 val_var_by_size={16: 0.02}, paired=paired([0.5, 0.4], [0.3, 0.3]))
    text = markdown([dict(task='det', images=48, study_images=16, sizes=[16], seeds=[0, 1],
                          target=0.01, baseline='stock', configs={'do-all': parts})])
    assert 'do-all' in text and 'stock' in text and '±0.01' in text
    assert f"{math.sqrt(parts['inter_var']):.4f}" in text
    assert f"{math.sqrt(parts['image_var']):.4f} [{math.sqrt(parts['low']['image_var']):.4f}, " \
        f"{math.sqrt(parts['high']['image_var']):.4f}]" in text
    need = [seeds_needed(p, 48, 0.01) or '> 1000' for p in (parts, parts['low'], parts['high'])]
    assert f'| {need[0]} [{need[1]}, {need[2]}] |' in text
    assert (f"The fewest validation images at which enough seeds reach ±0.01 (below them the "
            f"shared image term alone is wider): {images_needed(parts, 0.01)} [") in text
    # the paired comparison on the large split: mean 0.15, sd 0.0707, t(0.975, 1) = 12.706
    half = 12.7062 * 0.1 / 2 ** 0.5 / 2 ** 0.5
    assert f'| do-all | +0.1500 | [{0.15 - half:+.4f}, {0.15 + half:+.4f}] |' in text


def test_run_task_scores_and_pairs_finished_evaluations(tmp_path, monkeypatch):
    """run_task end to end with tools/test.py replaced by predictions written as it writes them:
    equal to the ground truth except on chosen images, per config and seed; the metrics, the
    paired differences, the decomposition and the reports follow them. Each run's predictions
    are made once, and again after its checkpoint changes (the run resumed), not otherwise."""
    images, seeds = 64, [0, 1]
    recs = tmp_path / 'work_dirs/study/records/det'

    def record(name, seed, checkpoint):  # as the study records a finished run (the part read)
        path = records.record_path(str(recs), name, seed)
        old = records.read(path) or {}
        records.write(path, dict(old, config=name, seed=seed, checkpoint=dict(
            name=checkpoint.name, **file_id(str(checkpoint)))))

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
    predictions = {}
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
            predictions[name, seed] = pickle.dumps(samples)
            run = tmp_path / 'work_dirs/study/det' / name / f'seed{seed}'
            run.mkdir(parents=True)
            (run / 'epoch_6.pth').write_bytes(f'{name} {seed}'.encode())
            (run / 'last_checkpoint').write_text(str(run / 'epoch_6.pth'))
            record(name, seed, run / 'epoch_6.pth')
    evaluated = []

    def evaluate(root, workspace, task, config, checkpoint, data_dir, out):
        key = config_name(config), int(osp.basename(osp.dirname(checkpoint))[len('seed'):])
        evaluated.append(key)
        with open(out, 'wb') as f:
            f.write(predictions[key])

    monkeypatch.setattr(noise, '_evaluate_run', evaluate)
    r = noise.run_task(ROOT, str(tmp_path), 'det', seeds, images, log=lambda msg: None)
    assert sorted(evaluated) == sorted(predictions)
    again = noise.run_task(ROOT, str(tmp_path), 'det', seeds, images, log=lambda msg: None)
    assert len(evaluated) == 6 and again == r  # read, not made again
    run = tmp_path / 'work_dirs/study/det' / names[0] / 'seed1'
    (run / 'epoch_8.pth').write_bytes(b'resumed')
    (run / 'last_checkpoint').write_text(str(run / 'epoch_8.pth'))
    # resumed, not recorded yet: its record (of epoch 6, evaluated) is what is reported
    assert noise.run_task(ROOT, str(tmp_path), 'det', seeds, images, log=lambda msg: None) == r
    assert len(evaluated) == 6
    record(names[0], 1, run / 'epoch_8.pth')  # recorded: evaluated again
    assert noise.run_task(ROOT, str(tmp_path), 'det', seeds, images, log=lambda msg: None) == r
    assert evaluated[6:] == [(names[0], 1)]
    out = tmp_path / 'work_dirs/study/det/noise' / str(images) / names[0] / 'seed1.pkl'
    assert json.loads(open(str(out) + '.sources.json').read())['checkpoint']['path'] == str(
        run / 'epoch_8.pth')
    # a record of another checkpoint than the run's, not evaluated: one line says so
    other = tmp_path / 'other.pth'
    other.write_bytes(b'other')
    saved = records.read(records.record_path(str(recs), names[1], 0))
    records.write(records.record_path(str(recs), names[1], 0), dict(
        saved, large={}, checkpoint=dict(name=other.name, **file_id(str(other)))))
    with pytest.raises(RuntimeError, match=rf'det: {names[1]} seed 0: its checkpoint .*epoch_6.pth '
                       r'is not the one its record holds; tools/study.py records it first'):
        noise.run_task(ROOT, str(tmp_path), 'det', seeds, images, log=lambda msg: None)
    records.write(records.record_path(str(recs), names[1], 0), saved)
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
        assert c['val_var_by_size'][16] == pytest.approx(val, abs=1e-12) and val > 0
    text = noise.markdown([r])
    assert f"| {names[2]} | {r['configs'][names[2]]['paired']['mean']:+.4f} |" in text
    paths = noise.write([r], str(tmp_path / 'noise'))
    assert json.loads(open(paths[1]).read())[0]['metrics'][names[2]] == {'0': 1.0, '1': 1.0}
    # the work dirs gone, the records alone give the same result
    shutil.rmtree(tmp_path / 'work_dirs/study/det')
    shutil.rmtree(data)
    assert noise.run_task(ROOT, str(tmp_path), 'det', seeds, images, log=lambda msg: None) == r
    assert len(evaluated) == 7
    # another split size is not in the records and the checkpoints are gone: one line says so
    with pytest.raises(RuntimeError, match=rf'det: {names[0]} seed 0 is not evaluated on 128 '
                       r'images and its checkpoint is not here .*; tools/study.py --noise 128 '
                       r'trains it again first'):
        noise.run_task(ROOT, str(tmp_path), 'det', seeds, 128, log=lambda msg: None)
