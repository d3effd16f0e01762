"""DO-Conv: depthwise over-parameterized convolution (Cao et al., arXiv 2006.12030).

Names follow the paper: for an M x N kernel (MN = M*N), the depthwise stage ``D`` maps each input
channel's MN patch values to ``D_mul >= MN`` features, and the conventional stage ``W`` maps those
features to the outputs. Both are linear, so they compose into one ordinary kernel::

    K[o, i, m] = sum_s (D[c, m, s] + I[m, s]) * W[o, i, s],   c = group(o) * C_in/groups + i

``I`` is the MN x D_mul identity (zero beyond column MN), and ``D`` starts at zero, so training
starts exactly at the plain convolution. ``D`` belongs to the *global* input channel ``c`` for every
``groups`` (DO-Conv: groups=1, DO-DConv: groups=C_in, DO-GConv: otherwise); the reference
implementation pairs ``D`` with the wrong channels when 1 < groups < C_in.

Layout of the parameters. ``W`` is stored as the layer's ordinary ``weight`` (its first MN
columns, in kernel shape) plus ``W_extra`` (the remaining ``D_mul - MN`` columns, only when
D_mul > MN). Hence ``K = weight + sum_s D[c, :, s] * W[o, i, s]``:

* a plain conv's state dict (``weight``, ``bias``) is a complete DO-Conv state at ``D = 0``;
* initialisers and tools that read or write ``.weight`` see the usual kernel shape;
* with the default D_mul = MN, ``K`` is linear in ``weight`` for a fixed ``D``, so a per-output-
  channel rescaling of ``weight`` (mmcv's ``fuse_conv_bn``, ``ConvModule``'s efficient conv-bn
  eval) rescales ``K`` the same way and stays exact.
"""
import contextlib
import threading
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from . import _ext
from ._compat import autocast_dtype, is_compiling

_PADDING_MODES = ('zeros', 'reflect', 'replicate', 'circular')


def _operands(weight: Tensor, D: Tensor, W_extra: Optional[Tensor]):
    """``W = [weight | W_extra]`` as (groups, C_out/groups, C_in/groups, D_mul), ``D`` as
    (groups, C_in/groups, MN, D_mul): indexed so that ``D`` pairs with each group's global input
    channels."""
    c_out, c_in_g = weight.shape[:2]
    groups, mn, d_mul = D.shape[0] // c_in_g, D.shape[1], D.shape[2]
    W = weight.reshape(c_out, c_in_g, mn)
    if W_extra is not None:
        W = torch.cat([W, W_extra], 2)
    return W.view(groups, c_out // groups, c_in_g, d_mul), D.view(groups, c_in_g, mn, d_mul)


def _compiled(weight: Tensor, D: Tensor):
    """The compiled CPU composition (``csrc/compose.cpp``) where it applies, else None: not under
    ``torch.jit`` tracing (export, FLOP counters), which must see PyTorch operators."""
    if weight.device.type != 'cpu' or weight.dtype not in (torch.float32, torch.float64) \
            or D.dtype != weight.dtype or D.shape[2] > 256 or torch.jit.is_tracing():
        return None
    return _ext.load()


def _compose(weight: Tensor, D: Tensor, W_extra: Optional[Tensor],
             transient: bool = False) -> Tensor:
    """``K = (D + I) W`` per input channel: compiled on the CPU, else one batched matmul. ``K``
    may come out strided; a convolution reorders its weight into its own layout on every call
    anyway, so only a kernel kept for reuse (the eval cache, :meth:`DOConv2d.fold`) is made
    contiguous. ``transient``: the caller drops ``K`` before the next composition on this thread,
    so the compiled path may write it into this thread's kernel buffer (:func:`_kernel_buffer`)."""
    ext = _compiled(weight, D)
    if ext is not None:
        return ext.compose(weight, D, W_extra, _kernel_buffer(weight) if transient else None)
    W, D = _operands(weight, D, W_extra)
    DI = D + torch.eye(D.shape[2], D.shape[3], dtype=D.dtype, device=D.device)  # small
    return torch.einsum('gims,gois->goim', DI, W).reshape(weight.shape)


_workspace = threading.local()


def _kernel_buffer(weight: Tensor) -> Optional[Tensor]:
    """A buffer of ``weight``'s shape, dtype and device in memory this thread reuses for every
    transient composition (training forward and backward), or None under torch.compile.

    A fresh kernel-sized tensor per composition costs page faults wherever the allocator has
    returned the memory to the system in between (glibc does for blocks of 32 MB and more, and
    trims its heaps): a 512-channel 3x3 composition took 2.9 ms instead of 1.0 ms in processes
    where that happened. The buffer grows to the largest kernel composed on the thread and is
    kept (its size is the largest kernel's, e.g. 47 MB for DeepLabv3's 2560 -> 512 bottleneck).
    """
    if is_compiling():
        return None
    views = _workspace.__dict__.setdefault('views', {})  # (device, dtype, shape) -> kernel view
    key = (weight.device, weight.dtype, weight.shape)
    view = views.get(key)
    if view is None:
        buffers = _workspace.__dict__.setdefault('buffers', {})
        buf = buffers.get(key[:2])
        if buf is None or buf.numel() < weight.numel():
            buf = buffers[key[:2]] = torch.empty(weight.numel(), dtype=weight.dtype,
                                                 device=weight.device)
            views.clear()  # views of a smaller buffer would keep it alive
        view = views[key] = buf[:weight.numel()].view(weight.shape)
    return view


def _compose_grads(grad_K: Tensor, weight: Tensor, D: Tensor, W_extra: Optional[Tensor],
                   needs: Sequence[bool], reuse_grad: bool = False) -> List[Optional[Tensor]]:
    """Gradients of ``weight``, ``D``, ``W_extra`` (where ``needs`` says) from ``G = dL/dK``:
    ``dW = G (D + I)`` and ``dD = G^T W`` per input channel (compiled: in one sweep, which may
    write ``dW`` over ``grad_K`` where ``reuse_grad`` says the caller owns it)."""
    ext = _compiled(weight, D)
    if ext is not None:
        return ext.compose_grads(grad_K, weight, D, W_extra, *needs, reuse_grad)
    W, Dg = _operands(weight, D, W_extra)
    G = grad_K.reshape(W.shape[:3] + (D.shape[1], ))
    g_weight = g_D = g_extra = None
    if needs[0] or (W_extra is not None and needs[2]):
        DI = Dg + torch.eye(Dg.shape[2], Dg.shape[3], dtype=D.dtype, device=D.device)
        g_W = torch.einsum('goim,gims->gois', G, DI).reshape(weight.shape[0], weight.shape[1], -1)
        mn = D.shape[1]
        g_weight = g_W[..., :mn].reshape(weight.shape) if needs[0] else None
        g_extra = g_W[..., mn:].contiguous() if W_extra is not None and needs[2] else None
    if needs[1]:
        g_D = torch.einsum('goim,gois->gims', G, W).reshape(D.shape)
    return [g_weight, g_D, g_extra]


class _Compose(torch.autograd.Function):
    """:func:`_compose` with its gradients in closed form (:func:`_compose_grads`)."""

    @staticmethod
    def forward(ctx, weight, D, W_extra):
        ctx.save_for_backward(weight, D, W_extra)
        return _compose(weight, D, W_extra)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_K):
        return tuple(_compose_grads(grad_K, *ctx.saved_tensors, ctx.needs_input_grad))


def do_conv_kernel(weight: Tensor, D: Optional[Tensor], W_extra: Optional[Tensor] = None) -> Tensor:
    """Compose the DO-Conv kernel ``K`` from ``W = [weight | W_extra]`` and ``D`` (see module doc):
    ``K[o, i, m] = weight[o, i, m] + sum_s W[o, i, s] * D[c, m, s]``, in the parameters' dtype
    (autocast does not apply), differentiable (once); possibly strided (``.contiguous()`` it to
    keep it).

    Args:
        weight: (C_out, C_in/groups, M, N), the first MN columns of ``W``.
        D: (C_in, MN, D_mul) or None (1x1 kernels: ``K = weight``).
        W_extra: (C_out, C_in/groups, D_mul - MN) or None when D_mul == MN.
    """
    if D is None:
        return weight
    with torch.autocast(weight.device.type, enabled=False):
        if torch.jit.is_tracing():  # operators a tracer records (and counts); autograd on them
            return _compose(weight, D, W_extra)
        return _Compose.apply(weight, D, W_extra)


def _autocast_off(dtype: Optional[torch.dtype], device_type: str):
    """Autocast disabled for ``device_type`` where it is on (``dtype`` not None); else nothing
    (entering an autocast context costs microseconds, on every layer call)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


class _DOConvFunction(torch.autograd.Function):
    """``conv2d(x, do_conv_kernel(weight, D, W_extra), bias)`` that keeps no composed kernel.

    Plain autograd would keep ``K`` (one kernel-sized tensor per layer) alive from forward to
    backward; here backward composes it again from the parameters (only where the input needs a
    gradient: the kernel's own gradient does not read it), which costs one more composition per
    step and leaves the step's peak memory that of a plain conv; ``keep_kernel`` keeps ``K``
    instead, trading that memory for the time. Under autocast,
    ``K`` is composed in the parameters' dtype and the convolution runs in the autocast dtype, as
    ``nn.Conv2d`` does.
    """

    @staticmethod
    def forward(ctx, x, weight, D, W_extra, bias, stride, padding, dilation, groups, keep_kernel):
        dtype = autocast_dtype(x.device.type)
        with _autocast_off(dtype, x.device.type):
            K = _compose(weight, D, W_extra, transient=not keep_kernel)
        if dtype is not None and x.dtype != torch.float64:
            x, K = x.to(dtype), K.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight, D, W_extra, K if keep_kernel else None)
        ctx.conv = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]])
        with _autocast_off(dtype, x.device.type):
            return F.conv2d(x, K, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, D, W_extra, K = ctx.saved_tensors  # W_extra None when D_mul == MN
        stride, padding, dilation, groups, bias_sizes = ctx.conv
        need_x, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
        need_params = ctx.needs_input_grad[1:4]
        if K is None and need_x:
            with _autocast_off(autocast_dtype(x.device.type), x.device.type):
                K = _compose(weight, D, W_extra, transient=True).to(x.dtype)
        elif K is None:  # only the kernel's gradient, which does not read the kernel's values
            K = weight.to(x.dtype)
        grad_x, grad_K, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, K, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
            [need_x, any(need_params), need_b and bias_sizes is not None])
        del K
        grads = _compose_grads(grad_K.to(weight.dtype), weight, D, W_extra, need_params,
                               reuse_grad=True) \
            if any(need_params) else [None] * 3
        return (grad_x, *grads, grad_b, None, None, None, None, None)


def _check_args(in_channels, out_channels, kernel_size, stride, padding, groups, padding_mode,
                D_mul) -> Tuple[int, int]:
    """Validate DOConv2d's arguments; returns the kernel size as a pair."""
    ks = (kernel_size, ) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(ks) != 2 or not all(isinstance(k, int) and k > 0 for k in ks):
        raise ValueError(f'kernel_size must be a positive int or a pair of them (a 2D kernel), '
                         f'got {kernel_size!r}')
    for name, value in (('in_channels', in_channels), ('out_channels', out_channels)):
        if groups < 1 or value % groups:
            raise ValueError(f'{name}={value} must be divisible by groups={groups} '
                             f'(groups must be a positive divisor of both channel counts)')
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f'padding_mode={padding_mode!r} is not supported; '
                         f'allowed: {", ".join(map(repr, _PADDING_MODES))}')
    if isinstance(padding, str):
        if padding not in ('same', 'valid'):
            raise ValueError(f"padding={padding!r} is not supported; allowed: 'same', 'valid', "
                             f'an int or a pair of ints')
        if padding == 'same' and any(s != 1 for s in _pair(stride)):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride!r}")
    mn = ks[0] * ks[1]
    if D_mul is not None and mn > 1 and (not isinstance(D_mul, int) or D_mul < mn):
        raise ValueError(f'D_mul={D_mul!r} must be an int >= M*N = {mn} for a '
                         f'{ks[0]}x{ks[1]} kernel')
    return ks


class DOConv2d(nn.Conv2d):
    """A drop-in ``nn.Conv2d`` trained as DO-Conv (DO-DConv / DO-GConv for groups > 1).

    Takes ``nn.Conv2d``'s arguments plus keyword-only ``D_mul`` (default M*N; ignored for 1x1
    kernels, which have no ``D`` and are plain convolutions). When the composed kernel needs no
    gradient (eval under ``torch.no_grad``), it is computed once and reused until a parameter
    changes, so unfolded inference costs what a plain conv costs. :meth:`fold` returns the
    equivalent ``nn.Conv2d``. Training composes the kernel again in the backward pass, so peak
    memory is that of a plain conv; keyword-only ``keep_kernel=True`` keeps it from the forward
    pass instead (one kernel-sized tensor per layer, one composition per step less).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[str, int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1,
                 groups: int = 1,
                 bias: bool = True,
                 padding_mode: str = 'zeros',
                 device=None,
                 dtype=None,
                 *,
                 D_mul: Optional[int] = None,
                 keep_kernel: bool = False) -> None:
        if not isinstance(keep_kernel, bool):
            raise ValueError(f'keep_kernel must be True or False, got {keep_kernel!r}')
        kh, kw = _check_args(in_channels, out_channels, kernel_size, stride, padding, groups,
                             padding_mode, D_mul)
        super().__init__(in_channels, out_channels, (kh, kw), stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        mn = kh * kw
        self.D_mul = mn if (D_mul is None or mn == 1) else D_mul
        self.keep_kernel = keep_kernel
        factory = dict(device=device, dtype=dtype)
        self.D = nn.Parameter(torch.zeros(in_channels, mn, self.D_mul, **factory)) \
            if mn > 1 else None
        self.W_extra = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, self.D_mul - mn, **factory)) \
            if self.D_mul > mn else None
        self._cache = None  # ([(parameter, version)], kernel) of the last composition without grad
        self._init_do_params()

    def _init_do_params(self) -> None:
        """``D = 0`` (identity start); ``W_extra`` as PyTorch initialises a conv's weight.

        ``W_extra`` must not be zero: at ``D = 0`` its gradient and that of ``D``'s extra columns
        are each proportional to the other, so both would stay zero forever.
        """
        if self.D is not None:
            nn.init.zeros_(self.D)
        if self.W_extra is not None:
            nn.init.kaiming_uniform_(self.W_extra, a=5**0.5)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, 'W_extra'):  # nn.Conv2d.__init__ calls this before D exists
            self._init_do_params()

    def kernel(self, weight: Optional[Tensor] = None) -> Tensor:
        """The composed kernel ``K`` for ``weight`` (default: the layer's own)."""
        weight = self.weight if weight is None else weight
        if self.W_extra is not None and weight is not self.weight:
            raise RuntimeError(
                'DOConv2d with D_mul > M*N cannot compose a kernel from an externally transformed '
                'weight (e.g. ConvModule(efficient_conv_bn_eval=True)); use D_mul = M*N, or fold '
                'the model first with doconv_mm.fold_model')
        # Composed in the parameters' dtype even under autocast; the conv itself is autocast.
        with torch.autocast(weight.device.type, enabled=False):
            return do_conv_kernel(weight, self.D, self.W_extra)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.D is None:
            return super()._conv_forward(input, weight, bias)
        if weight is not self.weight:  # transformed (efficient conv-bn eval): composed, not cached
            return super()._conv_forward(input, self.kernel(weight), bias)
        params = [p for p in (self.weight, self.D, self.W_extra) if p is not None]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self._cache = None
            return self._train_forward(input, bias)
        if not self._cache_valid(params):
            self._cache = ([(p.detach(), p._version) for p in params], self._exact_kernel())
        return super()._conv_forward(input, self._cache[1], bias)

    def _cache_valid(self, params) -> bool:
        """Whether the cached kernel was composed from ``params`` as they are now.

        Parameters change in place (optimizer steps, ``load_state_dict``, ``add_`` under no_grad:
        the version counter moves) or by replacement (``.to()``, ``.data =``, a new Parameter: the
        memory differs). The cache holds the tensors it was composed from, so their memory cannot
        be handed to a replacement while it is kept. Edits through ``.data`` bypass the version
        counter; a change of mode (:meth:`train`) drops the cache for them.
        """
        if self._cache is None or len(self._cache[0]) != len(params):
            return False
        return all(p._version == version and p.data_ptr() == held.data_ptr()
                   and p.dtype == held.dtype and p.device == held.device and p.shape == held.shape
                   for p, (held, version) in zip(params, self._cache[0]))

    def _train_forward(self, input: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The convolution through :class:`_DOConvFunction`, with padding as nn.Conv2d pads:
        symmetric zero padding by the convolution, any other by ``F.pad`` first."""
        pad = self._reversed_padding_repeated_twice  # (left, right, top, bottom)
        if self.padding_mode == 'zeros' and pad[0] == pad[1] and pad[2] == pad[3]:
            padding = (pad[2], pad[0])
        else:
            mode = 'constant' if self.padding_mode == 'zeros' else self.padding_mode
            input, padding = F.pad(input, pad, mode=mode), (0, 0)
        return _DOConvFunction.apply(input, self.weight, self.D, self.W_extra, bias, self.stride,
                                     padding, self.dilation, self.groups, self.keep_kernel)

    def train(self, mode: bool = True) -> 'DOConv2d':
        """Drops the cached kernel when the mode changes, and only then: edits through ``.data``
        (e.g. mmengine's EMA hook swapping weights before validation) leave no trace but the
        switch between training and evaluation that follows them; repeated ``eval()`` calls keep
        the kernel."""
        if mode != self.training:
            self._cache = None
        return super().train(mode)

    @torch.no_grad()
    def _exact_kernel(self) -> Tensor:
        """``K`` composed in float64 and cast back: exactly the kernel :meth:`fold` writes, so
        unfolded evaluation computes bit for bit what the folded conv computes."""
        D = None if self.D is None else self.D.double()
        W_extra = None if self.W_extra is None else self.W_extra.double()
        with torch.autocast(self.weight.device.type, enabled=False):
            K = do_conv_kernel(self.weight.double(), D, W_extra)
        return K.to(self.weight.dtype, memory_format=torch.contiguous_format)

    def __setattr__(self, name: str, value) -> None:
        # mmcv's fuse_conv_bn replaces ``weight`` by a rescaled copy, which is exact only when
        # K is linear in ``weight`` alone, i.e. D_mul == M*N.
        if (name == 'weight' and isinstance(value, nn.Parameter)
                and self.__dict__.get('_parameters', {}).get('W_extra') is not None):
            raise RuntimeError('replacing the weight of a DOConv2d with D_mul > M*N (e.g. by '
                               'mmcv fuse_conv_bn) would drop W_extra from the kernel; fold the '
                               'model first with doconv_mm.fold_model')
        super().__setattr__(name, value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Load a plain conv's state dict (``weight``, ``bias``) as the identity start.

        Without ``D`` in the state dict, ``D`` is set to zero (and ``W_extra``, which then has no
        effect, kept), so the layer computes exactly what the plain conv computes; this is how
        ImageNet-pretrained backbones are used. Even ``strict=True`` accepts such a state dict.
        """
        plain = prefix + 'weight' in state_dict and prefix + 'D' not in state_dict
        if self.D is not None and plain:
            state_dict[prefix + 'D'] = torch.zeros_like(self.D)
            if self.W_extra is not None:
                state_dict.setdefault(prefix + 'W_extra', self.W_extra.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @torch.no_grad()
    def fold(self) -> nn.Conv2d:
        """The equivalent plain ``nn.Conv2d``: the kernel composed in float64, cast back."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, self.bias is not None,
                         self.padding_mode, device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.copy_(self._exact_kernel())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        conv.weight.requires_grad_(self.weight.requires_grad)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', D_mul={self.D_mul}' + (
            ', keep_kernel=True' if self.keep_kernel else '')
