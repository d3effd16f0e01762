"""DO-Conv: depthwise over-parameterized convolution (Cao et al., arXiv 2006.12030), as a drop-in
``nn.Conv2d`` that holds the parameters, the evaluation cache and plain-checkpoint loading; the
composition ``K = (D + I) W`` is :mod:`.compose`.

``D`` belongs to the *global* input channel for every ``groups`` (DO-Conv: groups=1, DO-DConv:
groups=C_in, DO-GConv: otherwise). ``W`` is stored as the layer's ordinary ``weight`` (its first MN
columns, in kernel shape) plus ``W_extra`` (the other ``D_mul - MN``, only when D_mul > MN), and
``D`` starts at zero: a plain conv's state dict is a complete DO-Conv state, training starts
exactly at the plain convolution, and with D_mul = MN a per-output-channel rescaling of ``weight``
(mmcv's ``fuse_conv_bn``, efficient conv-bn eval) rescales ``K`` the same way.
"""
import ctypes
import warnings
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ._compat import TensorBase, is_compiling
from .compose import do_conv_kernel

try:  # the C library's memcmp: a bitwise compare at memory speed, no temporary
    _memcmp = ctypes.CDLL(None).memcmp
    _memcmp.argtypes, _memcmp.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], \
        ctypes.c_int
except (OSError, AttributeError, TypeError):  # no C library to load by that name (Windows)
    _memcmp = None


def _same_bits(param: Tensor, held: Tensor) -> bool:
    """Whether ``param`` holds the values of ``held``: bit for bit (contiguous, on the CPU)."""
    if (param.shape, param.stride(), param.dtype, param.device) != (
            held.shape, held.stride(), held.dtype, held.device):
        return False
    if _memcmp is not None and param.device.type == 'cpu' and param.is_contiguous():
        return _memcmp(param.data_ptr(), held.data_ptr(), param.numel() * param.element_size()) == 0
    return torch.equal(param, held)


class _Watched(nn.Parameter):
    """A parameter that counts the ways to its memory that autograd's version counter does not
    see: ``.data`` (mmengine's EMAHook, mmdet's MeanTeacherHook), ``detach()`` and ``numpy()``
    (NumPy views). Deep copies stay watched; other copies (pickling, ``nn.Parameter(...)``) are
    plain parameters."""
    reaches = 0

    def _reached(self) -> None:
        self.reaches = self.reaches + 1

    @property
    def data(self) -> Tensor:
        self._reached()
        return TensorBase.data.__get__(self)

    @data.setter
    def data(self, value: Tensor) -> None:
        self._reached()
        TensorBase.data.__set__(self, value)

    def detach(self) -> Tensor:
        self._reached()
        return super().detach()

    def numpy(self, *args, **kwargs):
        self._reached()
        return super().numpy(*args, **kwargs)


def _untouched(params: List[Tensor], refs: list) -> bool:
    """Whether no parameter was edited in place, replaced or reached past autograd since
    ``refs`` (references keep the old storage alive, so no other tensor can take its address)."""
    return all(p._version == version and p.data_ptr() == ref.data_ptr()
               and getattr(p, 'reaches', None) == reaches
               for p, (ref, version, reaches) in zip(params, refs))


def _replicate_pad(x: Tensor, pad: List[int]) -> Tensor:
    """``F.pad(x, pad, mode='replicate')`` (``pad``: left, right, top, bottom) as an index with
    clamped positions, whose backward is an index_add."""
    h, w = x.shape[-2:]
    rows = torch.arange(-pad[2], h + pad[3], device=x.device).clamp(0, h - 1)
    cols = torch.arange(-pad[0], w + pad[1], device=x.device).clamp(0, w - 1)
    return x[..., rows[:, None], cols]


class DOConv2d(nn.Conv2d):
    """A drop-in ``nn.Conv2d`` trained as DO-Conv (DO-DConv / DO-GConv for groups > 1).

    Takes ``nn.Conv2d``'s arguments plus keyword-only ``D_mul`` (default M*N; ignored for 1x1
    kernels, which have no ``D`` and are plain convolutions). In evaluation mode without gradients
    the kernel is composed in float64 as :meth:`fold` does and reused while the parameters are
    unchanged; :meth:`fold` returns the equivalent ``nn.Conv2d``. ``keep_kernel`` is accepted for
    old configs and ignored (autograd keeps the composed kernel for the backward pass).
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
                 keep_kernel: Optional[bool] = None) -> None:
        ks = (kernel_size, ) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(ks) != 2 or not all(isinstance(k, int) and k > 0 for k in ks):
            raise ValueError(f'kernel_size must be a positive int or a pair of them (a 2D kernel), '
                             f'got {kernel_size!r}')
        mn = ks[0] * ks[1]
        if D_mul is not None and mn > 1 and (not isinstance(D_mul, int) or D_mul < mn):
            raise ValueError(f'D_mul={D_mul!r} must be an int >= M*N = {mn} for a '
                             f'{ks[0]}x{ks[1]} kernel')
        if keep_kernel is not None:
            warnings.warn('DOConv2d(keep_kernel=...) has no effect and will be removed: the '
                          'composed kernel is always kept for the backward pass',
                          DeprecationWarning, stacklevel=2)
        super().__init__(in_channels, out_channels, ks, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.D_mul = mn if (D_mul is None or mn == 1) else D_mul
        factory = dict(device=device, dtype=dtype)
        if mn > 1:
            self.weight = _Watched(TensorBase.detach(self.weight))
        self.D = _Watched(torch.zeros(in_channels, mn, self.D_mul, **factory)) \
            if mn > 1 else None
        self.W_extra = _Watched(
            torch.empty(out_channels, in_channels // groups, self.D_mul - mn, **factory)) \
            if self.D_mul > mn else None
        self._cache = None  # dict(copies, refs, kernel): evaluation without gradients
        self._trusted = False  # the cache's references checked since the last train()/eval()
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

    def _do_params(self) -> List[Tensor]:
        return [p for p in (self.weight, self.D, self.W_extra) if p is not None]

    def kernel(self, weight: Optional[Tensor] = None) -> Tensor:
        """The composed kernel ``K`` for ``weight`` (default: the layer's own), differentiable."""
        weight = self.weight if weight is None else weight
        if self.W_extra is not None and weight is not self.weight:
            raise RuntimeError(
                'DOConv2d with D_mul > M*N cannot compose a kernel from an externally transformed '
                'weight (e.g. ConvModule(efficient_conv_bn_eval=True)); use D_mul = M*N, or fold '
                'the model first with doconv_mm.fold_model')
        return do_conv_kernel(weight, self.D, self.W_extra)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """Evaluation without parameter gradients convolves the cached kernel; everything else
        (training, tracing, torch.compile and export, a transformed ``weight``) composes ``K``
        with PyTorch operators and lets autograd differentiate it."""
        if self.D is None:
            return super()._conv_forward(input, weight, bias)
        if weight is self.weight and not (
                self.training or torch.jit.is_tracing() or is_compiling()
                or torch.is_grad_enabled() and any(p.requires_grad for p in self._do_params())):
            return super()._conv_forward(input, self._cached_kernel(), bias)
        if self.padding_mode == 'replicate' and is_compiling():
            # inductor (torch 2.13) mispredicts the strides of replication_pad2d_backward's
            # output and fails, for nn.Conv2d as well: the same padding by indexing instead
            return nn.functional.conv2d(
                _replicate_pad(input, self._reversed_padding_repeated_twice), self.kernel(weight),
                bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(input, self.kernel(weight), bias)

    def _cached_kernel(self) -> Tensor:
        """The float64-composed kernel, reused while the parameters hold the values it was composed
        from. It is kept while no parameter moved its version counter (in-place edits) or memory
        (replacements) or, where the layer's own parameters are watched, was reached through
        ``.data``, ``detach()`` or ``numpy()``. Otherwise, and at the first forward after a
        ``train()``/``eval()`` call where a parameter is not watched (replaced by a plain
        ``nn.Parameter``), it compares the parameters with a copy, byte for byte, and composes
        again only if they differ."""
        params, cache = self._do_params(), self._cache
        if cache is not None and len(params) != len(cache['copies']):
            cache = None  # a parameter added or removed
        if cache is not None and _untouched(params, cache['refs']) and (
                self._trusted or all(type(p) is _Watched for p in params)):
            return cache['kernel']
        if cache is None or not all(map(_same_bits, params, cache['copies'])):
            with torch.no_grad():
                copies = [p.clone() for p in params]
            cache = dict(copies=copies, kernel=self._exact_kernel())
        cache['refs'] = [(TensorBase.detach(p), p._version, getattr(p, 'reaches', None))
                         for p in params]
        self._cache, self._trusted = cache, True
        return cache['kernel']

    def train(self, mode: bool = True) -> 'DOConv2d':
        """Training never reads the cache, so switching to training frees it; ``eval()`` has the
        next forward compare the parameters with the cache's copy."""
        self._trusted = False
        if mode:
            self._cache = None
        return super().train(mode)

    @torch.no_grad()
    def _exact_kernel(self) -> Tensor:
        """``K`` composed in float64 and cast back: exactly the kernel :meth:`fold` writes."""
        D = None if self.D is None else self.D.double()
        W_extra = None if self.W_extra is None else self.W_extra.double()
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
        return super().extra_repr() + f', D_mul={self.D_mul}'
