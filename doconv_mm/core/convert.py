"""Model-level conversion, the inverse of :func:`~doconv_mm.core.fold.fold_model`: every plain
``nn.Conv2d`` with a kernel larger than 1x1 becomes a :class:`DOConv2d` with the same arguments,
weights, device and dtype (DO-Conv for groups=1, DO-DConv for groups=C_in, DO-GConv otherwise).

``D`` starts at zero, so the converted model computes exactly what the original computes; train it,
then :func:`fold_model` gives the plain network back.
"""
import fnmatch
import logging
import warnings
from collections import Counter
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from .do_conv import DOConv2d

logger = logging.getLogger('doconv_mm')


def conv_kind(conv: nn.Conv2d) -> str:
    """'DO-Conv', 'DO-DConv' or 'DO-GConv': what a k x k ``conv`` becomes."""
    if conv.groups == 1:
        return 'DO-Conv'
    return 'DO-DConv' if conv.groups == conv.in_channels else 'DO-GConv'


@torch.no_grad()
def to_do_conv(conv: nn.Conv2d, D_mul: Optional[int] = None) -> DOConv2d:
    """The :class:`DOConv2d` that computes what ``conv`` computes (``D = 0``): same arguments,
    weights, device, dtype, training mode, and ``requires_grad`` (a frozen weight freezes ``D``)."""
    w = conv.weight
    do = DOConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                  device=w.device, dtype=w.dtype, D_mul=D_mul)
    do.weight.copy_(w)
    if conv.bias is not None:
        do.bias.copy_(conv.bias)
        do.bias.requires_grad_(conv.bias.requires_grad)
    for p in (do.weight, do.D, do.W_extra):
        if p is not None:
            p.requires_grad_(w.requires_grad)
    return do.train(conv.training)


def _matches(name: str, patterns: Optional[Sequence[str]]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def convert(model: nn.Module, *, D_mul: Optional[int] = None,
            include: Optional[Iterable[str]] = None, exclude: Optional[Iterable[str]] = None,
            min_kernel: int = 2) -> nn.Module:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` whose larger kernel side is at least
    ``min_kernel`` by the equivalent :class:`DOConv2d`; returns the model.

    Args:
        D_mul: the layers' ``D_mul`` (default M*N).
        include: fnmatch patterns of module names (``'backbone.*'``); only matching convs are
            converted. Default: every conv.
        exclude: patterns of module names left as they are.
        min_kernel: convs whose kernel is smaller than this on both sides stay (1x1 always stay).

    Subclasses of ``nn.Conv2d`` (weight-standardised convs, mmcv's wrappers, DCN, ...) compute
    something else with their weight and are left alone, with a warning naming them. A pattern
    that matches no module raises ``ValueError`` before anything changes. The count of converted
    layers by kind is logged (logger ``'doconv_mm'``, level INFO).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    if isinstance(model, nn.Conv2d):
        raise TypeError('model is a single conv, which cannot be replaced in place; use '
                        'doconv_mm.core.convert.to_do_conv(conv)')
    if not isinstance(min_kernel, int) or min_kernel < 2:
        raise ValueError(f'min_kernel must be an int >= 2 (1x1 convs have no depthwise stage), '
                         f'got {min_kernel!r}')
    include, exclude = (None if p is None else [p] if isinstance(p, str) else list(p)
                        for p in (include, exclude))
    names = [name for name, _ in model.named_modules(remove_duplicate=False)]
    for arg, patterns in (('include', include), ('exclude', exclude)):
        unmatched = [p for p in patterns or () if not any(_matches(n, [p]) for n in names)]
        if unmatched:
            raise ValueError(f'{arg} pattern(s) {unmatched} match no module of the model; '
                             f'module names look like {names[1:4]}')

    chosen: Dict[int, nn.Conv2d] = {}
    skipped = []
    for name, m in model.named_modules(remove_duplicate=False):  # shared: every name
        if not isinstance(m, nn.Conv2d) or isinstance(m, DOConv2d):
            continue
        if (include is not None and not _matches(name, include)) or _matches(name, exclude):
            continue
        if max(m.kernel_size) < min_kernel:
            continue
        if type(m) is not nn.Conv2d:
            skipped.append(f'{name} ({type(m).__module__}.{type(m).__qualname__})')
            continue
        chosen[id(m)] = m
    if skipped:
        warnings.warn(f'convert: {len(skipped)} conv(s) of a subclass of nn.Conv2d left as they '
                      f'are (their forward is their own): {", ".join(skipped)}', stacklevel=2)

    new = {key: to_do_conv(conv, D_mul) for key, conv in chosen.items()}  # all built, then swapped
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):  # named_children skips repeats
            if id(child) in new:
                setattr(parent, child_name, new[id(child)])
    kinds = Counter(conv_kind(conv) for conv in chosen.values())
    logger.info('convert: %d conv layers -> %s', len(chosen),
                ', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items())) or 'none')
    return model
