"""The CPU kernels a run trains with, pinned so that a run repeats on another machine.

oneDNN, which computes PyTorch's convolutions on the CPU, picks its kernels by the CPU's
instruction set and splits its reductions by the number of threads: the same seed trains to other
losses on a CPU with AVX-512 than on one with AVX2 only, and with 1 thread than with 2
(docs/study.md, "Runs that repeat"). The study and tools/compare.py train with oneDNN capped at
AVX2, which x86-64 CPUs have had since 2013-2015, and with a fixed thread count, so that neither
the CPU's instruction set nor its core count changes a run's losses (shown by emulating an
AVX2-only CPU on an AVX-512 one: tests/tools/test_repeatable_runs.py).
"""
import os
from typing import Dict, Mapping, Optional

KERNEL_ENV = {
    'ONEDNN_MAX_CPU_ISA': 'AVX2',  # oneDNN's kernels: those of AVX2 even where AVX-512 is there
    'OMP_NUM_THREADS': '2',  # PyTorch's and oneDNN's threads: the toy study's 2-core machines
}


def kernel_env(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``env`` (default: this process's environment) with :data:`KERNEL_ENV` set over it: the
    environment of a training process the study or tools/compare.py starts."""
    return {**(os.environ if env is None else env), **KERNEL_ENV}
