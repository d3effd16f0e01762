"""The study's pieces that are not a training run: the plain backbone checkpoint and the data
options (`make study` itself is the end-to-end run)."""
import os.path as osp

import pytest
import torch

from experiments.study import TASKS, backbone_checkpoint, data_options
from mm_helpers import ROOT


def test_backbone_checkpoint_is_plain_and_loads_safely(tmp_path):
    src, dst = str(tmp_path / 'epoch_8.pth'), str(tmp_path / 'backbone.pth')
    w = torch.randn(4, 3, 3, 3)
    torch.save(dict(meta=dict(hook_msgs=object.__name__), message_hub=dict(step=8),
                    state_dict={'backbone.conv1.weight': w, 'neck.x': torch.ones(1)}), src)
    assert backbone_checkpoint(src, dst) == 1
    loaded = torch.load(dst, weights_only=True)  # tensors only: the format of published backbones
    assert list(loaded['state_dict']) == ['conv1.weight']
    assert torch.equal(loaded['state_dict']['conv1.weight'], w)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['backbone.pth', 'epoch_8.pth']  # no temp
    with pytest.raises(ValueError, match="holds no weights under 'head.'"):
        backbone_checkpoint(src, str(tmp_path / 'none.pth'), prefix='head.')
    assert not osp.exists(tmp_path / 'none.pth')


def test_data_options_and_study_configs():
    det = data_options('det', 'data/toy_coco_pretrain')
    assert 'train_dataloader.dataset.data_root=data/toy_coco_pretrain/' in det
    assert 'val_evaluator.ann_file=data/toy_coco_pretrain/annotations/instances_val2017.json' in det
    assert not any('ann_file' in o for o in data_options('seg', 'data/x'))
    for spec in TASKS.values():
        assert all(osp.isfile(osp.join(ROOT, c)) for c in spec['configs'] + [spec['pretrain']])
