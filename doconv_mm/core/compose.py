"""The DO-Conv composition ``K = (D + I) W``, the layer's math in one function of PyTorch
operators: autograd differentiates it, and tracers, FLOP counters, torch.compile and export see it.

Names follow the paper: for an M x N kernel (MN = M*N), ``D`` maps each input channel's MN patch
values to ``D_mul`` features and ``W = [weight | W_extra]`` maps those to the outputs. With
``c = group(o) * C_in/groups + i`` the global input channel of row ``o``'s column ``i``::

    K[o, i, m] = sum_s W[o, i, s] (D[c, m, s] + I[m, s])
               = weight[o, i, m] + sum_s W[o, i, s] D[c, m, s]
"""
import contextlib
from typing import Optional

import torch
from torch import Tensor

from ._compat import autocast_dtype


def do_conv_kernel(weight: Tensor, D: Optional[Tensor], W_extra: Optional[Tensor] = None) -> Tensor:
    """The DO-Conv kernel ``K`` (contiguous, differentiable) in the parameters' dtype.

    Args:
        weight: (C_out, C_in/groups, M, N), the first MN columns of ``W``.
        D: (C_in, MN, D_mul) or None (1x1 kernels: ``K = weight``).
        W_extra: (C_out, C_in/groups, D_mul - MN) or None when D_mul == MN.
    """
    if D is None:
        return weight
    c_out, c_in_g, mn = weight.shape[0], weight.shape[1], D.shape[1]
    groups = D.shape[0] // c_in_g
    W = weight.reshape(c_out, c_in_g, mn)
    if W_extra is not None:
        W = torch.cat([W, W_extra], 2)
    # one (C_out/groups x D_mul) @ (D_mul x MN) product per global input channel: batched matmul
    W = W.view(groups, c_out // groups, c_in_g, -1).transpose(1, 2)
    W = W.reshape(groups * c_in_g, c_out // groups, -1)
    DI = (D + torch.eye(mn, D.shape[2], dtype=D.dtype, device=D.device)).transpose(1, 2)
    # composed in the parameters' dtype (the convolution runs in autocast's); autocast is left
    # only where it is on, as entering it costs every call
    with (contextlib.nullcontext() if autocast_dtype(weight.device.type) is None
          else torch.autocast(weight.device.type, enabled=False)):
        K = torch.bmm(W, DI)
    # contiguous: a strided kernel makes the convolution copy it, and slower than this
    return K.view(groups, c_in_g, c_out // groups, mn).transpose(1, 2).contiguous().view(
        weight.shape)
