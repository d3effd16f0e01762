"""Does a release survive int8? The config's own evaluation in fp32 and with simulated int8, and
the weight statistics that decide the int8 error, for a model and optionally a baseline beside it.

:func:`quant_check` is the whole job (the ``quant_check.py`` command). Per model: the checkpoint
is read and checked against the config's model; DO-Conv layers are folded (a release has none);
then the config's test loop (mmengine's, with the config's evaluator) runs three times: fp32,
int8 weights, int8 weights and activations (observers calibrated on training images through the
test pipeline). The arithmetic is :mod:`doconv_mm.core.int8`. The checkpoint's ``state_dict`` is
what is evaluated, as ``fold_ckpt`` folds it: the config's custom hooks (EMA) are not run.
"""
import copy
import itertools
import json
import math
import os.path as osp
import statistics
import time
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.utils import ProgressBar

from ..core import count_do_convs, fold_model
from ..core.int8 import (ActivationQuant, quantize_weights, quantized_layers, sqnr_db,
                         weight_stats)
from ..requirements import UsageError, check_input
from .release import CheckpointMismatch, check_fits, probe, read_checkpoint, write_files
from .runtime import build_runner, config_dicts, load_config

HEADLINE = ('coco/bbox_mAP', 'mIoU')  # mmdet's and mmseg's headline metrics, first found is shown
MODES = {'fp32': 'fp32', 'int8_w': 'int8 weights', 'int8_wa': 'int8 weights + activations'}
SCHEME = dict(
    weights='int8, symmetric [-127, 127], per output channel, scale max|w_c|/127',
    activations='int8, symmetric [-127, 127], per tensor, the input of every conv and linear layer,'
                ' scale max|x|/127 over the calibration images (MinMaxObserver)',
    float='bias, BN, adds, pooling, RoI ops, NMS and the heads\' post-processing')


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
                cfg_options: Optional[dict] = None, log=print) -> dict:
    """One model's part of the report (see :func:`quant_check`)."""
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
    layers = [dict(name=name, shape=list(m.weight.shape), **weight_stats(m.weight))
              for name, m in quantized_layers(model)]
    runner.register_hook(ProgressBarHook(), 'LOWEST')

    runner.call_hook('before_run')  # what Runner.test does, with the checkpoint loaded above
    metrics, outputs = {}, {}
    log(f'[{role}] evaluating in fp32')
    metrics['fp32'] = runner.test_loop.run()
    # the raw outputs on the first test image: a continuous measure of the int8 error
    with torch.no_grad():
        x = model.data_preprocessor(next(iter(runner.test_dataloader)), False)['inputs'][:1]
    reference = probe(model, cfg, x=x)
    activations = ActivationQuant(model)
    loader = runner.build_dataloader(calibration_dataloader(cfg))
    n = min(calib, len(loader))
    log(f'[{role}] calibrating activations on {n} training images')
    bar = ProgressBar(n)
    with torch.no_grad(), activations.calibrate():
        for batch in itertools.islice(loader, n):
            model.test_step(batch)
            bar.update()
    print(flush=True)
    quantize_weights(model)
    log(f'[{role}] evaluating with int8 weights')
    metrics['int8_w'] = runner.test_loop.run()
    outputs['int8_w'] = output_sqnr(reference, probe(model, cfg, x=x))
    log(f'[{role}] evaluating with int8 weights and activations')
    with activations.quantize():
        metrics['int8_wa'] = runner.test_loop.run()
        outputs['int8_wa'] = output_sqnr(reference, probe(model, cfg, x=x))
    runner.call_hook('after_run')

    metrics = {mode: {k: float(v) for k, v in m.items()} for mode, m in metrics.items()}
    name = headline(metrics['fp32'])
    return dict(config=config, checkpoint=checkpoint, do_conv_layers_folded=folded,
                calib_images=n, metric=name, metrics=metrics, output_sqnr_db=outputs,
                drop={mode: metrics['fp32'][name] - metrics[mode][name]
                      for mode in ('int8_w', 'int8_wa')},
                weights=summarize(layers), layers=layers)


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
                calib: int = 32, work_dir: Optional[str] = None, out: Optional[str] = None,
                cfg_options: Optional[dict] = None, log=print) -> dict:
    """Check ``checkpoint`` (a release or a DO-Conv checkpoint of ``config``) and, with
    ``baseline=[CONFIG, CHECKPOINT]``, a baseline the same way; write ``out`` (Markdown) and the
    JSON beside it, each whole or not at all; returns the report. Raises
    :class:`~doconv_mm.requirements.UsageError` naming the argument for inputs that cannot be used.
    """
    if calib < 1:
        raise QuantCheckError(f'--calib {calib}: the number of calibration images must be >= 1')
    if baseline is not None and len(baseline) != 2:
        raise QuantCheckError(f'--baseline takes CONFIG CHECKPOINT, got {len(baseline)} values')
    if work_dir is None:
        work_dir = osp.join('work_dirs', 'quant_check', osp.splitext(osp.basename(config))[0])
    out = out or osp.join(work_dir, 'quant_check.md')
    inputs = [config, checkpoint, *(baseline or [])]
    for path, name in zip(inputs, ['CONFIG', 'CHECKPOINT', '--baseline CONFIG',
                                   '--baseline CHECKPOINT']):
        check_input(path, name)
    json_out = check_out(out, inputs)
    report = dict(scheme=SCHEME, calib=calib, models={})
    jobs = [('model', config, checkpoint)] + ([('baseline', *baseline)] if baseline else [])
    for role, cfg_path, ckpt_path in jobs:
        report['models'][role] = check_model(cfg_path, ckpt_path, role=role, calib=calib,
                                             work_dir=work_dir, cfg_options=cfg_options, log=log)
    text = markdown(report)
    write_files({out: lambda tmp: _write(tmp, text),
                 json_out: lambda tmp: _write(tmp, json.dumps(_finite(report), indent=1))},
                publish=False, force=True)
    log(text)
    log(f'wrote {out} and {json_out}')
    return report


def _write(path: str, text: str) -> None:
    with open(path, 'w') as f:
        f.write(text)


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
    models = report['models']
    metric = models['model']['metric']
    lines = ['| model | checkpoint | DO-Conv layers folded | ' + ' | '.join(
        f'{metric}, {label}' for label in MODES.values()) + ' | raw outputs SQNR dB: int8 '
        'weights, + activations | weight SQNR dB: median layer, worst layer |', '| --- ' * 8 + '|']
    for role, m in models.items():
        fp32 = m['metrics']['fp32'][m['metric']]
        digits = 4 if abs(fp32) <= 1 else 2  # mAP in [0, 1], mIoU in percent
        cells = [_fmt(fp32, digits)] + [
            f'{_fmt(m["metrics"][mode][m["metric"]], digits)} (drop '
            f'{_fmt(m["drop"][mode], digits, "+")})' for mode in ('int8_w', 'int8_wa')]
        w = m['weights']
        lines.append(f'| {role} | {osp.basename(m["checkpoint"])} | {m["do_conv_layers_folded"]} '
                     f'| ' + ' | '.join(cells) + f' | {m["output_sqnr_db"]["int8_w"]:.1f}, '
                     f'{m["output_sqnr_db"]["int8_wa"]:.1f} | {w["sqnr_db_median"]:.1f}, '
                     f'{w["sqnr_db_min"]:.1f} ({w["worst_layer"]}) |')
    n = models['model']['calib_images']
    lines += ['', f'Raw outputs: the features, dense heads and RoI head on fixed boxes '
              f'(detectors) or the logits (segmentors) on the first test image, int8 against '
              f'fp32. Calibration: {n} training images (test pipeline). Weights: '
              f'{SCHEME["weights"]}; activations: {SCHEME["activations"]}; float: '
              f'{SCHEME["float"]}.', '']
    base = {b['name']: b for b in models['baseline']['layers']} if 'baseline' in models else {}
    own = models['model']['layers']
    if base:
        paired = [a['sqnr_db'] - base[a['name']]['sqnr_db'] for a in own if a['name'] in base]
        paired = [d for d in paired if math.isfinite(d)]
        if paired:
            lines += [f'Weight SQNR, model - baseline, over the {len(paired)} layers both hold: '
                      f'median {_fmt(statistics.median(paired), 2, "+")} dB, lower in '
                      f'{sum(d < 0 for d in paired)} layers, higher in '
                      f'{sum(d > 0 for d in paired)}.', '']
    lines += ['The 10 layers of the model with the lowest weight SQNR:', '',
              '| layer | shape | SQNR dB | baseline SQNR dB | max abs | peak/std median | '
              'peak/std max |', '| --- ' * 7 + '|']
    for a in sorted(own, key=lambda a: a['sqnr_db'])[:10]:
        b = base.get(a['name'])
        lines.append(f'| {a["name"]} | {"x".join(map(str, a["shape"]))} | {a["sqnr_db"]:.1f} | '
                     f'{"-" if b is None else format(b["sqnr_db"], ".1f")} | {a["max_abs"]:.3g} '
                     f'| {a["peak_to_std_median"]:.1f} | {a["peak_to_std_max"]:.1f} |')
    return '\n'.join(lines) + '\n'
