"""tools/demo.py shortened: train stock and DO-Conv, test, fold, test the release with stock
mmdet; the folded model's metric equals the DO-Conv model's."""
import os.path as osp
import re
import subprocess
import sys

from experiments.toy_data import write_coco
from tool_helpers import ROOT


def test_demo_path_shortened(tmp_path):
    write_coco(str(tmp_path / 'data' / 'toy_coco'), n_train=8, n_val=4, size=(128, 128), seed=2)
    opts = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
            'default_hooks.checkpoint.interval=1', 'model.test_cfg.rcnn.score_thr=0.0']
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/demo.py'), '--task', 'det',
                           '--workspace', str(tmp_path), '--repeats', '1', '--cfg-options', *opts],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = dict(re.findall(r'^\| (.+?) \| (.+?) \|$', proc.stdout, re.M))
    do, folded = rows['coco/bbox_mAP, DO-Conv (whole network)'], \
        rows['coco/bbox_mAP, folded DO-Conv with stock mmdet']
    assert do == folded and float(do) >= 0
    # the demo says what its two single-seed trainings cannot show
    assert 'What it does not show: whether DO-Conv helps' in proc.stdout
    assert re.match(r'[\d.]+ M / [\d.]+ M', rows['parameters while training / after folding'])
    work = tmp_path / 'work_dirs' / 'demo-det'
    for png in ('predictions.png', 'loss.png'):
        assert (work / png).stat().st_size > 1000
