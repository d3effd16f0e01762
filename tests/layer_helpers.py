"""Tolerances and helpers shared by the layer tests (torch only)."""
import shutil

import torch

# Tolerances: float64 layer vs float64 reference 1e-10 (relative to the output's scale);
# float32 layer vs float64 reference 1e-5.
TOL64, TOL32 = 1e-10, 1e-5


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def trained_like(conv, seed=0):
    """Give ``conv`` a non-zero D (as after training) and random bias, drawn on the CPU whatever
    ``conv``'s device; returns it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if conv.D is not None:
            conv.D.copy_(0.3 * torch.randn(conv.D.shape, generator=g, device='cpu'))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g, device='cpu'))
    return conv


def cuda_unavailable():
    """Why a CUDA test cannot run here, or None where it can."""
    if not torch.cuda.is_available():
        return (f'CUDA is not available (torch {torch.__version__}, built for CUDA '
                f'{torch.version.cuda})')
    return None


def compile_unavailable():
    """Why torch.compile (inductor on the CPU) cannot run here, or None where it can."""
    if not hasattr(torch, 'compile'):
        return 'torch.compile needs torch >= 2.0'
    if shutil.which('c++') is None and shutil.which('g++') is None:
        return "torch.compile's CPU backend needs a C++ compiler"
    return None
