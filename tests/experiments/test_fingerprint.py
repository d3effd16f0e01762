"""Runs keyed to what produced them (experiments/fingerprint.py and its use in
experiments/compare.py): the fingerprint's parts against hand-written expectations, and the
comparison's refusal and retraining with a stand-in trainer (tests/tools/test_compare.py trains
for real)."""
import hashlib
import json
import os
import os.path as osp
import subprocess

import shutil

import pytest

from experiments import compare
from experiments.compare import Comparison, StaleRun
from experiments.fingerprint import (FILE, ROOT, differences, is_current, read_fingerprint,
                                     record_sources, resolved_config, run_fingerprint, sources,
                                     training_code)

BASE = '''train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9))
model = dict(type='Toy', depth=18, init_cfg=dict(checkpoint='backbone.pth'))
'''


def configs(tmp_path):
    """A base config and two that inherit it (a stock and a DO-Conv stand-in)."""
    folder = tmp_path / 'configs'
    folder.mkdir(exist_ok=True)
    (folder / 'base.py').write_text(BASE)
    paths = []
    for name, extra in (('stock', ''), ('doconv', "model = dict(conv_cfg=dict(type='DOConv'))\n")):
        (folder / f'{name}.py').write_text(f"_base_ = './base.py'\n{extra}")
        paths.append(str(folder / f'{name}.py'))
    return paths


def test_resolved_config_merges_bases_and_options(tmp_path):
    stock, doconv = configs(tmp_path)
    cfg = resolved_config(doconv, ['optim_wrapper.optimizer.lr=0.5', 'train_cfg.max_epochs=3'])
    assert cfg['optim_wrapper'] == dict(optimizer=dict(type='SGD', lr=0.5, momentum=0.9))
    assert cfg['train_cfg'] == dict(type='EpochBasedTrainLoop', max_epochs=3)
    assert cfg['model'] == dict(type='Toy', depth=18, init_cfg=dict(checkpoint='backbone.pth'),
                                conv_cfg=dict(type='DOConv'))
    assert 'conv_cfg' not in resolved_config(stock)['model']


def test_differences_name_each_dotted_key():
    old = dict(config=dict(a=dict(lr=0.02, steps=[8, 11]), b=1), seed=0)
    new = dict(config=dict(a=dict(lr=0.01, steps=[8, 11]), c='x'), seed=0)
    assert differences(old, new) == ['config.a.lr: 0.02 -> 0.01', 'config.b: 1 -> <none>',
                                     'config.c: <none> -> "x"']
    assert differences(old, json.loads(json.dumps(old))) == []
    assert differences({'k': 'x' * 100}, {'k': 'y'}) == ['k: "' + 'x' * 56 + '... -> "y"']


def test_run_fingerprint_holds_the_loaded_checkpoint_by_content(tmp_path):
    _, doconv = configs(tmp_path)
    (tmp_path / 'backbone.pth').write_bytes(b'abc')
    fp = run_fingerprint(resolved_config(doconv), 4, cwd=str(tmp_path))
    # SHA-256 of b'abc' (FIPS 180-2, appendix B.1)
    assert fp['checkpoints'] == {'backbone.pth': dict(
        size=3, sha256='ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')}
    assert fp['seed'] == 4 and fp['config']['model']['depth'] == 18
    import torch
    from doconv_mm.version import __version__
    assert fp['versions']['torch'] == torch.__version__
    assert fp['versions']['doconv_mm'] == __version__
    assert {'mmdet', 'mmseg'} <= set(fp['versions'])  # the config names no toolkit
    seg = run_fingerprint(dict(default_scope='mmseg'), 0)['versions']
    assert 'mmseg' in seg and 'mmdet' not in seg
    assert fp['code'] == training_code()  # this checkout's training code, by content
    # the CPU kernels it trains with (experiments/kernels.py)
    assert fp['kernels'] == {'ONEDNN_MAX_CPU_ISA': 'AVX2', 'OMP_NUM_THREADS': '2'}
    # a checkpoint the config names but that is not there is not part of it
    assert run_fingerprint(resolved_config(doconv), 4, cwd=str(tmp_path / 'configs'))[
        'checkpoints'] == {}


def test_training_code_is_the_checkouts_files_a_run_loads_by_content(tmp_path):
    code = training_code()
    # the trainer, the toy-data maker and what they and custom_imports load of doconv_mm
    assert {'tools/train.py', 'tools/make_toy_data.py', 'experiments/toy_data.py',
            'doconv_mm/__init__.py', 'doconv_mm/core/do_conv.py', 'doconv_mm/mm/registry.py',
            'doconv_mm/mm/runtime.py'} <= set(code)
    # not what training never imports, nor the installed packages
    assert not {'doconv_mm/mm/onnx_engine.py', 'doconv_mm/mm/quant_check.py',
                'experiments/compare.py', 'tools/test.py'} & set(code)
    assert all(not osp.isabs(f) and osp.isfile(osp.join(ROOT, f)) and 'site-packages' not in f
               for f in code)
    for rel, digest in code.items():
        with open(osp.join(ROOT, rel), 'rb') as f:
            assert digest == hashlib.sha256(f.read()).hexdigest()[:16]
    # in a copy of the checkout: an edit to a file training loads changes its entry only, and
    # the fingerprints' differences name it; an edit to another file changes nothing
    copy = tmp_path / 'checkout'
    for part in ('doconv_mm', 'tools', 'experiments'):
        shutil.copytree(osp.join(ROOT, part), copy / part,
                        ignore=shutil.ignore_patterns('__pycache__'))
    before = training_code(str(copy))
    assert before == code
    with open(copy / 'doconv_mm' / 'mm' / 'onnx_engine.py', 'a') as f:
        f.write('# not loaded by training\n')
    assert training_code(str(copy)) == before
    with open(copy / 'doconv_mm' / 'core' / 'do_conv.py', 'a') as f:
        f.write('# an edit\n')
    after = training_code(str(copy))
    assert {k for k in before if before[k] != after[k]} == {'doconv_mm/core/do_conv.py'}
    assert differences(dict(code=before), dict(code=after)) == [
        f'code.doconv_mm/core/do_conv.py: "{before["doconv_mm/core/do_conv.py"]}" -> '
        f'"{after["doconv_mm/core/do_conv.py"]}"']


def test_derived_outputs_are_current_while_their_checkpoint_is(tmp_path):
    ckpt, out = tmp_path / 'epoch_2.pth', tmp_path / 'seed0.pkl'
    ckpt.write_bytes(b'weights 1')
    recorded = sources(checkpoint=str(ckpt))
    assert recorded['checkpoint']['sha256'] == hashlib.sha256(b'weights 1').hexdigest()
    assert not is_current(str(out), recorded)  # nothing written yet
    out.write_bytes(b'predictions')
    assert not is_current(str(out), recorded)  # written, but from what is not recorded
    record_sources(str(out), recorded)
    assert is_current(str(out), sources(checkpoint=str(ckpt)))
    moved = tmp_path / 'elsewhere.pth'
    moved.write_bytes(b'weights 1')  # the same weights at another path: still current
    assert is_current(str(out), sources(checkpoint=str(moved)))
    ckpt.write_bytes(b'weights 2')  # resumed or trained again
    assert not is_current(str(out), sources(checkpoint=str(ckpt)))
    os.remove(out)
    assert not is_current(str(out), recorded)


REAL_RUN = subprocess.run


class FakeTrainer:
    """Stands in for tools/train.py: the schedule's last checkpoint and a validation record in
    the run's folder, the metric 0.1 * (number of trainings so far); every training with the CPU
    kernels pinned (experiments/kernels.py)."""

    def __init__(self):
        self.trained = []

    def __call__(self, cmd, cwd=None, env=None, stdout=None, stderr=None, **kwargs):
        if cmd[0] == 'git':  # the records' commit
            return REAL_RUN(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, **kwargs)
        assert env == {**os.environ, 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'OMP_NUM_THREADS': '2'}
        work_dir = cmd[cmd.index('--work-dir') + 1]
        self.trained.append(work_dir)
        stamp = osp.join(work_dir, f'2026{len(self.trained):04d}', 'vis_data')
        os.makedirs(stamp)
        with open(osp.join(stamp, 'scalars.json'), 'w') as f:
            f.write(json.dumps(dict(loss=1.0, iter=1)) + '\n')
            f.write(json.dumps({'coco/bbox_mAP': 0.1 * len(self.trained), 'step': 2}) + '\n')
        with open(osp.join(work_dir, 'epoch_2.pth'), 'w') as f:
            f.write(str(len(self.trained)))
        with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
            f.write(osp.join(work_dir, 'epoch_2.pth'))
        return subprocess.CompletedProcess(cmd, 0)


@pytest.fixture
def trainer(monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(compare.subprocess, 'run', fake)
    return fake


def test_other_options_or_an_edited_config_refuse_and_retrain_trains_those_runs(
        tmp_path, trainer):
    paths = configs(tmp_path)
    work = str(tmp_path / 'work')

    def comparison(options=(), retrain=False):
        return Comparison('root', paths, [0, 1], work, options, cwd=str(tmp_path),
                          retrain=retrain)

    first = comparison()
    first.train()
    assert len(trainer.trained) == 4
    assert read_fingerprint(osp.join(work, 'stock', 'seed1')) == json.loads(json.dumps(
        first.fingerprint(paths[0], 1)))
    assert first.collect()['configs']['doconv']['values'] == pytest.approx([0.2, 0.4])
    comparison().train()  # the same command again: every run read, none trained
    assert len(trainer.trained) == 4

    # another learning rate through --cfg-options: every run differs; nothing is trained or read
    other = comparison(['optim_wrapper.optimizer.lr=0.01'])
    for action in (other.train, other.collect, other.pending_commands):
        with pytest.raises(StaleRun) as err:
            action()
        assert str(err.value).startswith(
            f"stock seed 0 ({osp.join(work, 'stock', 'seed0')}) was trained with another "
            "fingerprint than this command's, run -> command: config.optim_wrapper.optimizer.lr: "
            "0.02 -> 0.01; 3 more runs differ too; --retrain trains them again")
    assert len(trainer.trained) == 4

    # an edited config: only its runs differ
    with open(paths[1], 'a') as f:
        f.write("optim_wrapper = dict(optimizer=dict(momentum=0.8))\n")
    with pytest.raises(StaleRun, match=r'^doconv seed 0 .* config.optim_wrapper.optimizer.'
                       r'momentum: 0.9 -> 0.8; 1 more runs differ too; --retrain'):
        comparison().collect()
    retrained = comparison(retrain=True)
    retrained.train()
    assert trainer.trained[4:] == [osp.join(work, 'doconv', f'seed{s}') for s in (0, 1)]
    for seed in (0, 1):  # trained from scratch: one attempt's logs, the new fingerprint
        run = osp.join(work, 'doconv', f'seed{seed}')
        assert len([d for d in os.listdir(run) if d.startswith('2026')]) == 1
        assert read_fingerprint(run)['config']['optim_wrapper']['optimizer']['momentum'] == 0.8
    report = comparison().collect()
    assert report['configs']['doconv']['values'] == pytest.approx([0.5, 0.6])
    assert report['configs']['stock']['values'] == pytest.approx([0.1, 0.3])  # kept


def test_an_edit_to_the_training_code_refuses_recorded_runs_and_stops_a_study_under_way(
        tmp_path, trainer, monkeypatch):
    paths = configs(tmp_path)
    work = str(tmp_path / 'work')
    Comparison('root', paths, [0], work, cwd=str(tmp_path)).train()
    edited = dict(training_code(), **{'doconv_mm/core/do_conv.py': '0' * 16})
    monkeypatch.setattr(compare, 'run_fingerprint', lambda *a, **k: dict(
        run_fingerprint(*a, **k), code=edited))
    # recorded runs of the old code are not reported as this code's
    with pytest.raises(StaleRun, match=r'^stock seed 0 .* code.doconv_mm/core/do_conv.py: '
                       r'"[0-9a-f]{16}" -> "0{16}"; 1 more runs differ too; --retrain'):
        Comparison('root', paths, [0], work, cwd=str(tmp_path)).collect()
    # a run about to start while the code on disk is not the code this command started with
    with pytest.raises(RuntimeError, match=r'^the training code changed since this command '
                       r'started \(doconv_mm/core/do_conv.py: "0{16}" -> "[0-9a-f]{16}"\); run '
                       r'it again$'):
        Comparison('root', paths, [1], work, cwd=str(tmp_path)).train()
    assert len(trainer.trained) == 2


def test_a_run_without_a_fingerprint_is_not_read(tmp_path, trainer):
    paths = configs(tmp_path)
    work = str(tmp_path / 'work')
    Comparison('root', paths, [0], work, cwd=str(tmp_path)).train()
    os.remove(osp.join(work, 'stock', 'seed0', FILE))  # as runs trained before fingerprints
    with pytest.raises(StaleRun, match=r'stock seed 0 .*: no fingerprint.json \(trained before '
                       r'runs recorded one\); --retrain trains it again'):
        Comparison('root', paths, [0], work, cwd=str(tmp_path)).collect()
    # a run that never saved a checkpoint (so no record either) starts again under the new
    # fingerprint, unasked
    os.remove(osp.join(work, 'doconv', 'seed0', 'last_checkpoint'))
    os.remove(osp.join(work, 'records', 'doconv', 'seed0.json'))
    cmds = Comparison('root', paths, [0], work, ['train_cfg.max_epochs=2'], cwd=str(tmp_path),
                      retrain=True).pending_commands()
    assert [c[c.index('--work-dir') + 1] for c in cmds] == [
        osp.join(work, n, 'seed0') for n in ('stock', 'doconv')]
    assert not osp.exists(osp.join(work, 'stock', 'seed0', 'epoch_2.pth'))  # deleted, to redo
