"""The DO-Conv composition ``K = (D + I) W`` and its gradients: the formula in pure PyTorch (the
reference, which the tests hold against the two-stage computation) and the one place that picks
between it and the compiled CPU form (:mod:`._ext`).

Names follow the paper: for an M x N kernel (MN = M*N), ``D`` maps each input channel's MN patch
values to ``D_mul`` features and ``W = [weight | W_extra]`` maps those to the outputs. With
``c = group(o) * C_in/groups + i`` the global input channel of row ``o``'s column ``i``::

    K[o, i, m]  = weight[o, i, m] + sum_s W[o, i, s] D[c, m, s]
    dW[o, i, s] = [s < MN] G[o, i, s] + sum_m G[o, i, m] D[c, m, s]       (G = dL/dK)
    dD[c, m, s] = sum_o G[o, i, m] W[o, i, s]
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from . import _ext
from ._compat import is_compiling


def _grouped(weight: Tensor, D: Tensor, W_extra: Optional[Tensor]):
    """``W`` as (groups, C_out/groups, C_in/groups, D_mul) and ``D`` as (groups, C_in/groups, MN,
    D_mul), so that ``D`` pairs with each group's global input channels."""
    c_out, c_in_g, mn = weight.shape[0], weight.shape[1], D.shape[1]
    W = weight.reshape(c_out, c_in_g, mn)
    if W_extra is not None:
        W = torch.cat([W, W_extra], 2)
    groups = D.shape[0] // c_in_g
    return W.view(groups, c_out // groups, c_in_g, -1), D.view(groups, c_in_g, mn, -1)


def compose_ref(weight: Tensor, D: Tensor, W_extra: Optional[Tensor] = None) -> Tensor:
    """``K`` by the formula above, in PyTorch operators (autograd, tracers and FLOP counters see
    them); ``weight``: (C_out, C_in/groups, M, N), ``D``: (C_in, MN, D_mul), ``W_extra``:
    (C_out, C_in/groups, D_mul - MN) or None."""
    W, Dg = _grouped(weight, D, W_extra)
    return weight + torch.einsum('gois,gims->goim', W, Dg).reshape(weight.shape)


def compose_grads_ref(grad_K: Tensor, weight: Tensor, D: Tensor, W_extra: Optional[Tensor],
                      needs: Sequence[bool]) -> List[Optional[Tensor]]:
    """The gradients of ``weight``, ``D``, ``W_extra`` (where ``needs`` says) from ``dL/dK``."""
    W, Dg = _grouped(weight, D, W_extra)
    mn = D.shape[1]
    G = grad_K.reshape(W.shape[:3] + (mn, ))
    g_weight = g_D = g_extra = None
    if needs[0] or (W_extra is not None and needs[2]):
        GD = torch.einsum('goim,gims->gois', G, Dg).reshape(weight.shape[0], weight.shape[1], -1)
        if needs[0]:
            g_weight = grad_K + GD[..., :mn].reshape(weight.shape)
        if W_extra is not None and needs[2]:
            g_extra = GD[..., mn:].contiguous()
    if needs[1]:
        g_D = torch.einsum('goim,gois->gims', G, W).reshape(D.shape)
    return [g_weight, g_D, g_extra]


def compose(weight: Tensor, D: Tensor, W_extra: Optional[Tensor] = None,
            transient: bool = False) -> Tensor:
    """``K``, compiled where :func:`._ext.applies`, else :func:`compose_ref` (possibly strided).
    ``transient``: the caller drops ``K`` before the next composition on this thread, so the
    compiled path may write it into the thread's kernel buffer."""
    ext = _ext.applies(weight, D)
    if ext is None:
        return compose_ref(weight, D, W_extra)
    buffer = _ext.kernel_buffer(weight) if transient and not is_compiling() else None
    return ext.compose(weight, D, W_extra, buffer)


def compose_grads(grad_K: Tensor, weight: Tensor, D: Tensor, W_extra: Optional[Tensor],
                  needs: Sequence[bool], reuse_grad: bool = False) -> List[Optional[Tensor]]:
    """:func:`compose_grads_ref`, compiled where it applies (one sweep; ``reuse_grad``: the caller
    owns ``grad_K``, over which the weight's gradient may be written)."""
    ext = _ext.applies(weight, D)
    if ext is None:
        return compose_grads_ref(grad_K, weight, D, W_extra, needs)
    return ext.compose_grads(grad_K, weight, D, W_extra, *needs, reuse_grad)
