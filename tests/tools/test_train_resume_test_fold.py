"""The user's path end to end on a tiny toy COCO dataset: tools/train.py, resumed, tools/test.py,
tools/fold_ckpt.py, then stock mmdet's own test.py on the release in a process that cannot import
doconv_mm: the metric must be identical."""
import re
import sys

import torch

from tool_helpers import DO_CFG, KEEP_ALL, STOCK_TEST, bbox_map, run, sha, tool


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
