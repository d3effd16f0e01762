"""tools/fold_ckpt.py beyond the main path: every bad input refused with an error naming it, nothing
written and the inputs untouched; a model without DO-Conv; folding by key without a config."""
import os
import os.path as osp
import re

import pytest
import torch

from tool_helpers import DO_CFG, STOCK_CFG, run, sha, tool


@pytest.fixture()
def inputs(trained, tmp_path):
    ckpt = trained / 'epoch_2.pth'
    return ckpt, sha(ckpt), tmp_path


@pytest.mark.parametrize('case', ['missing', 'truncated', 'mismatch', 'out_is_input', 'exists'])
def test_fold_ckpt_bad_input(case, inputs):
    ckpt, digest, tmp = inputs
    out = tmp / 'out.pth'
    config = DO_CFG
    if case == 'missing':
        ckpt, message = tmp / 'nope.pth', 'CHECKPOINT .*nope.pth.* not found'
    elif case == 'truncated':
        data = open(ckpt, 'rb').read()
        ckpt = tmp / 'truncated.pth'
        ckpt.write_bytes(data[:len(data) // 2])
        message = 'cannot read CHECKPOINT .*truncated.pth'
    elif case == 'mismatch':
        config, message = STOCK_CFG, 'does not fit the config.s model:\n22 unexpected keys'
    elif case == 'out_is_input':
        out, message = ckpt, 'is one of the inputs'
    else:
        out.write_bytes(b'keep me')
        message = "exists; pass --force"
    before = sha(ckpt) if osp.exists(ckpt) else None
    err = run(tool('fold_ckpt.py', config, str(ckpt), str(out)), tmp, expect=1)
    assert re.search(message, err), err
    assert 'fold_ckpt.py: error: ' in err and 'Traceback' not in err, err
    if before is not None:
        assert sha(ckpt) == before
    assert sha(inputs[0]) == digest
    if case == 'exists':
        assert out.read_bytes() == b'keep me'
    elif case != 'out_is_input':
        assert not out.exists()
    assert not [p for p in os.listdir(tmp) if p.startswith('.tmp-')]


def test_fold_ckpt_without_do_conv_is_an_identical_copy(workspace, tmp_path):
    from mmengine.config import Config
    from doconv_mm.mm.release import build_model
    torch.manual_seed(0)
    state = build_model(Config.fromfile(STOCK_CFG)).state_dict()
    torch.save(dict(meta=dict(epoch=1), state_dict=state), tmp_path / 'stock.pth')
    out = run(tool('fold_ckpt.py', STOCK_CFG, str(tmp_path / 'stock.pth'),
                   str(tmp_path / 'copy.pth'), '--publish'), workspace)
    assert 'no DO-Conv layer in this model' in out
    (release, ) = tmp_path.glob('copy-*.pth')
    assert sha(release).startswith(release.stem.split('-')[-1])
    copy = torch.load(release, weights_only=True)['state_dict']
    assert list(copy) == list(state) and all(torch.equal(copy[k], state[k]) for k in state)


def test_fold_by_key_equals_fold_by_config(trained, tmp_path):
    ckpt = trained / 'epoch_2.pth'
    run(tool('fold_ckpt.py', DO_CFG, str(ckpt), str(tmp_path / 'a.pth')), tmp_path)
    run(tool('fold_ckpt.py', '--no-config', str(ckpt), str(tmp_path / 'b.pth')), tmp_path)
    a = torch.load(tmp_path / 'a.pth')['state_dict']
    b = torch.load(tmp_path / 'b.pth')['state_dict']
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
