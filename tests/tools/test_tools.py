"""The command-line tools end to end, on a tiny toy COCO dataset the tests write.

train -> resume -> test -> fold -> stock mmdet tests the folded release in a process that cannot
import doconv_mm: the metric must be identical. Then the 2-process CPU run, and fold_ckpt's errors.
"""
import hashlib
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import pytest
import torch

from doconv_mm.mm.toy_data import write_coco
from mm_helpers import ROOT

DO_CFG = osp.join(ROOT, 'configs/demo/faster-rcnn_r18_fpn_doconv-all_toy-coco.py')
STOCK_CFG = osp.join(ROOT, 'configs/demo/faster-rcnn_r18_fpn_toy-coco.py')
SMALL = ['train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
         'default_hooks.checkpoint.interval=1']
# a model trained for seconds scores low: keep every box, so the metric is never empty
KEEP_ALL = ['--cfg-options', 'model.test_cfg.rcnn.score_thr=0.0']
# mmdet's own test.py, run where importing doconv_mm fails
STOCK_TEST = ("import sys, runpy, os.path as osp, mmdet; sys.modules['doconv_mm'] = None; "
              "sys.argv = ['test.py'] + sys.argv[1:]; "
              "runpy.run_path(osp.join(osp.dirname(mmdet.__file__), '.mim/tools/test.py'), "
              "run_name='__main__')")


def run(args, cwd, expect=0):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, out[-4000:]
    return out


def tool(name, *args):
    return [sys.executable, osp.join(ROOT, 'tools', name), *args]


def torchrun(name, *args):
    """``tools/<name>`` in 2 CPU processes under torchrun, on a free port."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
            f'--master_port={port}', osp.join(ROOT, 'tools', name), *args, '--launcher', 'pytorch']


def epochs(n):
    return [f'train_cfg.max_epochs={n}', f'train_cfg.val_interval={n}']


def bbox_map(out):
    """The 'bbox_mAP_copypaste' figures a COCO evaluation prints (the last one)."""
    return re.findall(r'bbox_mAP_copypaste: ([-\d. ]+)', out)[-1].strip()


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """A folder holding data/toy_coco (8 train, 4 val images of 128 px), as the configs expect."""
    root = tmp_path_factory.mktemp('tools')
    write_coco(str(root / 'data' / 'toy_coco'), n_train=8, n_val=4, size=(128, 128), seed=1)
    return root


@pytest.fixture(scope='module')
def trained(workspace):
    """Train one epoch, then resume to two; returns (work dir, test output of epoch 2)."""
    work = workspace / 'work'
    run(tool('train.py', DO_CFG, '--work-dir', str(work), '--cfg-options', *SMALL, *epochs(1)),
        workspace)
    assert (work / 'epoch_1.pth').is_file()
    out = run(tool('train.py', DO_CFG, '--work-dir', str(work), '--resume', '--cfg-options',
                   *SMALL, *epochs(2)), workspace)
    assert 'resumed epoch: 1' in out
    assert (work / 'epoch_2.pth').is_file()
    return work


def test_train_resume_test_fold_and_stock_test(workspace, trained):
    ckpt = trained / 'epoch_2.pth'
    assert torch.load(ckpt, weights_only=False)['meta']['epoch'] == 2
    out = run(tool('test.py', DO_CFG, str(ckpt), '--work-dir', str(workspace / 'test'), '--out',
                   str(workspace / 'pred.pkl'), *KEEP_ALL), workspace)
    ours = bbox_map(out)
    assert (workspace / 'pred.pkl').is_file()
    release = workspace / 'release' / 'det.pth'
    out = run(tool('fold_ckpt.py', DO_CFG, str(ckpt), str(release)), workspace)
    assert 'folded 22 DO-Conv layers' in out
    rel = float(re.search(r'max relative difference DO-Conv vs folded = (\S+)', out).group(1))
    assert rel <= 1e-5
    assert re.search(r'sha256 ' + sha(release), out)
    folded = torch.load(release, weights_only=True)  # a release holds tensors and builtins only
    assert set(folded) == {'meta', 'state_dict'}
    assert not any(k.endswith(('.D', '.W_extra')) for k in folded['state_dict'])
    deploy = release.with_suffix('.py')
    text = deploy.read_text()
    assert 'DOConv' not in text and 'custom_imports' not in text and 'ConvCfgRPNHead' not in text
    out = run([sys.executable, '-c', STOCK_TEST, str(deploy), str(release), '--work-dir',
               str(workspace / 'stock_test'), *KEEP_ALL], workspace)
    assert bbox_map(out) == ours


def test_distributed_cpu_training_resumes(workspace):
    work = workspace / 'dist'
    opts = ['--cfg-options', *SMALL, 'train_dataloader.batch_size=1']
    run(torchrun('train.py', DO_CFG, '--work-dir', str(work), *opts, *epochs(1)), workspace)
    out = run(torchrun('train.py', DO_CFG, '--work-dir', str(work), '--resume', *opts,
                       *epochs(2)), workspace)
    assert 'resumed epoch: 1' in out and 'Distributed training: True' in out
    assert torch.load(work / 'epoch_2.pth', weights_only=False)['meta']['epoch'] == 2


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
    if before is not None:
        assert sha(ckpt) == before
    assert sha(inputs[0]) == digest
    if case == 'exists':
        assert out.read_bytes() == b'keep me'
    elif case != 'out_is_input':
        assert not out.exists()
    assert not [p for p in os.listdir(tmp) if p.startswith('.tmp-')]


def test_fold_ckpt_without_do_conv_is_an_identical_copy(workspace, tmp_path):
    sys.path.insert(0, ROOT)
    from mmengine.config import Config
    from doconv_mm.mm.fold_checkpoint import build_model
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
