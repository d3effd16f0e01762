"""tools/quant_check.py end to end on the toy detector: a folded release beside the DO-Conv
checkpoint it came from (folded by the tool), the report's fields against an independent int8
computation, and one-line errors that write nothing."""
import json
import os
import re

import pytest
import torch

from tool_helpers import DO_CFG, KEEP_ALL, STOCK_CFG, run, sha, tool

MODES = ('fp32', 'int8_w', 'int8_wa')


def hand_sqnr(w):
    """SQNR in dB of symmetric per-output-channel int8 on [-127, 127], in float64."""
    w = w.double().flatten(1)
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    q = torch.round(w / scale).clamp(-127, 127) * scale
    return 10 * torch.log10(w.pow(2).sum() / (w - q).pow(2).sum()).item()


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
    # every conv and linear layer of the release, with its SQNR computed here by hand
    names = sorted(k[:-len('.weight')] for k, v in release.items()
                   if k.endswith('.weight') and v.dim() in (2, 4))
    assert sorted(layer['name'] for layer in model['layers']) == names
    for layer, other in zip(model['layers'], baseline['layers']):
        assert layer['name'] == other['name']
        assert layer['shape'] == list(release[layer['name'] + '.weight'].shape)
        expected = hand_sqnr(release[layer['name'] + '.weight'])
        assert layer['sqnr_db'] == pytest.approx(expected, abs=1e-3)
        assert other['sqnr_db'] == pytest.approx(expected, abs=1e-3)
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
