"""Runs that repeat: the toy segmentation model trained with one seed, in the environment
tools/compare.py and the study train in (experiments/kernels.py), gives bit-equal losses and
metric twice; and on an AVX-512 CPU it gives the losses of a CPU with AVX2 only (emulated by
capping oneDNN, ATen and MKL at AVX2), which it does not without the pinned kernels."""
import os
import subprocess

import pytest
import torch

from experiments.compare import read_logs, train_command
from experiments.kernels import KERNEL_ENV, kernel_env
from experiments.toy_data import write_cityscapes
from tool_helpers import ROOT

CONFIG = os.path.join(ROOT, 'configs/demo/deeplabv3_r18-d8_toy-cityscapes.py')
# 6 iterations: with the toy set below, the AVX-512 and AVX2 kernels' losses part from the 5th
TINY = ['train_cfg.max_iters=6', 'train_cfg.val_interval=6', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=6']
# the variables that pick the CPU kernels (the pinned ones and the caps an emulated CPU sets)
KERNEL_VARS = set(KERNEL_ENV) | {'ATEN_CPU_CAPABILITY', 'MKL_ENABLE_INSTRUCTIONS', 'MKL_CBWR'}
# a CPU with AVX2 and no AVX-512, as oneDNN, ATen and MKL see it
AVX2_CPU = {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'ATEN_CPU_CAPABILITY': 'avx2',
            'MKL_ENABLE_INSTRUCTIONS': 'AVX2'}


@pytest.fixture(scope='module')
def train(tmp_path_factory):
    """``train(name, env)``: the losses ``{iter: loss}`` and final mIoU of the toy segmentation
    model trained with seed 0 in ``env`` (over this process's environment, its kernel variables
    removed); each name trained once."""
    ws = tmp_path_factory.mktemp('repeat')
    write_cityscapes(str(ws / 'data' / 'toy_cityscapes'), n_train=16, n_val=4, seed=0)
    clean = {k: v for k, v in os.environ.items() if k not in KERNEL_VARS}
    done = {}

    def run(name, env):
        if name in done:
            return done[name]
        work = str(ws / name)
        proc = subprocess.run(train_command(ROOT, CONFIG, work, seed=0, cfg_options=TINY),
                              cwd=ws, env={**clean, **env}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        logs = read_logs(work)
        done[name] = ({i: r['loss'] for i, r in logs['train'].items()},
                      logs['val'][max(logs['val'])]['mIoU'])
        return done[name]
    return run


def test_segmentation_same_seed_gives_the_same_losses_twice(train):
    first, second = train('pinned', kernel_env({})), train('pinned_again', kernel_env({}))
    assert len(first[0]) == 6 and first == second


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != 'AVX512',
                    reason='needs a CPU with AVX-512 to compare its kernels with AVX2\'s')
def test_pinned_kernels_give_an_avx2_cpus_losses_on_an_avx512_cpu(train):
    threads = {'OMP_NUM_THREADS': KERNEL_ENV['OMP_NUM_THREADS']}  # only the ISA differs
    avx512 = train('avx512', threads)
    avx2 = train('avx2', {**AVX2_CPU, **threads})
    assert avx512[0] != avx2[0], 'the AVX-512 and AVX2 kernels trained to the same losses'
    assert kernel_env(AVX2_CPU) == {**AVX2_CPU, **threads}  # pinning changes nothing there
    pinned = train('pinned', kernel_env({}))  # the first test's run
    assert pinned == avx2
