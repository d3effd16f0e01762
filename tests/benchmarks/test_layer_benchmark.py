"""The layer benchmark (benchmarks/layers.py through tools/benchmark.py --layers) on tiny shapes:
every variant measured in fresh processes with its spread, and the naive baseline computing the
layer (against the float64 two-stage reference)."""
import pytest
import torch

from benchmarks.layers import NaiveDOConv2d
from doconv_mm import DOConv2d
from layer_helpers import TOL64, rel_err, trained_like
from reference import two_stage
from tool_helpers import run_benchmark


def test_layer_benchmark_smoke(tmp_path):
    """--layers: every variant measured (training step, training forward, evaluation), and the
    memory saved for backward: 0 for nn.Conv2d, a kernel and D for ours, at least a kernel naive."""
    stdout, result = run_benchmark(tmp_path, '--layers', '--quick', '--repeats', '1',
                                   '--processes', '2')
    kernel_mb = 32 * 32 * 9 * 4 / 2**20  # the 32 -> 32 3x3 kernel, float32
    for row, groups in zip(result['layers'], (1, 4)):
        for what in ('train', 'fwd', 'eval'):
            assert set(row[what]) == {'ours', 'naive'}
            assert all(ratio > 0 for ratio in row[what].values())
        saved = row['saved_mb']
        assert saved['stock'] == 0
        # the kernel, D + I (32 x 9 x 9) and, for groups > 1, W regrouped for the batched matmul
        d_mb = 32 * 81 * 4 / 2**20
        assert kernel_mb / groups <= saved['ours'] <= (
            (1 + (groups > 1)) * kernel_mb / groups + d_mb) * 1.001
        assert saved['naive'] >= kernel_mb / groups
    assert '| 32->32 g=4 16x16 | fwd+bwd |' in stdout
    assert '| 32->32 g=4 16x16 | eval |' in stdout
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


@pytest.mark.parametrize('groups, d_mul', [(1, 9), (2, 12), (4, 9)])
def test_naive_baseline_computes_the_layer(groups, d_mul):
    """The benchmark's naive layer against the float64 two-stage reference."""
    torch.manual_seed(0)
    conv = trained_like(DOConv2d(4, 8, 3, padding=1, groups=groups, D_mul=d_mul)).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    assert rel_err(NaiveDOConv2d(conv)(x), two_stage(x, conv)) < TOL64
