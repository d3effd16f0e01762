"""The device benchmark (benchmarks/torch_models.py through tools/benchmark.py --device) on the
CPU at tiny sizes: the code path a GPU runs, torch only. torchvision's models where torchvision
imports (skipped with the reason otherwise), the torch-only toy CNN everywhere."""
import importlib

import pytest

from tool_helpers import run_benchmark


def check(stdout, result, names, device='cpu'):
    assert result['device'] == device and result['amp'] in ('fp32', 'bf16', 'fp16')
    assert [r['model'] for r in result['models']] == names
    for r in result['models']:
        assert r['do_convs'] > 0
        for key in ('train_ratio', 'eval_ratio', 'folded_ratio'):
            ratio = r[key]
            assert 0 < ratio['low'] <= ratio['median'] <= ratio['high'], key
        assert r['train_stock_ms'] > 0 and r['eval_folded_ms'] > 0
        assert 'mem_ratio' not in r  # peak device memory is CUDA's
        assert f"| {r['model']} ({r['do_convs']} DO-Conv) | 2 x " in stdout
    assert 'n/a | n/a' in stdout


@pytest.mark.parametrize('amp', [None, 'bf16'])
def test_device_benchmark_on_the_cpu(tmp_path, amp):
    args = ['--device', 'cpu', '--quick', '--repeats', '2', '--models', 'toy CNN']
    args += ['--amp', amp, '--channels-last'] if amp else []
    stdout, result = run_benchmark(tmp_path, *args)
    check(stdout, result, ['toy CNN'])
    assert result['channels_last'] == bool(amp)
    assert f"precision {amp or 'fp32'}" in stdout


def test_device_benchmark_of_torchvision_models_on_the_cpu(tmp_path):
    try:
        importlib.import_module('torchvision')
    except Exception as e:
        pytest.skip(f'torchvision does not import here ({type(e).__name__}: {e})')
    # DeepLabv3 alone: Faster R-CNN's training step takes 36 s on one CPU thread even at 128 px
    stdout, result = run_benchmark(tmp_path, '--device', 'cpu', '--quick', '--repeats', '1',
                                   '--models', 'DeepLabv3 R50', timeout=600)
    check(stdout, result, ['DeepLabv3 R50'])
