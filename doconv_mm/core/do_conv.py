"""DO-Conv: depthwise over-parameterized convolution (Cao et al., arXiv 2006.12030), as a drop-in
``nn.Conv2d`` that holds the parameters and loads plain checkpoints; the composition
``K = (D + I) W`` is :mod:`.compose`, run on every forward in every mode (no cache: a release is
folded, :meth:`DOConv2d.fold` and :func:`~doconv_mm.core.fold.fold_model`).

``D`` belongs to the *global* input channel for every ``groups`` (DO-Conv: groups=1, DO-DConv:
groups=C_in, DO-GConv: otherwise). ``W`` is stored as the layer's ordinary ``weight`` (its first MN
columns, in kernel shape) plus ``W_extra`` (the other ``D_mul - MN``, only when D_mul > MN), and
``D`` starts at zero: a plain conv's state dict is a complete DO-Conv state, training starts
exactly at the plain convolution, and with D_mul = MN a per-output-channel rescaling of ``weight``
(mmcv's ``fuse_conv_bn``, efficient conv-bn eval) rescales ``K`` the same way.
"""
import warnings
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ._compat import is_compiling
from .compose import do_conv_kernel


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
    kernels, which have no ``D`` and are plain convolutions). Every forward composes ``K`` from
    the parameters as they are; :meth:`fold` returns the equivalent ``nn.Conv2d``.
    ``keep_kernel`` is accepted for old configs and ignored.
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
        self.D = nn.Parameter(torch.zeros(in_channels, mn, self.D_mul, **factory)) \
            if mn > 1 else None
        self.W_extra = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, self.D_mul - mn, **factory)) \
            if self.D_mul > mn else None
        self._init_do_params()
        self._note_pair()

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

    def _registered(self) -> Tuple[Optional[int], Optional[int]]:
        """The ``id`` of the registered ``nn.Parameter`` objects ``weight`` and ``W_extra`` (None
        for anything else: a parametrization, spectral norm, the plain tensors of
        ``functional_call``)."""
        return tuple(id(p) if isinstance(p, nn.Parameter) else None
                     for p in map(self._parameters.get, ('weight', 'W_extra')))

    def _note_pair(self) -> None:
        """Remember which parameter objects make up ``W`` (by ``id``, holding no reference)."""
        self._pair = self._registered()

    def _check_pair(self) -> None:
        """Refuse a ``weight`` parameter replaced by another while ``W_extra`` was kept: mmcv's
        ``fuse_conv_bn`` rescales ``weight`` alone, which rescales ``K`` only when D_mul == M*N.
        Loaders that replace every parameter (``load_state_dict(assign=True)``, FSDP2) replace
        both, and in-place writes, ``.data``, ``.to()`` and ``swap_tensors`` neither."""
        (old_w, old_x), (new_w, new_x) = self._pair, self._registered()
        if None not in (old_w, new_w, new_x) and old_w != new_w and old_x == new_x:
            raise RuntimeError(
                'DOConv2d with D_mul > M*N: its weight parameter was replaced but not its W_extra '
                '(e.g. by mmcv fuse_conv_bn), which would drop W_extra from the kernel; fold the '
                'model first with doconv_mm.fold_model')
        self._pair = (new_w, new_x)

    def __setstate__(self, state) -> None:
        # unpickled or deep-copied: the new objects make up W
        super().__setstate__(state)
        self._note_pair()

    def kernel(self, weight: Optional[Tensor] = None) -> Tensor:
        """The composed kernel ``K`` for ``weight`` (default: the layer's own), differentiable."""
        if weight is None:
            weight = self.weight  # read once: a parametrization computes it at every read
        elif self.W_extra is not None and weight is not self.weight:
            raise RuntimeError(
                'DOConv2d with D_mul > M*N cannot compose a kernel from an externally transformed '
                'weight (e.g. ConvModule(efficient_conv_bn_eval=True)); use D_mul = M*N, or fold '
                'the model first with doconv_mm.fold_model')
        return do_conv_kernel(weight, self.D, self.W_extra)

    def forward(self, input: Tensor) -> Tensor:
        """Compose ``K`` with PyTorch operators (autograd differentiates it; tracers, compilers
        and FLOP counters see it) and convolve as ``nn.Conv2d`` does."""
        if self.D is None:
            return super().forward(input)
        return self._convolve(input, self.kernel(), self.bias)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """For callers that convolve with a transformed ``weight`` in place of the layer's own
        (mmcv's efficient conv-bn evaluation): ``K`` composed from it."""
        if self.D is None:
            return super()._conv_forward(input, weight, bias)
        return self._convolve(input, self.kernel(weight), bias)

    def _convolve(self, input: Tensor, K: Tensor, bias: Optional[Tensor]) -> Tensor:
        if is_compiling():
            if self.padding_mode == 'replicate':
                # inductor (torch 2.13) mispredicts the strides of replication_pad2d_backward's
                # output and fails, for nn.Conv2d as well: the same padding by indexing instead
                return nn.functional.conv2d(
                    _replicate_pad(input, self._reversed_padding_repeated_twice), K, bias,
                    self.stride, 0, self.dilation, self.groups)
        else:
            self._check_pair()
        return super()._conv_forward(input, K, bias)

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
        D = None if self.D is None else self.D.double()
        W_extra = None if self.W_extra is None else self.W_extra.double()
        conv.weight.copy_(do_conv_kernel(self.weight.double(), D, W_extra))
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        conv.weight.requires_grad_(self.weight.requires_grad)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', D_mul={self.D_mul}'
