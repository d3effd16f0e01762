"""The layer benchmark (benchmarks/layers.py through tools/benchmark.py --layers) on tiny shapes:
every variant measured in fresh processes with its spread, the step profile, and the naive
baseline computing the layer (against the float64 two-stage reference)."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

from benchmarks.layers import NaiveDOConv2d
from doconv_mm import DOConv2d
from doconv_mm.core import _ext
from layer_helpers import TOL64, rel_err, trained_like
from reference import two_stage
from tool_helpers import ROOT, run_benchmark


def test_layer_benchmark_smoke(tmp_path):
    """--layers: every variant measured, the naive baseline computes the same layer, and the
    memory saved for backward is 0 for ours and a kernel for keep_kernel and the naive layer."""
    stdout, result = run_benchmark(tmp_path, '--layers', '--quick', '--repeats', '1',
                                   '--processes', '2')
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
    # every figure: the median over the 2 processes, with their lowest and highest beside it
    assert result['processes'] == 2 and len(result['per_process']) == 2
    for k, (row, spread) in enumerate(zip(result['layers'], result['spread']['layers'])):
        runs = [p['layers'][k] for p in result['per_process']]
        for what in ('train', 'fwd', 'eval'):
            for name, value in row[what].items():
                values = [r[what][name] for r in runs]
                assert value == pytest.approx(sum(values) / 2)
                assert spread[what][name] == [min(values), max(values)]
        values = [r['stock_train_ms'] for r in runs]
        assert spread['stock_train_ms'] == [min(values), max(values)]
        low, high = (f'{v:.2f}' for v in spread['stock_train_ms'])
        if low != high:
            assert f"{row['stock_train_ms']:.2f} ({low}-{high}) ms" in stdout
    assert 'medians over 2 fresh processes' in stdout


def test_layer_profile_smoke(tmp_path):
    """--layers --profile: per shape, both step times, the convolutions' own times, and ours'
    compiled calls (two compositions per step: forward and backward) where compiled."""
    stdout, result = run_benchmark(tmp_path, '--layers', '--profile', '--quick', '--repeats',
                                   '2', '--processes', '1')
    rows = result['layers']
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
