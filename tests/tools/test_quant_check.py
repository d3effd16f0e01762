"""tools/quant_check.py end to end on the toy detector: a folded release beside the DO-Conv
checkpoint it came from (folded by the tool), the report's fields against an independent int8
computation, and one-line errors that write nothing."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tool_helpers import DO_CFG, KEEP_ALL, ROOT, STOCK_CFG, run, sha, tool

MODES = ('fp32', 'int8_w', 'int8_wa')


def hand_sqnr(w):
    """SQNR in dB of symmetric per-output-channel int8 on [-127, 127], in float64."""
    w = w.double().flatten(1)
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    q = torch.round(w / scale).clamp(-127, 127) * scale
    return 10 * torch.log10(w.pow(2).sum() / (w - q).pow(2).sum()).item()


def resnet_bn(conv: str):
    """The BN that follows ``conv`` in mmdet's ResNet (by its module names), or None."""
    if conv == 'backbone.conv1':
        return 'backbone.bn1'
    m = re.fullmatch(r'(backbone\.layer\d\.\d+\.)conv(\d)', conv)
    if m:
        return f'{m[1]}bn{m[2]}'
    if conv.startswith('backbone.') and conv.endswith('.downsample.0'):
        return conv[:-1] + '1'
    return None


def deployed(state, conv):
    """``conv``'s kernel with its BN folded in, by hand in float64: w * gamma / sqrt(var + eps)."""
    w, bn = state[conv + '.weight'].double(), resnet_bn(conv)
    if bn is None:
        return w
    scale = state[bn + '.weight'].double() / (state[bn + '.running_var'].double() + 1e-5).sqrt()
    return w * scale.view(-1, *[1] * (w.dim() - 1))


@pytest.fixture(scope='module')
def checked(trained, workspace, tmp_path_factory):
    """The release of the trained DO-Conv model, checked beside its DO-Conv checkpoint."""
    tmp = tmp_path_factory.mktemp('quant')
    ckpt = trained / 'epoch_2.pth'
    run(tool('fold_ckpt.py', DO_CFG, str(ckpt), str(tmp / 'release.pth')), workspace)
    out = run(tool('quant_check.py', str(tmp / 'release.py'), str(tmp / 'release.pth'),
                   '--baseline', DO_CFG, str(ckpt), '--calib', '3', '--work-dir', str(tmp / 'w'),
                   '--out', str(tmp / 'report.md'), *KEEP_ALL), workspace)
    return tmp, ckpt, out, json.loads((tmp / 'report.json').read_text())


def test_report(checked):
    tmp, ckpt, out, report = checked
    release = torch.load(tmp / 'release.pth', weights_only=True)['state_dict']
    do_state = torch.load(ckpt, weights_only=False)['state_dict']
    model, baseline = report['models']['model'], report['models']['baseline']
    assert model['do_conv_layers_folded'] == 0
    assert baseline['do_conv_layers_folded'] == sum(k.endswith('.D') for k in do_state) > 0
    assert 'calibrating activations on 3 training images' in out
    for m in (model, baseline):
        assert m['calib_images'] == 3 and m['metric'] == 'coco/bbox_mAP'
        assert set(m['metrics']) == set(MODES)
        # int8 activations add noise to the weights' noise: the raw outputs' SQNR falls
        assert 10 < m['output_sqnr_db']['int8_wa'] < m['output_sqnr_db']['int8_w'] < 100
        for mode in ('int8_w', 'int8_wa'):
            assert m['drop'][mode] == pytest.approx(
                m['metrics']['fp32']['coco/bbox_mAP'] - m['metrics'][mode]['coco/bbox_mAP'],
                abs=1e-12)
    # the release and the DO-Conv checkpoint folded in the tool are the same network: the same
    # figures in every mode (calibrated on the same images)
    assert model['metrics'] == baseline['metrics']
    # every conv and linear layer of the release, with its SQNR computed here by hand on the kernel
    # as deployed: BN folded into the conv it follows (ResNet's), the others as they are
    names = sorted(k[:-len('.weight')] for k, v in release.items()
                   if k.endswith('.weight') and v.dim() in (2, 4))
    assert sorted(layer['name'] for layer in model['layers']) == names
    folded = 0
    for layer, other in zip(model['layers'], baseline['layers']):
        assert layer['name'] == other['name']
        assert layer['shape'] == list(release[layer['name'] + '.weight'].shape)
        assert layer['bn'] == other['bn'] == resnet_bn(layer['name'])
        folded += layer['bn'] is not None
        expected = hand_sqnr(deployed(release, layer['name']))
        assert layer['sqnr_db'] == pytest.approx(expected, abs=1e-3)
        assert other['sqnr_db'] == pytest.approx(expected, abs=1e-3)
    assert folded == 20  # ResNet-18: the stem, 16 block convs, 3 downsample convs
    assert model['drop_from'] == dict(int8_w='fp32', int8_wa='fp32')
    text = (tmp / 'report.md').read_text()
    assert re.search(r'\| model \| release.pth \| 0 \| [\d.]+ \| [\d.]+ \(drop [+-][\d.]+\) \| '
                     r'[\d.]+ \(drop [+-][\d.]+\) \| [\d.]+, [\d.]+ \| [\d.]+, [\d.]+ \(\S+\) \|\n',
                     text), text
    assert '| baseline | epoch_2.pth | ' in text
    assert re.search(r'over the %d layers both hold: median \+0.00 dB' % len(names), text), text


@pytest.mark.parametrize('case', ['mismatch', 'calib', 'out', 'missing'])
def test_bad_input(case, checked, workspace):
    tmp, ckpt, _, _ = checked
    config, args = DO_CFG, []
    out = tmp / f'bad-{case}.md'
    if case == 'mismatch':  # a DO-Conv checkpoint with the stock config
        config, message = STOCK_CFG, (r"CHECKPOINT .*epoch_2.pth' vs CONFIG .*toy-coco.py': the "
                                      r"checkpoint does not fit the config's model:\n\d+ "
                                      r"unexpected keys")
    elif case == 'calib':
        args, message = ['--calib', '0'], r'--calib 0: the number of calibration images must be'
    elif case == 'out':
        out, message = tmp / 'bad.txt', r"--out .*bad.txt' must end with .md"
    else:
        ckpt, message = tmp / 'nope.pth', r"CHECKPOINT .*nope.pth' not found"
    digest = sha(checked[1])
    err = run(tool('quant_check.py', config, str(ckpt), '--out', str(out), '--work-dir',
                   str(tmp / f'w-{case}'), *args), workspace, expect=1)
    assert re.search(message, err), err
    assert 'quant_check.py: error: ' in err and 'Traceback' not in err, err
    assert not out.exists() and not out.with_suffix('.json').exists()
    assert sha(checked[1]) == digest
    assert not [p for p in os.listdir(tmp) if p.startswith('.tmp-')]


@pytest.fixture(scope='module')
def engine_checked(checked, workspace):
    """The same release and DO-Conv checkpoint on onnxruntime."""
    tmp = checked[0]
    out = run(tool('quant_check.py', str(tmp / 'release.py'), str(tmp / 'release.pth'),
                   '--baseline', DO_CFG, str(checked[1]), '--calib', '3', '--engine',
                   'onnxruntime', '--repeats', '3', '--work-dir', str(tmp / 'w-ort'),
                   '--out', str(tmp / 'ort.md'), *KEEP_ALL), workspace)
    return out, json.loads((tmp / 'ort.json').read_text())


# the engine quantizes more than the simulation (the inputs of adds, pooling and upsampling too),
# so its raw outputs' SQNR sits below the simulation's int8 weights + activations, within this band
ENGINE_BAND_DB = (-8.0, 2.0)


def test_engine_report(checked, engine_checked):
    import onnx
    tmp, _, _, simulated = checked
    out, report = engine_checked
    assert report['engine'] == 'onnxruntime' and report['threads'] >= 1
    model, baseline = report['models']['model'], report['models']['baseline']
    for role, m in report['models'].items():
        assert set(m['metrics']) == {'fp32', 'onnx_fp32', 'onnx_int8'}
        # the fp32 session is PyTorch to float32 rounding (what fold_ckpt verifies, 1e-4)
        assert m['onnx_fp32_max_rel_diff'] < 1e-4
        assert m['metrics']['onnx_fp32']['coco/bbox_mAP'] == pytest.approx(
            m['metrics']['fp32']['coco/bbox_mAP'], abs=1e-3)
        # each drop from its own reference: the export's from PyTorch fp32, int8's from ONNX fp32
        metric = {mode: m['metrics'][mode]['coco/bbox_mAP'] for mode in m['metrics']}
        assert m['drop'] == pytest.approx(dict(onnx_fp32=metric['fp32'] - metric['onnx_fp32'],
                                               onnx_int8=metric['onnx_fp32'] - metric['onnx_int8']),
                                          abs=1e-12)
        assert m['drop_from'] == dict(onnx_fp32='fp32', onnx_int8='onnx_fp32')
        sim = simulated['models'][role]['output_sqnr_db']['int8_wa']
        sqnr = m['output_sqnr_db']['onnx_int8']
        assert 10 < sqnr < 100
        assert ENGINE_BAND_DB[0] < sqnr - sim < ENGINE_BAND_DB[1]
        for part, files in m['onnx'].items():
            for precision in ('fp32', 'int8'):
                onnx.checker.check_model(files[precision])
            ops = {n.op_type for n in onnx.load(files['int8']).graph.node}
            assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
        t = report['latency'][role]
        for precision in ('fp32', 'int8'):
            assert 0 < t[precision]['min_ms'] <= t[precision]['median_ms'] <= t[precision]['max_ms']
    assert sorted(model['onnx']) == ['bbox_head', 'dense']
    # one network (the release and the checkpoint it was folded from): the same graphs, codes and
    # figures, layer by layer
    assert model['metrics'] == baseline['metrics']
    fp32 = onnx.load(model['onnx']['dense']['fp32'])
    convs = [n.name for n in fp32.graph.node if n.op_type == 'Conv']
    gemms = [n.name for n in onnx.load(model['onnx']['bbox_head']['fp32']).graph.node
             if n.op_type in ('Gemm', 'MatMul')]
    names = sorted(['dense:' + n for n in convs] + ['bbox_head:' + n for n in gemms])
    assert sorted(layer['name'] for layer in model['layers']) == names
    assert [(a['name'], a['sqnr_db']) for a in model['layers']] == [
        (b['name'], b['sqnr_db']) for b in baseline['layers']]
    ratio = report['latency_ratio']
    assert ratio['int8'] == pytest.approx(report['latency']['model']['int8']['median_ms']
                                          / report['latency']['baseline']['int8']['median_ms'])
    text = (tmp / 'ort.md').read_text()
    assert re.search(r'\| model \| release.pth \| 0 \| [\d.]+ \| [\d.]+ \(drop [+-][\d.]+\) \| '
                     r'[\d.]+ \(drop [+-][\d.]+\) \| [\d.]+e-\d+, [\d.]+ \| [\d.]+, [\d.]+ \(\S+\) '
                     r'\| [\d.]+, [\d.]+ \|\n', text), text
    assert 'Latency, model / baseline: fp32 ' in text and '| layer (graph:node) |' in text


def test_engine_latency_benchmark_reads_the_report(checked, engine_checked):
    """benchmarks/engine_latency.py times the report's graphs on their saved inputs."""
    tmp = checked[0]
    report = engine_checked[1]
    for files in report['models']['model']['onnx'].values():
        assert np.load(files['input']).dtype == np.float32
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'benchmarks', 'engine_latency.py'),
                           str(tmp / 'ort.json'), '--processes', '1', '--repeats', '2'],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r'\| int8 \| [\d.]+ \[[\d.]+, [\d.]+\] \| [\d.]+ \[[\d.]+, [\d.]+\] \| '
                     r'[\d.]+ \[[\d.]+, [\d.]+\] \|', proc.stdout), proc.stdout
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'benchmarks', 'engine_latency.py'),
                           str(tmp / 'report.json')], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and 'not a quant_check --engine onnxruntime report' in proc.stderr
