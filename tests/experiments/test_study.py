"""The study's pieces that are not a training run: the plain backbone checkpoint, the data
options, and the pretraining keyed to its fingerprint with a stand-in trainer (`make study`
itself is the end-to-end run)."""
import json
import os
import os.path as osp
import subprocess

import pytest
import torch

from experiments import study
from experiments.compare import StaleRun, config_name, final_checkpoint
from experiments.fingerprint import resolved_config
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


def test_a_changed_pretraining_stops_the_study_and_retrain_redoes_it_and_what_follows(
        tmp_path, monkeypatch):
    """tools/train.py replaced by a stand-in that writes the schedule's last checkpoint (its
    backbone weight: the count of trainings so far) and a validation record, and checks that it
    runs with the CPU kernels pinned (experiments/kernels.py). The study trains
    the pretraining and the three fine-tuning runs once; with the pretraining's recorded
    fingerprint altered (as if another learning rate had trained it) it stops with one line
    naming it, and with retrain it pretrains again and, the backbone's content changed, the
    fine-tuning runs too; then nothing more."""
    work = tmp_path / 'work_dirs' / 'study' / 'det'
    trained = []

    def run(cmd, cwd=None, env=None, check=False, stdout=None, stderr=None):
        if cmd[1].endswith('make_toy_data.py'):
            return subprocess.CompletedProcess(cmd, 0)
        # every training runs with the CPU kernels pinned, over the caller's environment
        assert env == {**os.environ, 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'OMP_NUM_THREADS': '2'}
        work_dir = cmd[cmd.index('--work-dir') + 1]
        options = [o for o in cmd[cmd.index('--cfg-options') + 1:] if o != '--resume']
        trained.append(osp.relpath(work_dir, work))
        final = osp.join(work_dir, final_checkpoint(resolved_config(cmd[2], options)))
        torch.save({'state_dict': {'backbone.w': torch.tensor([len(trained)])}}, final)
        with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
            f.write(final)
        os.makedirs(osp.join(work_dir, f'2026{len(trained):04d}', 'vis_data'))
        with open(osp.join(work_dir, f'2026{len(trained):04d}', 'vis_data', 'scalars.json'),
                  'w') as f:
            f.write(json.dumps(dict(loss=1.0, iter=1)) + '\n')
            f.write(json.dumps({'coco/bbox_mAP': 0.1, 'step': 1}) + '\n')
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(study.subprocess, 'run', run)
    runs = ['pretrain'] + [osp.join(config_name(c), 'seed0') for c in TASKS['det']['configs']]
    study.run_task(ROOT, str(tmp_path), 'det', [0], log=lambda msg: None)
    assert trained == runs
    recorded = json.loads((work / 'pretrain' / 'fingerprint.json').read_text())
    assert recorded['config']['optim_wrapper']['optimizer']['lr'] == 0.01  # the demo config's
    recorded['config']['optim_wrapper']['optimizer']['lr'] = 0.5
    (work / 'pretrain' / 'fingerprint.json').write_text(json.dumps(recorded))
    with pytest.raises(StaleRun, match=r"^det pretraining \(.*pretrain\) was trained with another "
                       r"fingerprint than this command's, run -> command: config.optim_wrapper."
                       r"optimizer.lr: 0.5 -> 0.01; --retrain trains it again"):
        study.run_task(ROOT, str(tmp_path), 'det', [0], log=lambda msg: None)
    assert len(trained) == 4
    study.run_task(ROOT, str(tmp_path), 'det', [0], log=lambda msg: None, retrain=True)
    assert trained[4:] == runs
    backbone = torch.load(work / 'pretrained_backbone.pth', weights_only=True)
    assert backbone['state_dict']['w'].item() == 5  # from the new pretraining
    study.run_task(ROOT, str(tmp_path), 'det', [0], log=lambda msg: None)
    assert len(trained) == 8
