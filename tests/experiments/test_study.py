"""The study's pieces that are not a training run: the plain backbone checkpoint, the data
options, and the pretraining keyed to its fingerprint with a stand-in trainer (`make study`
itself is the end-to-end run)."""
import json
import os
import os.path as osp
import shutil
import subprocess
import zlib

import pytest
import torch

from experiments import records, study
from experiments.compare import StaleRun, config_name, final_checkpoint
from experiments.fingerprint import file_id, resolved_config
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
    # the same weights, the same bytes (a later session's pretraining is checked by its hash)
    other = tmp_path / 'sub' / 'other.pth'
    backbone_checkpoint(src, str(other))
    assert other.read_bytes() == open(dst, 'rb').read()
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


@pytest.mark.parametrize('task', list(TASKS))
def test_quick_schedules_resolve_short_with_a_checkpoint_at_the_end(task):
    """study.QUICK on each task's configs: the pretraining and the fine-tuning runs train a few
    minutes, validate at least once and checkpoint their last step (what the study loads)."""
    pre, fine = study.QUICK[task]
    for config, options in [(TASKS[task]['pretrain'], pre)] + [(c, fine) for c in
                                                               TASKS[task]['configs']]:
        cfg = resolved_config(osp.join(ROOT, config), options)
        train, every = cfg['train_cfg'], cfg['default_hooks']['checkpoint']['interval']
        last = train.get('max_epochs', train.get('max_iters'))
        assert last == {'det': (1, 2), 'seg': (20, 30)}[task][config != TASKS[task]['pretrain']]
        assert train['val_interval'] <= last and last % every == 0
        if task == 'seg':  # the learning rate decays over the short schedule
            assert cfg['param_scheduler'][0]['end'] == last
        assert final_checkpoint(cfg).endswith(f'_{last}.pth')


REAL_RUN = subprocess.run


class StandIn:
    """Stands in for tools/train.py (and for make_toy_data.py, a no-op): writes the schedule's
    last checkpoint (its backbone weight: the count of trainings so far, or 1 for every
    pretraining where ``repeats``), a validation record (a metric of the run's folder name) and
    a log of 150 s, and checks that it runs with the CPU kernels pinned
    (experiments/kernels.py); ``trained`` lists the folders it trained, relative to ``work``;
    ``iters``: the training loss logged at iterations 1..iters."""

    def __init__(self, work, repeats=False, iters=1):
        self.work, self.repeats, self.trained, self.iters = work, repeats, [], iters

    def __call__(self, cmd, cwd=None, env=None, check=False, stdout=None, stderr=None, **kwargs):
        if cmd[0] == 'git':  # the records' commit
            return REAL_RUN(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, **kwargs)
        if cmd[1].endswith('make_toy_data.py'):
            return subprocess.CompletedProcess(cmd, 0)
        # every training runs with the CPU kernels pinned, over the caller's environment
        assert env == {**os.environ, 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'OMP_NUM_THREADS': '2'}
        work_dir = cmd[cmd.index('--work-dir') + 1]
        options = [o for o in cmd[cmd.index('--cfg-options') + 1:] if o != '--resume']
        run = osp.relpath(work_dir, self.work)
        self.trained.append(run)
        final = osp.join(work_dir, final_checkpoint(resolved_config(cmd[2], options)))
        weight = 1 if self.repeats and run == 'pretrain' else len(self.trained)
        torch.save({'state_dict': {'backbone.w': torch.tensor([weight])}}, final)
        with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
            f.write(final)
        stamp = osp.join(work_dir, f'2026{len(self.trained):04d}')
        os.makedirs(osp.join(stamp, 'vis_data'))
        with open(osp.join(stamp, 'vis_data', 'scalars.json'), 'w') as f:
            for i in range(1, self.iters + 1):
                f.write(json.dumps(dict(loss=1.0 / i, iter=i)) + '\n')
            f.write(json.dumps({'coco/bbox_mAP': zlib.crc32(run.encode()) % 1000 / 1000,
                                'step': 1}) + '\n')
        with open(osp.join(stamp, f'2026{len(self.trained):04d}.log'), 'w') as f:
            f.write('2026/12/06 10:00:00 - mmengine - INFO - start\nloss: 1.0\n'
                    '2026/12/06 10:02:30 - mmengine - INFO - done\n')
        return subprocess.CompletedProcess(cmd, 0)


def test_a_changed_pretraining_stops_the_study_and_retrain_redoes_it_and_what_follows(
        tmp_path, monkeypatch):
    """tools/train.py replaced by :class:`StandIn`. The study trains
    the pretraining and the three fine-tuning runs once; with the pretraining's recorded
    fingerprint altered (as if another learning rate had trained it) it stops with one line
    naming it, and with retrain it pretrains again and, the backbone's content changed, the
    fine-tuning runs too; then nothing more."""
    work = tmp_path / 'work_dirs' / 'study' / 'det'
    stand_in = StandIn(work)
    trained = stand_in.trained
    monkeypatch.setattr(study.subprocess, 'run', stand_in)
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


def test_the_study_reports_from_its_records_alone_and_continues_them_later(tmp_path, monkeypatch):
    """With :class:`StandIn` (a pretraining that repeats): each run is recorded as it finishes;
    with the work dirs gone (a later session) the study reports from the records alone, training
    nothing, not even the pretraining; a seed added later pretrains again and trains that seed
    only, each seed handed on when its runs are done; a seed one of whose configs another machine
    recorded trains all three here."""
    work = tmp_path / 'work_dirs' / 'study' / 'det'
    stand_in = StandIn(work, repeats=True)
    monkeypatch.setattr(study.subprocess, 'run', stand_in)
    recs = tmp_path / 'records'
    names = [config_name(c) for c in TASKS['det']['configs']]

    def run_task(seeds, **kwargs):
        report = study.run_task(ROOT, str(tmp_path), 'det', seeds, log=lambda msg: None,
                                records_dir=str(recs), **kwargs)
        return {k: v for k, v in report.items() if k != 'paths'}

    first = run_task([0])
    assert stand_in.trained == ['pretrain'] + [osp.join(n, 'seed0') for n in names]
    record = json.loads((recs / 'det' / names[1] / 'seed0.json').read_text())
    assert record['config'] == names[1] and record['seed'] == 0
    assert record['checkpoint'] == dict(name='epoch_6.pth', **file_id(str(
        work / names[1] / 'seed0' / 'epoch_6.pth')))
    assert record['fingerprint'] == json.loads(
        (work / names[1] / 'seed0' / 'fingerprint.json').read_text())
    assert record['final'] == {'coco/bbox_mAP': first['configs'][names[1]]['values'][0]}
    assert record['curves'] == dict(loss=[[1, 1.0]], val=[[1, record['final']]])
    assert record['wall_s'] == 150 and record['attempts'] == 1
    assert record['machine'] == records.machine() and record['machine']['cpus'] >= 1
    pretrain = json.loads((recs / 'det' / config_name(TASKS['det']['pretrain']) / 'seed100.json')
                          .read_text())
    assert pretrain['backbone'] == file_id(str(work / 'pretrained_backbone.pth'))
    assert first['machines'] == [dict(records.machine(), runs=3)]
    assert first['configs'][names[0]]['wall_s'] == 150

    shutil.rmtree(tmp_path / 'work_dirs')  # a later session
    assert run_task([0]) == first
    assert len(stand_in.trained) == 4  # from the records alone
    done = []  # each seed is handed on (to be evaluated) when its runs are recorded
    both = run_task([0, 1], after_seed=lambda seed: done.append((seed, len(stand_in.trained), all(
        (recs / 'det' / n / f'seed{seed}.json').is_file() for n in names))))
    assert stand_in.trained[4:] == ['pretrain'] + [osp.join(n, 'seed1') for n in names]
    assert done == [(0, 5, True), (1, 8, True)]  # seed 0 before seed 1 trains
    assert [c['values'][0] for c in both['configs'].values()] == \
        [c['values'][0] for c in first['configs'].values()]

    # seed 2's stock run recorded on another machine, its DO-Conv runs not recorded
    run_task([2])
    shutil.rmtree(tmp_path / 'work_dirs')
    path = recs / 'det' / names[0] / 'seed2.json'
    path.write_text(json.dumps(dict(json.loads(path.read_text()), machine=dict(
        cpu='another CPU', isa=['avx2'], cpus=4, id='0123456789ab'))))
    for name in names[1:]:
        os.remove(recs / 'det' / name / 'seed2.json')
    trained = len(stand_in.trained)
    run_task([0, 1, 2])
    assert stand_in.trained[trained:] == ['pretrain'] + [osp.join(n, 'seed2') for n in names]
    assert json.loads(path.read_text())['machine'] == records.machine()


def test_a_pretraining_that_does_not_repeat_stops_the_continued_study(tmp_path, monkeypatch):
    """A later session's pretraining that writes another backbone than the recorded one: the
    runs recorded from the old one cannot be paired with new ones, one line says so; retrain
    trains them all again."""
    work = tmp_path / 'work_dirs' / 'study' / 'det'
    stand_in = StandIn(work)  # every training writes other weights
    monkeypatch.setattr(study.subprocess, 'run', stand_in)
    recs = str(tmp_path / 'records')
    study.run_task(ROOT, str(tmp_path), 'det', [0], log=lambda msg: None, records_dir=recs)
    shutil.rmtree(tmp_path / 'work_dirs')
    with pytest.raises(RuntimeError, match=r'^det pretraining did not repeat: the backbone .* '
                       r'differs from the one its record .*seed100.json holds, from which the '
                       r'fine-tuning runs recorded there trained; --retrain trains the '
                       r'pretraining and them again$'):
        study.run_task(ROOT, str(tmp_path), 'det', [0, 1], log=lambda msg: None,
                       records_dir=recs)
    assert len(stand_in.trained) == 5  # the pretraining, then nothing
    names = [config_name(c) for c in TASKS['det']['configs']]
    study.run_task(ROOT, str(tmp_path), 'det', [0, 1], log=lambda msg: None, records_dir=recs,
                   retrain=True)
    assert stand_in.trained[5:] == [osp.join(n, f'seed{s}') for s in (0, 1) for n in names]


def test_quick_runs_every_step_on_short_schedules_in_a_workspace_of_its_own(
        tmp_path, monkeypatch, capsys):
    """tools/study.py --quick with :class:`StandIn`: the pretraining with QUICK's options, the
    three configs over seeds 0 and 1 with the short schedule (then --cfg-options), recorded in
    its workspace's records (the runs trained in its work_dirs, not the checkout's); the report
    printed."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('study_tool', osp.join(ROOT, 'tools/study.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    workspace = tmp_path / 'quick'  # not there yet: the tool makes it
    work = workspace / 'work_dirs' / 'study' / 'det'
    stand_in, commands = StandIn(work, repeats=True, iters=3), {}

    def run(cmd, **kwargs):
        if '--work-dir' in cmd:
            commands[osp.relpath(cmd[cmd.index('--work-dir') + 1], work)] = cmd
        return stand_in(cmd, **kwargs)

    monkeypatch.setattr(study.subprocess, 'run', run)
    tool.main(['--quick', '--tasks', 'det', '--workspace', str(workspace),
               '--cfg-options', 'optim_wrapper.optimizer.lr=0.02'])
    names = [config_name(c) for c in TASKS['det']['configs']]
    assert stand_in.trained == ['pretrain'] + [osp.join(n, f'seed{s}') for s in (0, 1)
                                               for n in names]
    pre, fine = study.QUICK['det']
    pretrain = commands['pretrain']
    assert pretrain[pretrain.index('--cfg-options') + 1:][-len(pre):] == pre
    for name in names:
        cmd = commands[osp.join(name, 'seed1')]
        assert cmd[cmd.index('--cfg-options') + 1:][-len(fine) - 1:] == \
            fine + ['optim_wrapper.optimizer.lr=0.02']
        assert (workspace / 'work_dirs' / 'study' / 'records' / 'det' / name / 'seed1.json'
                ).is_file()
    recorded = json.loads((work / names[0] / 'seed0' / 'fingerprint.json').read_text())
    assert recorded['config']['train_cfg']['max_epochs'] == 2
    assert '## summary (README)' in capsys.readouterr().out


def test_summary_is_readmes_table_from_the_reports():
    """study.summary: stock's mean ± std and each DO-Conv config's paired difference [CI], p, on
    the study's validation set and on the large split, then the machines."""
    machine = dict(cpu='Some CPU', isa=['avx2'], cpus=2, id='abcdef012345')
    diff = dict(mean=0.012, ci_low=-0.0335, ci_high=0.0575, p=0.3741)
    report = dict(baseline='stock', configs={'stock': dict(values=[0.2, 0.3, 0.4])},
                  comparisons={'head': diff, 'all': dict(diff, mean=-0.5)},
                  machines=[dict(machine, runs=9)], commits=['abc1234'])
    large = dict(task='det', images=512, metrics={'stock': {0: 0.1, 1: 0.2, 2: 0.3}},
                 configs={'head': dict(paired=diff), 'all': dict(paired=diff)})
    lines = study.summary({'det': report}, [large]).splitlines()
    assert lines[2] == ('| det, Faster R-CNN R18-FPN, bbox mAP | 3 | 16 | 0.3000 ± 0.1000 | '
                        '+0.0120 [-0.0335, +0.0575], 0.374 | -0.5000 [-0.0335, +0.0575], 0.374 |')
    assert lines[3].startswith(
        '| det, Faster R-CNN R18-FPN, bbox mAP | 3 | 512 | 0.2000 ± 0.1000 |')
    assert lines[5] == ('9 fine-tuning runs, recorded at abc1234, from Some CPU (avx2, 2 CPUs, '
                        'id abcdef012345): 9.')
    both = study.summary({'det': report, 'seg': report}).splitlines()
    assert both[-1].startswith('18 fine-tuning runs, recorded at abc1234, from Some CPU (') and \
        both[-1].endswith('id abcdef012345): 18.')  # one machine, named once
    seg = study.summary({'seg': dict(report, baseline='stock')}).splitlines()
    assert seg[2].startswith('| seg, DeepLabv3 R18-D8, mIoU | 3 | 8 | 0.30 ± 0.10 | +0.01 [-0.03, ')
    assert len(seg) == 5  # no large split given: one row


def test_speed_summary_is_readmes_training_speed_table():
    """study.speed_summary: per task, each DO-Conv config's paired loss difference per third of
    the schedule and the metric's at the first validation, [CI], p."""
    d = dict(mean=-0.0123, ci_low=-0.0456, ci_high=0.0210, p=0.4321)
    config = dict(loss=[d, d, dict(d, mean=0.5)], val=[dict(d, mean=0.25), d])
    sp = dict(metric='mIoU', windows=[(1, 50), (51, 100), (101, 150)], steps=[50, 150],
              configs={'head': config, 'all': dict(config, val=[d, d])})
    lines = study.speed_summary({'seg': sp}).splitlines()
    assert lines[0] == ('| task | quantity | DO-Conv head − stock [95% CI], p | DO-Conv all − '
                        'stock [95% CI], p |')
    assert lines[2] == ('| seg | training loss, iterations 1-50 | -0.0123 [-0.0456, +0.0210], '
                        '0.432 | -0.0123 [-0.0456, +0.0210], 0.432 |')
    assert lines[4].startswith('| seg | training loss, iterations 101-150 | +0.5000 [')
    assert lines[5] == ('| seg | mIoU at the first validation (step 50 of 150) | +0.25 [-0.05, '
                        '+0.02], 0.432 | -0.01 [-0.05, +0.02], 0.432 |')
    assert len(lines) == 6


def test_recorded_seeds_are_those_with_every_run_recorded_and_evaluated(tmp_path):
    """study.recorded_seeds, what tools/study.py --recorded reports: a seed counts when its three
    runs are recorded and ``needs`` asks nothing more of any of them."""
    names = [config_name(c) for c in TASKS['seg']['configs']]
    for seed, present in ((0, names), (1, names[:2]), (2, names), (3, names)):
        for name in present:
            records.write(records.record_path(str(tmp_path / 'seg'), name, seed),
                          dict(seed=seed, large={'512': 1} if seed != 3 else {}))
    assert study.recorded_seeds(str(tmp_path), 'seg', [0, 1, 2, 3, 4]) == [0, 2, 3]
    needs = lambda config, seed, record: '512' not in record['large']  # noqa: E731
    assert study.recorded_seeds(str(tmp_path), 'seg', [3, 2, 0], needs) == [2, 0]
