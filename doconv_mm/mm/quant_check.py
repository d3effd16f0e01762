"""Does a release survive int8? The config's own evaluation in fp32 and in int8, simulated or on
an engine, and what decides the int8 error, for a model and optionally a baseline beside it.

:func:`quant_check` is the whole job (the ``quant_check.py`` command). Per model: the checkpoint
is read and checked against the config's model; DO-Conv layers are folded (a release has none);
the config's test loop (mmengine's, with the config's evaluator) runs in fp32, then in int8:
``engine='torch'`` simulates it (:mod:`doconv_mm.core.int8`: int8 weights, then weights and
activations, observers calibrated on training images through the test pipeline);
``engine='onnxruntime'`` exports the tensor part to ONNX, quantizes it with onnxruntime and runs
the loop on the fp32 and the int8 sessions (:mod:`.onnx_engine`), and times them. The
checkpoint's ``state_dict`` is what is evaluated, as ``fold_ckpt`` folds it: the config's custom
hooks (EMA) are not run.
"""
import copy
import itertools
import json
import math
import os
import os.path as osp
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.utils import ProgressBar

from ..atomic import write_files
from ..core import count_do_convs, fold_model
from ..core.int8 import (ActivationQuant, fake_quant_weight, quantize_weights, quantized_layers,
                         sqnr_db, weight_stats)
from ..requirements import UsageError, check_input, require
from . import onnx_engine
from .release import CheckpointMismatch, check_fits, probe, read_checkpoint
from .runtime import build_runner, config_dicts, load_config

HEADLINE = ('coco/bbox_mAP', 'mIoU')  # mmdet's and mmseg's headline metrics, first found is shown
# the modes of each engine beside PyTorch fp32, and the mode each one's drop is measured from: the
# export's own error (ONNX fp32 from PyTorch fp32) apart from int8's (ONNX int8 from ONNX fp32)
MODES = {'torch': {'int8_w': 'int8 weights', 'int8_wa': 'int8 weights + activations'},
         'onnxruntime': {'onnx_fp32': 'ONNX fp32', 'onnx_int8': 'ONNX int8'}}
DROP_FROM = {'int8_w': 'fp32', 'int8_wa': 'fp32', 'onnx_fp32': 'fp32', 'onnx_int8': 'onnx_fp32'}
LABEL = dict(fp32='PyTorch fp32', onnx_fp32='ONNX fp32')
SCHEME = {'torch': dict(
    weights='int8, symmetric [-127, 127], per output channel, scale max|w_c|/127; the weight '
            'SQNR is that of the kernels as deployed: BN folded into the conv it follows',
    activations='int8, symmetric [-127, 127], per tensor, the input of every conv and linear layer,'
                ' scale max|x|/127 over the calibration images (MinMaxObserver)',
    float='bias, BN, adds, pooling, RoI ops, NMS and the heads\' post-processing'),
    'onnxruntime': dict(engine=onnx_engine.SCHEME,
                        float='RoI ops, NMS and the heads\' post-processing (in PyTorch)')}


class QuantCheckError(UsageError):
    """The check cannot run on these inputs."""


class ProgressBarHook(Hook):
    """mmengine's progress bar over a test loop's batches."""

    def before_test_epoch(self, runner) -> None:
        self.bar = ProgressBar(len(runner.test_dataloader))

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.bar.update()

    def after_test_epoch(self, runner, metrics=None) -> None:
        print(flush=True)


def calibration_dataloader(cfg) -> dict:
    """The training set read through the test pipeline (no augmentation), batch 1, a fixed
    shuffle: calibration images come from training data, preprocessed as at deployment."""
    dataset = copy.deepcopy(cfg.train_dataloader.dataset)
    pipeline = cfg.test_dataloader.dataset.pipeline
    for node in config_dicts(dataset):  # also inside ConcatDataset / RepeatDataset wrappers
        if 'pipeline' in node:
            node['pipeline'] = copy.deepcopy(pipeline)
    loader = copy.deepcopy(cfg.test_dataloader)
    loader.update(dataset=dataset, batch_size=1, num_workers=0, persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=True, seed=0))
    return loader


def headline(metrics: Dict[str, float]) -> str:
    for name in HEADLINE:
        if name in metrics:
            return name
    return next(iter(metrics))


def check_model(config: str, checkpoint: str, *, role: str, calib: int, work_dir: str,
                engine: str = 'torch', cfg_options: Optional[dict] = None, log=print) -> dict:
    """One model's part of the report (see :func:`quant_check`); with the ONNX engine, its
    ``'_timing'`` entry holds what :func:`onnx_latency` runs (not written)."""
    cfg = load_config(config, 'none', cfg_options, osp.join(work_dir, role))
    cfg.load_from, cfg.resume, cfg.custom_hooks = None, False, []
    cfg.experiment_name = f'quant_check-{role}-{time.strftime("%Y%m%d_%H%M%S")}'
    ckpt = read_checkpoint(checkpoint)
    state_dict = ckpt.get('state_dict', ckpt)
    runner = build_runner(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    try:
        check_fits(model, state_dict)
    except CheckpointMismatch as e:
        raise QuantCheckError(f'CHECKPOINT {checkpoint!r} vs CONFIG {config!r}: {e}') from e
    model.load_state_dict(state_dict, strict=False)
    folded = count_do_convs(model)
    fold_model(model)
    model.eval()
    log(f'[{role}] {osp.basename(checkpoint)}: {folded} DO-Conv layers folded, '
        f'{len(quantized_layers(model))} conv and linear layers to quantize')
    runner.register_hook(ProgressBarHook(), 'LOWEST')

    runner.call_hook('before_run')  # what Runner.test does, with the checkpoint loaded above
    log(f'[{role}] evaluating in fp32 (PyTorch)')
    metrics = dict(fp32=runner.test_loop.run())
    # the raw outputs on the first test image: a continuous measure of the int8 error
    with torch.no_grad():
        x = model.data_preprocessor(next(iter(runner.test_dataloader)), False)['inputs'][:1]
    loader = runner.build_dataloader(calibration_dataloader(cfg))
    n = min(calib, len(loader))
    calibration = itertools.islice(loader, n)
    check = simulate if engine == 'torch' else on_engine
    result = check(runner, model, cfg, x, calibration, n, osp.join(work_dir, role), role, log)
    runner.call_hook('after_run')

    metrics.update(result.pop('metrics'))
    metrics = {mode: {k: float(v) for k, v in m.items()} for mode, m in metrics.items()}
    name = headline(metrics['fp32'])
    return dict(config=config, checkpoint=checkpoint, do_conv_layers_folded=folded,
                calib_images=n, metric=name, metrics=metrics,
                drop={mode: metrics[DROP_FROM[mode]][name] - metrics[mode][name]
                      for mode in MODES[engine]},
                drop_from={mode: DROP_FROM[mode] for mode in MODES[engine]},
                **result)


def _calibrate(model, batches, n: int, log, role: str) -> None:
    log(f'[{role}] calibrating activations on {n} training images')
    bar = ProgressBar(n)
    with torch.no_grad():
        for batch in batches:
            model.test_step(batch)
            bar.update()
    print(flush=True)


def conv_bn_pairs(model: nn.Module,
                  run: Callable[[], object]) -> Dict[str, Tuple[str, nn.Module]]:
    """``{conv name: (BN name, BN)}`` for every conv whose output a BatchNorm with running
    statistics reads directly in ``run()`` (a forward pass of ``model``), always the same one: the
    pairs an exporter fuses (BN folded into the conv's kernel and bias), found by data flow, not by
    module order."""
    names = {m: n for n, m in model.named_modules()}
    made, read = {}, {}  # id(conv output) -> (conv, output); conv -> BNs that read its output

    def conv_hook(conv, args, out):
        made[id(out)] = (conv, out)  # the output is kept, so its id is not reused in the run

    def bn_hook(bn, args):
        conv, out = made.get(id(args[0]), (None, None))
        if out is args[0] and bn.running_var is not None:
            read.setdefault(conv, set()).add(bn)

    handles = [m.register_forward_hook(conv_hook) for m in model.modules()
               if isinstance(m, nn.modules.conv._ConvNd)]
    handles += [m.register_forward_pre_hook(bn_hook) for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    pairs = {}
    for conv, bns in read.items():
        if len(bns) == 1:  # a conv run several times into different BNs has no single fold
            (bn, ) = bns
            pairs[names[conv]] = (names[bn], bn)
    return pairs


def deployed_stats(conv: nn.Module, bn: Optional[nn.Module]) -> dict:
    """:func:`~doconv_mm.core.int8.weight_stats` of ``conv``'s kernel as an engine runs it, with
    ``bn`` folded in: ``a_c w_c``, ``a = gamma / sqrt(var + eps)`` per output channel.

    Its SQNR is read from the unfolded kernel's codes, which folding only rescales (symmetric,
    per channel: ``Q(a_c w_c) = a_c Q(w_c)``), so each channel's error counts with weight
    ``a_c^2`` and a channel that BN all but zeroes is not rounded at float32's smallest
    quantization step (the observer's floor), where an engine's exact ``max |w_c| / 127`` is not."""
    w = conv.weight.detach()
    if bn is None:
        return weight_stats(w)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    a = (gamma.double() / (bn.running_var.double() + bn.eps).sqrt()).view(
        -1, *[1] * (w.dim() - 1))
    deployed = w.double() * a
    stats = weight_stats(deployed.to(w.dtype))
    stats['sqnr_db'] = sqnr_db(deployed, fake_quant_weight(w).double() * a)
    return stats


def simulate(runner, model, cfg, x, calibration, n, work_dir, role, log) -> dict:
    """Simulated int8 (:mod:`doconv_mm.core.int8`): int8 weights, then weights and activations.
    The per-layer weight figures are those of the kernels as deployed, BN folded."""
    held = {}
    bns = conv_bn_pairs(model, lambda: held.setdefault('reference', probe(model, cfg, x=x)))
    reference = held['reference']
    layers = []
    for name, m in quantized_layers(model):
        bn_name, bn = bns.get(name, (None, None))
        layers.append(dict(name=name, shape=list(m.weight.shape), bn=bn_name,
                           **deployed_stats(m, bn)))
    activations = ActivationQuant(model)
    with activations.calibrate():
        _calibrate(model, calibration, n, log, role)
    metrics, outputs = {}, {}
    quantize_weights(model)
    log(f'[{role}] evaluating with int8 weights')
    metrics['int8_w'] = runner.test_loop.run()
    outputs['int8_w'] = output_sqnr(reference, probe(model, cfg, x=x))
    log(f'[{role}] evaluating with int8 weights and activations')
    with activations.quantize():
        metrics['int8_wa'] = runner.test_loop.run()
        outputs['int8_wa'] = output_sqnr(reference, probe(model, cfg, x=x))
    return dict(metrics=metrics, output_sqnr_db=outputs, weights=summarize(layers),
                layers=layers)


def on_engine(runner, model, cfg, x, calibration, n, work_dir, role, log) -> dict:
    """onnxruntime (:mod:`.onnx_engine`): the tensor part exported, evaluated in fp32 and int8."""
    from . import onnx_engine as engine
    with torch.no_grad():
        levels = len(model.extract_feat(x)) if hasattr(model, 'rpn_head') else 0
    parts = engine.parts(model, levels)
    entries = {p.name: p.entry for p in parts}
    with engine.capturing(entries) as probe_inputs:
        reference = probe(model, cfg, x=x)
    probe_inputs = {name: inputs[0] for name, inputs in probe_inputs.items()}
    with engine.capturing(entries) as calib_inputs:
        _calibrate(model, calibration, n, log, role)
    folder = osp.join(work_dir, 'onnx')
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for part in parts:
        fp32, int8 = (osp.join(folder, f'{part.name}.{p}.onnx') for p in ('fp32', 'int8'))
        log(f'[{role}] exporting {part.name} to {fp32}, quantizing to {int8}')
        engine.export(part, probe_inputs[part.name], fp32)
        engine.quantize(fp32, int8, calib_inputs[part.name])
        # the input the latency is timed on (trtexec --loadInputs reads such a file)
        x_path = osp.join(folder, f'{part.name}.input.npy')
        engine.save_array(x_path, probe_inputs[part.name])
        paths[part.name] = dict(fp32=fp32, int8=int8, input=x_path)
    metrics, outputs, layers, timing = {}, {}, [], {}
    raw = dict(fp32=reference)  # the raw outputs of each mode, each measured from its own
    for precision in ('fp32', 'int8'):
        mode = f'onnx_{precision}'
        sessions = {name: engine.Session(p[precision]) for name, p in paths.items()}
        log(f'[{role}] evaluating on onnxruntime, {precision}')
        with engine.running_on(model, sessions):
            metrics[mode] = runner.test_loop.run()
            raw[mode] = probe(model, cfg, x=x)
        outputs[mode] = output_sqnr(raw[DROP_FROM[mode]], raw[mode])
        timing[precision] = [(sessions[p.name], probe_inputs[p.name]) for p in parts]
    for part in parts:  # every conv and linear layer's output, int8 against fp32
        x_part = probe_inputs[part.name]
        fp32 = engine.layer_outputs(paths[part.name]['fp32'], x_part, folder)
        int8 = engine.layer_outputs(paths[part.name]['int8'], x_part, folder)
        layers += [dict(name=f'{part.name}:{node}', shape=list(fp32[node].shape),
                        sqnr_db=sqnr_db(fp32[node], int8[node])) for node in fp32 if node in int8]
    return dict(metrics=metrics, output_sqnr_db=outputs,
                onnx_fp32_max_rel_diff=max_rel_diff(reference, raw['onnx_fp32']),
                onnx=paths, layer_outputs=summarize(layers), layers=layers, _timing=timing)


def max_rel_diff(reference: List[torch.Tensor], other: List[torch.Tensor]) -> float:
    """``max |a - b| / max |a|`` over all outputs (as fold_ckpt's verification reads them)."""
    a = torch.cat([t.flatten() for t in reference]).double()
    b = torch.cat([t.flatten() for t in other]).double()
    return float((a - b).abs().max() / a.abs().max())


def output_sqnr(reference: List[torch.Tensor], quantized: List[torch.Tensor]) -> float:
    """SQNR in dB of the int8 model's raw outputs against the fp32 model's, over all of them."""
    return sqnr_db(torch.cat([t.flatten() for t in reference]),
                   torch.cat([t.flatten() for t in quantized]))


def summarize(layers: List[dict]) -> dict:
    """The weight SQNR over layers: median, and the worst layer."""
    sqnr = [layer['sqnr_db'] for layer in layers]
    worst = layers[sqnr.index(min(sqnr))]
    return dict(layers=len(layers), sqnr_db_median=statistics.median(sqnr),
                sqnr_db_min=worst['sqnr_db'], worst_layer=worst['name'])


def check_out(out: str, inputs: List[str]) -> str:
    if not out.endswith('.md'):
        raise QuantCheckError(f'--out {out!r} must end with .md (the JSON is written beside it)')
    json_out = out[:-len('.md')] + '.json'
    real = {osp.realpath(p) for p in inputs}
    for path in (out, json_out):
        if osp.realpath(path) in real:
            raise QuantCheckError(f'--out: {path!r} is one of the inputs; choose another path')
    return json_out


def quant_check(config: str, checkpoint: str, *, baseline: Optional[List[str]] = None,
                calib: int = 32, engine: str = 'torch', repeats: int = 20,
                work_dir: Optional[str] = None, out: Optional[str] = None,
                cfg_options: Optional[dict] = None, log=print) -> dict:
    """Check ``checkpoint`` (a release or a DO-Conv checkpoint of ``config``) and, with
    ``baseline=[CONFIG, CHECKPOINT]``, a baseline the same way, on ``engine`` (``'torch'``: the
    simulation; ``'onnxruntime'``: the exported graphs, timed ``repeats`` times each, the models
    alternating); write ``out`` (Markdown) and the JSON beside it, each whole or not at all;
    returns the report. Raises :class:`~doconv_mm.requirements.UsageError` naming the argument
    for inputs that cannot be used, and ``MissingPackageError`` for a missing onnxruntime.
    """
    if calib < 1:
        raise QuantCheckError(f'--calib {calib}: the number of calibration images must be >= 1')
    if engine not in MODES:
        raise QuantCheckError(f'--engine {engine!r}: choose one of {", ".join(MODES)}')
    if repeats < 1:
        raise QuantCheckError(f'--repeats {repeats}: the number of timed runs must be >= 1')
    if baseline is not None and len(baseline) != 2:
        raise QuantCheckError(f'--baseline takes CONFIG CHECKPOINT, got {len(baseline)} values')
    if engine == 'onnxruntime':
        require('onnx', '--engine onnxruntime')
        require('onnxruntime', '--engine onnxruntime')
    if work_dir is None:
        work_dir = osp.join('work_dirs', 'quant_check', osp.splitext(osp.basename(config))[0])
    out = out or osp.join(work_dir, 'quant_check.md')
    inputs = [config, checkpoint, *(baseline or [])]
    for path, name in zip(inputs, ['CONFIG', 'CHECKPOINT', '--baseline CONFIG',
                                   '--baseline CHECKPOINT']):
        check_input(path, name)
    json_out = check_out(out, inputs)
    report = dict(engine=engine, scheme=SCHEME[engine], calib=calib, models={})
    jobs = [('model', config, checkpoint)] + ([('baseline', *baseline)] if baseline else [])
    for role, cfg_path, ckpt_path in jobs:
        report['models'][role] = check_model(cfg_path, ckpt_path, role=role, calib=calib,
                                             work_dir=work_dir, engine=engine,
                                             cfg_options=cfg_options, log=log)
    if engine == 'onnxruntime':
        timing = {role: m.pop('_timing') for role, m in report['models'].items()}
        log(f'timing the sessions: {repeats} runs each, no session twice in a row')
        report['latency'] = onnx_engine.latency(timing, repeats)
        repeats = report['latency']['model']['fp32']['repeats']  # rounded up to a multiple
        report.update(threads=torch.get_num_threads(), repeats=repeats)
        if baseline:
            report['latency_ratio'] = {
                p: report['latency']['model'][p]['median_ms']
                / report['latency']['baseline'][p]['median_ms'] for p in ('fp32', 'int8')}
    text = markdown(report)
    write_files({out: text, json_out: json.dumps(_finite(report), indent=1)})
    log(text)
    log(f'wrote {out} and {json_out}')
    return report


def _finite(node):
    """``node`` with infinite floats (an SQNR of exactly representable weights) as None: JSON."""
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_finite(v) for v in node]
    return None if isinstance(node, float) and not math.isfinite(node) else node


def _fmt(x: float, digits: int, sign: str = '') -> str:
    return f'{round(x, digits) + 0.0:{sign}.{digits}f}'  # + 0.0: no "-0.0000"


def markdown(report: dict) -> str:
    models, engine = report['models'], report['engine']
    metric = models['model']['metric']
    onnx = engine == 'onnxruntime'
    modes = MODES[engine]
    header = (['model', 'checkpoint', 'DO-Conv layers folded', f'{metric}, fp32 (PyTorch)']
              + [f'{metric}, {label} (drop from {LABEL[DROP_FROM[mode]]})'
                 for mode, label in modes.items()])
    if onnx:
        header += ['raw outputs: ONNX fp32 max rel. diff from PyTorch fp32, ONNX int8 SQNR dB '
                   'from ONNX fp32',
                   'layer outputs SQNR dB, int8: median, worst layer',
                   'latency ms, fp32, int8 (median)']
    else:
        header += ['raw outputs SQNR dB: int8 weights, + activations',
                   'weight SQNR dB (kernels as deployed, BN folded): median layer, worst layer']
    lines = ['| ' + ' | '.join(header) + ' |', '| --- ' * len(header) + '|']
    for role, m in models.items():
        fp32 = m['metrics']['fp32'][m['metric']]
        digits = 4 if abs(fp32) <= 1 else 2  # mAP in [0, 1], mIoU in percent
        cells = [role, osp.basename(m['checkpoint']), str(m['do_conv_layers_folded']),
                 _fmt(fp32, digits)] + [
            f'{_fmt(m["metrics"][mode][m["metric"]], digits)} (drop '
            f'{_fmt(m["drop"][mode], digits, "+")})' for mode in modes]
        sqnr = m['output_sqnr_db']
        w = m['layer_outputs' if onnx else 'weights']
        if onnx:
            t = report['latency'][role]
            cells += [f'{m["onnx_fp32_max_rel_diff"]:.1e}, {sqnr["onnx_int8"]:.1f}',
                      f'{w["sqnr_db_median"]:.1f}, {w["sqnr_db_min"]:.1f} ({w["worst_layer"]})',
                      f'{t["fp32"]["median_ms"]:.1f}, {t["int8"]["median_ms"]:.1f}']
        else:
            cells += [f'{sqnr["int8_w"]:.1f}, {sqnr["int8_wa"]:.1f}',
                      f'{w["sqnr_db_median"]:.1f}, {w["sqnr_db_min"]:.1f} ({w["worst_layer"]})']
        lines.append('| ' + ' | '.join(cells) + ' |')
    n = models['model']['calib_images']
    scheme = report['scheme']
    if onnx:
        lines += ['', f'Raw outputs: the features, dense heads and RoI head on fixed boxes '
                  f'(detectors) or the logits (segmentors) on the first test image: the fp32 '
                  f'graph against PyTorch fp32 (the export\'s own error), the int8 graph against '
                  f'the fp32 graph (int8\'s). Metric drops likewise: ONNX fp32 from PyTorch fp32, '
                  f'ONNX int8 from ONNX fp32. Layer outputs: every Conv, Gemm and MatMul node\'s '
                  f'output on the same input, int8 session against fp32 session. Calibration: '
                  f'{n} training images (test pipeline). {scheme["engine"]}; float: '
                  f'{scheme["float"]}. Latency: the exported graphs on the first test image, '
                  f'onnxruntime CPU, {report["threads"]} threads, {report["repeats"]} runs '
                  f'each, interleaved so that no session runs twice in a row, medians (min and '
                  f'max in the JSON).', '']
        if 'latency_ratio' in report:
            r = report['latency_ratio']
            lines += [f'Latency, model / baseline: fp32 {r["fp32"]:.3f}, int8 {r["int8"]:.3f}.',
                      '']
    else:
        lines += ['', f'Raw outputs: the features, dense heads and RoI head on fixed boxes '
                  f'(detectors) or the logits (segmentors) on the first test image, int8 against '
                  f'fp32. Calibration: {n} training images (test pipeline). Weights: '
                  f'{scheme["weights"]}; activations: {scheme["activations"]}; float: '
                  f'{scheme["float"]}.', '']
    base = {b['name']: b for b in models['baseline']['layers']} if 'baseline' in models else {}
    own = models['model']['layers']
    what = 'output' if onnx else 'weight'
    if base:
        paired = [a['sqnr_db'] - base[a['name']]['sqnr_db'] for a in own if a['name'] in base]
        paired = [d for d in paired if math.isfinite(d)]
        if paired:
            lines += [f'{what.capitalize()} SQNR, model - baseline, over the {len(paired)} '
                      f'layers both hold: median {_fmt(statistics.median(paired), 2, "+")} dB, '
                      f'lower in {sum(d < 0 for d in paired)} layers, higher in '
                      f'{sum(d > 0 for d in paired)}.', '']
    lines += [f'The 10 layers of the model with the lowest {what} SQNR:', '']
    if onnx:
        lines += ['| layer (graph:node) | output shape | SQNR dB | baseline SQNR dB |',
                  '| --- ' * 4 + '|']
    else:
        lines += ['| layer | shape | SQNR dB | baseline SQNR dB | max abs | peak/std median | '
                  'peak/std max |', '| --- ' * 7 + '|']
    for a in sorted(own, key=lambda a: a['sqnr_db'])[:10]:
        b = base.get(a['name'])
        row = (f'| {a["name"]} | {"x".join(map(str, a["shape"]))} | {a["sqnr_db"]:.1f} | '
               f'{"-" if b is None else format(b["sqnr_db"], ".1f")} |')
        if not onnx:
            row += (f' {a["max_abs"]:.3g} | {a["peak_to_std_median"]:.1f} | '
                    f'{a["peak_to_std_max"]:.1f} |')
        lines.append(row)
    return '\n'.join(lines) + '\n'
