"""Simulated int8 inference of a (folded) model: fake quantization of its convolutions and linear
layers through ``torch.ao.quantization``'s observers and fake-quantize operators.

The scheme is the common deployment one (TensorRT's): symmetric int8 on [-127, 127], zero point
0; weights per output channel (scale = max |w_c| / 127), the inputs of every convolution and
linear layer per tensor (scale = max |x| / 127 over calibration batches). Everything else (bias,
BN, adds, pooling, RoIAlign, NMS) stays float. With per-channel scales, quantizing a conv before
or after folding a BatchNorm into it gives the same codes, so BN need not be fused first.
"""
import contextlib
import math
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn as nn
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

from .fold import count_do_convs

QMIN, QMAX = -127, 127  # symmetric int8; -128 unused so that the range is symmetric about 0
QUANTIZED_TYPES = (nn.modules.conv._ConvNd, nn.Linear)  # the layers int8 engines run as GEMMs


def quantized_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The ``(name, module)`` of every convolution and linear layer, in ``named_modules`` order.

    DO-Conv layers hold no deployable kernel until folded: a model with any raises ``ValueError``.
    """
    unfolded = count_do_convs(model)
    if unfolded:
        raise ValueError(f'model holds {unfolded} DO-Conv layers; int8 applies to the deployed '
                         f'kernel: call doconv_mm.fold_model(model) first')
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES)]


def weight_qparams(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel ``(scale, zero_point)``: ``max |w_c| / 127`` (at least float32's eps)
    and 0."""
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, quant_min=QMIN,
                                        quant_max=QMAX, qscheme=torch.per_channel_symmetric)
    observer(weight.detach().float())
    scale, zero_point = observer.calculate_qparams()
    return scale.to(weight.device), zero_point.to(weight.device, torch.int32)


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to per-output-channel symmetric int8 and back (same dtype and shape)."""
    scale, zero_point = weight_qparams(weight)
    q = torch.fake_quantize_per_channel_affine(weight.detach().float(), scale, zero_point, 0,
                                               QMIN, QMAX)
    return q.to(weight.dtype)


def sqnr_db(x: torch.Tensor, x_q: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_q)^2)`` in dB (inf if
    equal)."""
    x, x_q = x.double(), x_q.double()
    noise = (x - x_q).pow(2).sum().item()
    signal = x.pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def weight_stats(weight: torch.Tensor) -> Dict[str, float]:
    """What decides a layer's int8 weight error: its SQNR and its output channels' ranges.

    ``max_abs``: the largest weight; ``peak_to_std``: per output channel ``max |w_c| / std(w_c)``,
    its median and maximum over channels (for zero-mean weights, a channel's SQNR is about
    ``10 log10(12 * 127^2 / peak_to_std^2)``: a long-tailed channel quantizes worse).
    """
    w = weight.detach().double().flatten(1)
    peak = w.abs().amax(dim=1)
    std = w.std(dim=1, unbiased=False) if w.shape[1] > 1 else torch.zeros_like(peak)
    ratio = torch.where(std > 0, peak / std.clamp_min(1e-300), torch.zeros_like(peak))
    return dict(sqnr_db=sqnr_db(weight, fake_quant_weight(weight)), max_abs=peak.max().item(),
                peak_to_std_median=ratio.median().item(), peak_to_std_max=ratio.max().item())


@torch.no_grad()
def quantize_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Replace every conv and linear weight by its int8 fake quantization, in place; returns the
    float weights by layer name (:func:`restore_weights` puts them back)."""
    saved = {}
    for name, layer in quantized_layers(model):
        saved[name] = layer.weight.detach().clone()
        layer.weight.copy_(fake_quant_weight(layer.weight))
    return saved


@torch.no_grad()
def restore_weights(model: nn.Module, saved: Dict[str, torch.Tensor]) -> None:
    layers = dict(quantized_layers(model))
    for name, weight in saved.items():
        layers[name].weight.copy_(weight)


class ActivationQuant:
    """Per-tensor int8 for the input of every conv and linear layer of ``model``.

    ``with aq.calibrate():`` runs record each input's range (``MinMaxObserver``, symmetric);
    ``with aq.quantize():`` runs fake-quantize each input with the calibrated scale (values beyond
    the calibrated range clamp to +-127 steps).
    """

    def __init__(self, model: nn.Module):
        self.layers = quantized_layers(model)
        self.observers = {name: MinMaxObserver(dtype=torch.qint8, quant_min=QMIN, quant_max=QMAX,
                                               qscheme=torch.per_tensor_symmetric)
                          for name, _ in self.layers}

    def qparams(self, name: str) -> Tuple[float, int]:
        scale, zero_point = self.observers[name].calculate_qparams()
        return scale.item(), int(zero_point.item())

    def seen(self) -> List[str]:
        """The layers that have seen an input (a layer the model never runs keeps none)."""
        return [name for name, o in self.observers.items() if torch.isfinite(o.max_val).item()]

    def calibrated(self) -> int:
        return len(self.seen())

    @contextlib.contextmanager
    def _hooks(self, hook) -> Iterator[None]:
        handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def calibrate(self):
        def observe(name):
            def pre_hook(module, args):
                self.observers[name](args[0].detach().float())
            return pre_hook
        return self._hooks(observe)

    def quantize(self):
        params = {name: self.qparams(name) for name in self.seen()}
        if not params:
            raise RuntimeError('ActivationQuant.quantize(): no layer has been calibrated; run the '
                               'model on calibration data inside calibrate() first')

        def fake_quant(name):
            def pre_hook(module, args):
                if name not in params:
                    return None
                scale, zero_point = params[name]
                x = torch.fake_quantize_per_tensor_affine(args[0].float(), scale, zero_point,
                                                          QMIN, QMAX).to(args[0].dtype)
                return (x, *args[1:])
            return pre_hook
        return self._hooks(fake_quant)
