"""tools/train.py in 2 CPU processes (gloo) under torchrun: a detector trained and resumed, and
the DeepLabv3 DO-Conv demo config (its SyncBN, CUDA only, replaced by BN) evaluated in the run,
then tools/test.py on the result."""
import os.path as osp
import re

import pytest
import torch

from experiments.toy_data import write_cityscapes
from tool_helpers import DO_CFG, ROOT, SMALL, epochs, run, tool, torchrun

SEG_CFG = osp.join(ROOT, 'configs/demo/deeplabv3_r18-d8_doconv-all_toy-cityscapes.py')
ITERS = ['train_cfg.max_iters=4', 'train_cfg.val_interval=4', 'default_hooks.logger.interval=1',
         'default_hooks.checkpoint.interval=4', 'train_dataloader.batch_size=2']


@pytest.fixture(scope='module')
def seg_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('tools_seg')
    write_cityscapes(str(root / 'data' / 'toy_cityscapes'), n_train=4, n_val=2, seed=2)
    return root


def test_distributed_cpu_training_and_test_of_a_segmentor(seg_workspace):
    work = seg_workspace / 'dist'
    out = run(torchrun('train.py', SEG_CFG, '--work-dir', str(work), '--cfg-options', *ITERS),
              seg_workspace)
    assert 'SyncBN (CUDA only) replaced by BN' in out and 'Distributed training: True' in out
    miou = re.findall(r'Iter\(val\) \[\d+/\d+\].*mIoU: ([\d.]+)', out)
    assert miou, out[-3000:]
    assert (work / 'iter_4.pth').is_file()
    out = run(tool('test.py', SEG_CFG, str(work / 'iter_4.pth'), '--work-dir',
                   str(seg_workspace / 'test')), seg_workspace)
    # a number, not the run's own: each process kept its own BN statistics (no SyncBN on CPU)
    # and the checkpoint holds those of rank 0
    assert re.search(r'Iter\(test\) \[\d+/\d+\].*mIoU: [\d.]+', out), out[-3000:]


def test_distributed_cpu_training_resumes(workspace):
    work = workspace / 'dist'
    opts = ['--cfg-options', *SMALL, 'train_dataloader.batch_size=1']
    run(torchrun('train.py', DO_CFG, '--work-dir', str(work), *opts, *epochs(1)), workspace)
    out = run(torchrun('train.py', DO_CFG, '--work-dir', str(work), '--resume', *opts,
                       *epochs(2)), workspace)
    assert 'resumed epoch: 1' in out and 'Distributed training: True' in out
    assert torch.load(work / 'epoch_2.pth', weights_only=False)['meta']['epoch'] == 2
