"""The tensor part of a detector or segmentor on ONNX Runtime, in float and in int8.

A model is cut where engines cut it (:func:`parts`): a segmentor (one decode head or a cascade of
them) exports whole, image to logits;
a two-stage detector as backbone + neck + RPN head (image to features and RPN maps) and as the
RoI box head (RoI features to scores and deltas), with RoIAlign, NMS and post-processing left in
PyTorch, where an engine runs them as float plugins. :func:`export` writes each part as ONNX,
:func:`quantize` as int8 QDQ ONNX (onnxruntime's ``quantize_static``), and :func:`running_on`
puts the sessions in place of the modules they replace, so that the config's own test loop and
evaluator score the engine.
"""
import contextlib
import io
import os
import os.path as osp
import statistics
import time
import warnings
from typing import Callable, Dict, Iterator, List, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import atomic
from ..requirements import UsageError, require

OPSET = 17
# onnxruntime's int8 scheme, chosen to be TensorRT's and the simulation's: symmetric int8 weights
# per output channel, activations per tensor (min-max), QDQ nodes where onnxruntime places them
QUANT = dict(per_channel=True, extra_options=dict(ActivationSymmetric=True, WeightSymmetric=True))
SCHEME = ('onnxruntime quantize_static: QDQ, int8 weights symmetric per output channel, int8 '
          'activations symmetric per tensor (MinMax calibration) at the inputs of every operator '
          'onnxruntime quantizes (Conv, Gemm/MatMul, Add, pooling, Resize, Concat, ...); BN folded '
          'into the convolutions at export')
LAYER_OPS = ('Conv', 'Gemm', 'MatMul')  # the layers whose outputs the per-layer SQNR reads


class Part(NamedTuple):
    """One exported graph: ``module(input)`` gives ``outputs``; ``entry`` is the model's module
    whose first input is this graph's input (where calibration and probe inputs are captured)."""
    name: str
    module: nn.Module
    entry: nn.Module
    outputs: List[str]


class Stage(nn.Module):
    """``fn(model, x)`` as a module, for export."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model, x)


def _dense(model, x):
    feats = model.extract_feat(x)
    cls_scores, bbox_preds = model.rpn_head(feats)
    return (*feats, *cls_scores, *bbox_preds)


def decode_heads(model: nn.Module) -> List[nn.Module]:
    """A segmentor's decode heads in order: one, or a cascade's stages (CascadeEncoderDecoder)."""
    heads = model.decode_head
    return list(heads) if isinstance(heads, nn.ModuleList) else [heads]


def _predicts_by_forward(head: nn.Module) -> bool:
    """Whether ``head.predict`` is mmseg's own (``forward``, then ``predict_by_feat``), the method
    :func:`running_on` relies on: heads that predict otherwise (PointRend's subdivision) are not."""
    from mmseg.models.decode_heads.cascade_decode_head import BaseCascadeDecodeHead
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    return type(head).predict in (BaseDecodeHead.predict, BaseCascadeDecodeHead.predict)


def parts(model: nn.Module, levels: int = 0) -> List[Part]:
    """The graphs ``model`` exports as; ``levels``: a detector's feature levels (from a run)."""
    kind = type(model).__name__
    if hasattr(model, 'decode_head') and hasattr(model, 'encode_decode'):  # mmseg EncoderDecoder
        last = decode_heads(model)[-1]
        if not _predicts_by_forward(last):
            raise UsageError(f'--engine onnxruntime: a {kind} whose last decode head is a '
                             f'{type(last).__name__} cannot run on an engine here (its predict is '
                             f'not forward + predict_by_feat); use --engine torch')
        return [Part('net', Stage(model, lambda m, x: m._forward(x)), model.backbone,
                     ['logits'])]
    roi_head = getattr(model, 'roi_head', None)
    if (getattr(model, 'rpn_head', None) is not None and roi_head is not None
            and getattr(roi_head, 'with_bbox', False) and not getattr(roi_head, 'with_mask', False)
            and not isinstance(getattr(roi_head, 'bbox_head', None), (nn.ModuleList, type(None)))):
        names = [f'{k}{i}' for k in ('feat', 'rpn_cls', 'rpn_reg') for i in range(levels)]
        return [Part('dense', Stage(model, _dense), model.backbone, names),
                Part('bbox_head', Stage(model, lambda m, x: m.roi_head.bbox_head(x)),
                     roi_head.bbox_head, ['cls_score', 'bbox_pred'])]
    raise UsageError(f'--engine onnxruntime: a {kind} cannot be cut for an engine here; it runs '
                     f'mmseg encoder-decoder segmentors and two-stage detectors with one RoI box '
                     f'head (Faster R-CNN); use --engine torch')


@contextlib.contextmanager
def capturing(entries: Dict[str, nn.Module]) -> Iterator[Dict[str, List[torch.Tensor]]]:
    """Within the block, every first input of each entry module, by part name."""
    seen = {name: [] for name in entries}
    handles = [m.register_forward_pre_hook(
        lambda _, args, name=name: seen[name].append(args[0].detach().cpu().clone()))
        for name, m in entries.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _dynamic(x: torch.Tensor, name: str) -> Dict[int, str]:
    """Every axis of ``x`` but the channels' (axis 1) is dynamic: batch, height, width, RoIs."""
    return {i: f'{name}_{i}' for i in range(x.dim()) if i != 1}


def export(part: Part, x: torch.Tensor, path: str) -> None:
    """``part`` as a float ONNX graph at ``path`` (written whole or not at all), traced on ``x``.

    The legacy (TorchScript) exporter: it folds BN into the convolutions and keeps the graph
    one operator per PyTorch operator, which is what calibration tools expect."""
    module = part.module
    was = [m.training for m in module.modules()]
    module.eval()
    with torch.no_grad():
        outputs = module(x)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs, )
    dynamic = {'input': _dynamic(x, 'input')}
    dynamic.update({name: _dynamic(o, name) for name, o in zip(part.outputs, outputs)})
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer warnings
            warnings.simplefilter('ignore')
            torch.onnx.export(module, (x, ), buf, dynamo=False, opset_version=OPSET,
                              input_names=['input'], output_names=part.outputs,
                              dynamic_axes=dynamic)
    finally:  # export restores the wrapper's mode recursively: restore every module's own
        for m, training in zip(module.modules(), was):
            m.training = training
    atomic.write(path, buf.getvalue())


def save_array(path: str, x: torch.Tensor) -> None:
    """``x`` as a float32 ``.npy`` file at ``path``, written whole or not at all."""
    buf = io.BytesIO()
    np.save(buf, x.detach().float().cpu().numpy())
    atomic.write(path, buf.getvalue())


def quantize(fp32_path: str, int8_path: str, inputs: Sequence[torch.Tensor]) -> None:
    """The int8 QDQ graph of ``fp32_path`` at ``int8_path``, calibrated on ``inputs``."""
    require('onnxruntime', '--engine onnxruntime')
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {'input': x.float().numpy()}

    atomic.write(int8_path, lambda tmp: quantize_static(
        fp32_path, tmp, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, **QUANT))


class Session:
    """An onnxruntime CPU session on torch tensors: ``session(x)`` is the list of outputs."""

    def __init__(self, path: str, threads: int = 0):
        require('onnxruntime', '--engine onnxruntime')
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only: not the per-node shape-merge warnings
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: torch.Tensor) -> List[torch.Tensor]:
        feed = {'input': x.detach().float().cpu().contiguous().numpy()}
        outs = self.session.run(self.outputs, feed)
        return [torch.from_numpy(o).to(x.device) for o in outs]


@contextlib.contextmanager
def running_on(model: nn.Module, sessions: Dict[str, Session]) -> Iterator[None]:
    """Within the block, ``model``'s exported parts run on ``sessions`` (by part name)."""
    patched = []

    def patch(module, name, fn):
        module.__dict__[name] = fn  # an instance attribute, found before the class's method
        patched.append((module, name))

    if 'net' in sessions:  # segmentor: the image passes to the last decode head, the graph
        heads = decode_heads(model)
        patch(model, 'extract_feat', lambda inputs: inputs)
        for head in heads[:-1]:  # a cascade's earlier stages, which the graph computes
            patch(head, 'forward', lambda inputs, *prev: None)
        patch(heads[-1], 'forward', lambda inputs, *prev: sessions['net'](inputs)[0])
    else:
        held = {}
        bbox_head = model.roi_head.bbox_head
        own_bbox_forward = bbox_head.forward

        def extract_feat(inputs):
            outs = sessions['dense'](inputs)
            n = len(outs) // 3
            held['feats'], held['rpn'] = tuple(outs[:n]), (outs[n:2 * n], outs[2 * n:])
            return held['feats']

        def rpn_forward(feats):
            if feats is not held.get('feats'):
                raise RuntimeError('the RPN head on the engine runs on the features the engine '
                                   'computed with it, not on others')
            return held['rpn']

        def bbox_forward(x):  # no RoIs (no proposals): nothing to compute, PyTorch's empty result
            return own_bbox_forward(x) if x.shape[0] == 0 else tuple(sessions['bbox_head'](x))

        patch(model, 'extract_feat', extract_feat)
        patch(model.rpn_head, 'forward', rpn_forward)
        patch(bbox_head, 'forward', bbox_forward)
    try:
        yield
    finally:
        for module, name in patched:
            del module.__dict__[name]


def layer_outputs(path: str, x: torch.Tensor, folder: str) -> Dict[str, torch.Tensor]:
    """The outputs of every Conv, Gemm and MatMul node of the graph at ``path`` on ``x``, by
    node name (onnxruntime's own tool adds them as graph outputs; the copy goes in ``folder``)."""
    import onnx
    model = onnx.load(path)
    outputs = {n.output[0]: n.name for n in model.graph.node if n.op_type in LAYER_OPS}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outputs if o not in known)
    copy = osp.join(folder, 'layers-' + osp.basename(path))
    atomic.write(copy, model.SerializeToString())
    try:
        session = Session(copy)
        values = session.session.run(list(outputs), {'input': x.float().numpy()})
    finally:
        os.remove(copy)
    return {outputs[o]: torch.from_numpy(v) for o, v in zip(outputs, values)}


def schedule(runs: int, repeats: int) -> List[List[int]]:
    """The order of ``runs`` runs (indices) in each of ``repeats`` repeats, such that in the whole
    sequence, repeat boundaries included, no run follows itself (a session run twice in a row finds
    its weights in cache: biases of 10-20% in model / baseline ratios, measured here): two runs
    alternate strictly; three or more rotate by one each repeat (the last of a repeat is followed
    by the second of the next), so over a multiple of ``runs`` repeats every run is first, second,
    ... equally often. One run has nothing to alternate with."""
    if runs == 2:  # a rotation would be a reversal: B A | A B
        return [[0, 1] for _ in range(repeats)]
    return [[(i + k) % runs for k in range(runs)] for i in range(repeats)]


def latency(runs: Dict[str, Dict[str, Sequence]], repeats: int, warmup: int = 2
            ) -> Dict[str, Dict[str, dict]]:
    """Median and spread of each run's time in ms, the runs interleaved by :func:`schedule` over
    ``warmup`` untimed and ``repeats`` timed repeats; with three or more runs, ``repeats`` is
    rounded up to a multiple of their number, so that each is first equally often.

    ``runs[key][precision]`` is a list of ``(session, input)`` run in order (one model's tensor
    part); returns ``{key: {precision: {median_ms, min_ms, max_ms, repeats}}}``."""
    order = [(key, p) for key, precisions in runs.items() for p in precisions]
    if len(order) > 2:
        repeats = -(-repeats // len(order)) * len(order)
    times = {run: [] for run in order}
    for i, indices in enumerate(schedule(len(order), warmup + repeats)):
        for key, precision in (order[j] for j in indices):
            start = time.perf_counter()
            for session, x in runs[key][precision]:
                session(x)
            if i >= warmup:
                times[key, precision].append(1e3 * (time.perf_counter() - start))
    return {key: {p: dict(median_ms=statistics.median(times[key, p]), min_ms=min(times[key, p]),
                          max_ms=max(times[key, p]), repeats=len(times[key, p]))
                  for p in precisions}
            for key, precisions in runs.items()}
