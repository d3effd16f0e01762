"""Tolerances and helpers shared by the layer tests (torch only)."""
import torch

# Tolerances: float64 layer vs float64 reference 1e-10 (relative to the output's scale);
# float32 layer vs float64 reference 1e-5.
TOL64, TOL32 = 1e-10, 1e-5


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def trained_like(conv, seed=0):
    """Give ``conv`` a non-zero D (as after training) and random bias; returns it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if conv.D is not None:
            conv.D.copy_(0.3 * torch.randn(conv.D.shape, generator=g))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv
