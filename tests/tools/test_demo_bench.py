"""Shortened runs of the demo path and of the benchmark script (no timing assertion)."""
import importlib.util
import json
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from doconv_mm import DOConv2d
from doconv_mm.core import _ext
from doconv_mm.layer_benchmark import NaiveDOConv2d
from doconv_mm.mm.toy_data import write_coco
from layer_helpers import TOL64, rel_err, trained_like
from mm_helpers import ROOT
from reference import two_stage


def test_demo_path_shortened(tmp_path):
    write_coco(str(tmp_path / 'data' / 'toy_coco'), n_train=8, n_val=4, size=(128, 128), seed=2)
    opts = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1', 'model.test_cfg.rcnn.score_thr=0.0']
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/demo.py'), '--task', 'det',
                           '--workspace', str(tmp_path), '--repeats', '1', '--cfg-options', *opts],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = dict(re.findall(r'^\| (.+?) \| (.+?) \|$', proc.stdout, re.M))
    do, folded = rows['coco/bbox_mAP, DO-Conv (whole network)'], \
        rows['coco/bbox_mAP, folded DO-Conv with stock mmdet']
    assert do == folded and float(do) >= 0
    # the demo says what its two single-seed trainings cannot show
    assert 'What it does not show: whether DO-Conv helps' in proc.stdout
    assert re.match(r'[\d.]+ M / [\d.]+ M', rows['parameters while training / after folding'])
    work = tmp_path / 'work_dirs' / 'demo-det'
    for png in ('predictions.png', 'loss.png'):
        assert (work / png).stat().st_size > 1000


def run_benchmark(tmp_path, *args, timeout=300):
    """tools/benchmark.py with ``args`` and --json: its output and the JSON it wrote."""
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/benchmark.py'), *args,
                           '--json', str(out)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_benchmark_smoke(tmp_path):
    stdout, result = run_benchmark(tmp_path, '--quick', '--repeats', '1', '--sizes', '64',
                                   timeout=900)
    assert len(result['models']) == 2
    for row in result['models']:
        assert row['train_ratio'] > 0 and row['infer_ratio'] > 0 and row['folded_ratio'] > 0
    assert result['fold_ckpt_s'] > 0
    assert '| model (whole network DO-Conv)' in stdout


def test_layer_benchmark_smoke(tmp_path):
    """--layers: every variant measured, the naive baseline computes the same layer, and the
    memory saved for backward is 0 for ours and a kernel for keep_kernel and the naive layer."""
    stdout, result = run_benchmark(tmp_path, '--layers', '--quick', '--repeats', '1')
    kernel_mb = 32 * 32 * 9 * 4 / 2**20  # the 32 -> 32 3x3 kernel, float32
    for row, groups in zip(result['layers'], (1, 4)):
        for what in ('train', 'fwd', 'eval'):
            assert set(row[what]) == {'ours', 'ours keep_kernel', 'naive'}
            assert all(ratio > 0 for ratio in row[what].values())
        saved = row['saved_mb']
        assert saved['stock'] == 0 and saved['ours'] == 0
        assert saved['ours keep_kernel'] == pytest.approx(kernel_mb / groups)
        assert saved['naive'] >= kernel_mb / groups
    assert '| 32->32 g=4 16x16 | fwd+bwd |' in stdout


def test_layer_profile_smoke(tmp_path):
    """--layers --profile: per shape, both step times, the convolutions' own times, and ours'
    compiled calls (two compositions per step: forward and backward) where compiled."""
    stdout, rows = run_benchmark(tmp_path, '--layers', '--profile', '--quick', '--repeats', '2')
    assert [r['shape'] for r in rows] == ['32->32 16x16', '32->32 g=4 16x16']
    for row in rows:
        assert all(t > 0 for t in row['step_ms'] + row['stock_conv_ms'] + row['ours_conv_ms'])
        if _ext.load() is not None:
            assert row['compose_calls'] == 2 and row['compose_ms'] > 0 and row['grads_ms'] > 0
    assert '| 32->32 g=4 16x16 |' in stdout
    no_layers = subprocess.run([sys.executable, osp.join(ROOT, 'tools/benchmark.py'), '--profile'],
                               capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert no_layers.returncode == 2 and '--profile needs --layers' in no_layers.stderr


@pytest.mark.parametrize('groups, d_mul', [(1, 9), (2, 12), (4, 9)])
def test_naive_baseline_computes_the_layer(groups, d_mul):
    """The benchmark's naive layer against the float64 two-stage reference."""
    torch.manual_seed(0)
    conv = trained_like(DOConv2d(4, 8, 3, padding=1, groups=groups, D_mul=d_mul)).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    assert rel_err(NaiveDOConv2d(conv)(x), two_stage(x, conv)) < TOL64


def test_model_names_match_the_benchmark():
    from doconv_mm.mm.benchmark import MODELS
    spec = importlib.util.spec_from_file_location('bench_tool',
                                                  osp.join(ROOT, 'tools/benchmark.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.MODEL_NAMES == list(MODELS)
