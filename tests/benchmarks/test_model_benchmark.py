"""The model benchmark (benchmarks/models.py through tools/benchmark.py) on a tiny run: every
figure measured (no timing assertion), and the tool's model names are the benchmark's."""
import importlib.util
import os.path as osp

from tool_helpers import ROOT, run_benchmark


def test_benchmark_smoke(tmp_path):
    stdout, result = run_benchmark(tmp_path, '--quick', '--repeats', '1', '--sizes', '64',
                                   timeout=900)
    assert len(result['models']) == 2
    for row in result['models']:
        assert row['train_ratio'] > 0 and row['infer_ratio'] > 0 and row['folded_ratio'] > 0
    assert result['fold_ckpt_s'] > 0
    assert '| model (whole network DO-Conv)' in stdout


def test_model_names_match_the_benchmark():
    from benchmarks.models import MODELS
    spec = importlib.util.spec_from_file_location('bench_tool',
                                                  osp.join(ROOT, 'tools/benchmark.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.MODEL_NAMES == list(MODELS)
