"""The autograd functions of DO-Conv: the composition with its closed-form gradients, and the
training convolution that keeps no composed kernel between forward and backward."""
import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._compat import autocast_dtype
from .compose import compose, compose_grads, compose_ref


class Compose(torch.autograd.Function):
    """:func:`.compose.compose` with its gradients from :func:`.compose.compose_grads`."""

    @staticmethod
    def forward(ctx, weight, D, W_extra):
        ctx.save_for_backward(weight, D, W_extra)
        return compose(weight, D, W_extra)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_K):
        return tuple(compose_grads(grad_K, *ctx.saved_tensors, ctx.needs_input_grad))


def _autocast_off(dtype: Optional[torch.dtype], device_type: str):
    """Autocast disabled for ``device_type`` where it is on (``dtype`` not None); else nothing
    (entering an autocast context costs microseconds, on every layer call)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class DOConvFunction(torch.autograd.Function):
    """``conv2d(x, K, bias)`` with ``K`` composed from the parameters, kept for backward only
    with ``keep_kernel``.

    Plain autograd would keep ``K`` (one kernel-sized tensor per layer) from forward to backward;
    here backward composes it again (only where the input needs a gradient: the kernel's own
    gradient does not read it), one composition per step more for the peak memory of a plain conv.
    Under autocast ``K`` is composed in the parameters' dtype and the convolution runs in the
    autocast dtype, as ``nn.Conv2d`` does.
    """

    @staticmethod
    def forward(ctx, x, weight, D, W_extra, bias, stride, padding, dilation, groups, keep_kernel):
        dtype = autocast_dtype(x.device.type)
        with _autocast_off(dtype, x.device.type):
            K = compose(weight, D, W_extra, transient=not keep_kernel)
        if dtype is not None and x.dtype != torch.float64:
            x, K = x.to(dtype), K.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight, D, W_extra, K if keep_kernel else None)
        ctx.conv = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]])
        with _autocast_off(dtype, x.device.type):
            return F.conv2d(x, K, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight, D, W_extra, K = ctx.saved_tensors  # W_extra None when D_mul == MN
        stride, padding, dilation, groups, bias_sizes = ctx.conv
        need_x, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
        need_params = ctx.needs_input_grad[1:4]
        if K is None and need_x:
            with _autocast_off(autocast_dtype(x.device.type), x.device.type):
                K = compose(weight, D, W_extra, transient=True).to(x.dtype)
        elif K is None:  # only the kernel's gradient, which does not read the kernel's values
            K = weight.to(x.dtype)
        grad_x, grad_K, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, K, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
            [need_x, any(need_params), need_b and bias_sizes is not None])
        del K
        grads = compose_grads(grad_K.to(weight.dtype), weight, D, W_extra, need_params,
                              reuse_grad=True) if any(need_params) else [None] * 3
        return (grad_x, *grads, grad_b, None, None, None, None, None)


def do_conv_kernel(weight: Tensor, D: Optional[Tensor], W_extra: Optional[Tensor] = None) -> Tensor:
    """The DO-Conv kernel ``K`` from ``W = [weight | W_extra]`` and ``D`` (:mod:`.compose`), in
    the parameters' dtype (autocast does not apply), differentiable (once); possibly strided.

    Args:
        weight: (C_out, C_in/groups, M, N), the first MN columns of ``W``.
        D: (C_in, MN, D_mul) or None (1x1 kernels: ``K = weight``).
        W_extra: (C_out, C_in/groups, D_mul - MN) or None when D_mul == MN.
    """
    if D is None:
        return weight
    with torch.autocast(weight.device.type, enabled=False):
        if torch.jit.is_tracing():  # operators a tracer records (and a FLOP counter counts)
            return compose_ref(weight, D, W_extra)
        return Compose.apply(weight, D, W_extra)
