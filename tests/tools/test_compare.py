"""tools/compare.py on the toy detector: 2 configs x 2 seeds, killed in the middle and started
again, its report checked against the runs' own logs; runs trained with other options or an
edited config refused, then trained again with --retrain; and the determinism that pairing by
seed relies on."""
import glob
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments.compare import read_logs, train_command
from experiments.paired_stats import paired
from experiments.toy_data import write_coco
from tool_helpers import ROOT

CONFIGS = [osp.join(ROOT, 'configs/demo', name) for name in
           ('faster-rcnn_r18_fpn_toy-coco.py', 'faster-rcnn_r18_fpn_doconv-all_toy-coco.py')]
NAMES = [osp.splitext(osp.basename(c))[0] for c in CONFIGS]
TINY = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
        'default_hooks.logger.interval=1', 'model.test_cfg.rcnn.score_thr=0.0']


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp('compare')
    write_coco(str(ws / 'data' / 'toy_coco'), n_train=8, n_val=4, size=(128, 128), seed=2)
    return ws


def compare(ws, *extra, **kwargs):
    cmd = [sys.executable, osp.join(ROOT, 'tools/compare.py'), *CONFIGS, '--seeds', '0', '1',
           '--work-dir', str(ws / 'work'), '--cfg-options', *TINY, *extra]
    return subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=900, **kwargs)


def attempts(ws, name, seed):
    """How many times a run was started: mmengine makes a timestamped folder per start."""
    return len(glob.glob(str(ws / 'work' / name / f'seed{seed}' / '2*' / 'vis_data')))


def test_compare_resumes_after_a_kill_and_reports_paired_statistics(workspace):
    ws = workspace
    cmd = [sys.executable, osp.join(ROOT, 'tools/compare.py'), *CONFIGS, '--seeds', '0', '1',
           '--work-dir', str(ws / 'work'), '--cfg-options', *TINY]
    proc = subprocess.Popen(cmd, cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # runs go seed by seed: stock seed 0, DO-Conv seed 0, ... Kill all once the second run has
    # saved its first epoch.
    second = ws / 'work' / NAMES[1] / 'seed0' / 'epoch_1.pth'
    deadline = time.time() + 600
    while not second.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert second.exists(), 'the second run never saved its first epoch'
    time.sleep(1)  # let the checkpoint be written whole
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (ws / 'work' / NAMES[1] / 'seed0' / 'epoch_2.pth').exists()

    printed = compare(ws, '--print-commands')
    assert printed.returncode == 0, printed.stderr[-3000:]
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 3  # the finished run is not listed
    assert NAMES[1] in lines[0] and lines[0].endswith('--resume')
    assert 'randomness.seed=0' in lines[0]
    assert all('--resume' not in line for line in lines[1:])

    done = compare(ws)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert attempts(ws, NAMES[0], 0) == 1  # finished before the kill: read, not rerun
    assert attempts(ws, NAMES[1], 0) == 2  # killed, then resumed
    with open(ws / 'work' / NAMES[1] / 'seed0' / 'compare_train.log') as f:
        assert 'resumed epoch: 1' in f.read()

    report = json.loads((ws / 'work' / 'compare.json').read_text())
    assert report['metric'] == 'coco/bbox_mAP' and report['baseline'] == NAMES[0]
    values = {}
    for name in NAMES:
        values[name] = []
        for seed in (0, 1):
            logs = read_logs(str(ws / 'work' / name / f'seed{seed}'))
            values[name].append(logs['val'][max(logs['val'])]['coco/bbox_mAP'])
        assert report['configs'][name]['values'] == values[name]
    expected, got = paired(values[NAMES[1]], values[NAMES[0]]), report['comparisons'][NAMES[1]]
    assert got['diffs'] == pytest.approx(expected.pop('diffs'))
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert f"| {NAMES[1]} |" in done.stdout and '95% CI' in done.stdout
    # the minimum detectable effect beside the interval, as paired() computes it
    assert got['mde'] == pytest.approx(expected['mde'])
    assert f"{expected['p']:.3f} | {expected['mde']:.4f} |" in done.stdout, done.stdout
    assert 'Minimum detectable effect: ' in done.stdout
    assert (ws / 'work' / 'compare.png').stat().st_size > 5000

    collected = compare(ws, '--collect', '--out', str(ws / 'again'))
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert json.loads((ws / 'again.json').read_text()) == report
    assert attempts(ws, NAMES[0], 1) == 1 and attempts(ws, NAMES[1], 1) == 1

    # each run recorded as it finished: with the run folders gone, the records give the report
    record = json.loads((ws / 'work' / 'records' / NAMES[1] / 'seed0.json').read_text())
    assert record['attempts'] == 2 and record['wall_s'] > 0
    assert report['machines'] == [dict(record['machine'], runs=4)]
    assert f"Runs from {record['machine']['cpu']} (" in done.stdout
    for name in NAMES:
        shutil.rmtree(ws / 'work' / name)
    gone = compare(ws, '--collect', '--out', str(ws / 'gone'))
    assert gone.returncode == 0, gone.stderr[-3000:]
    assert json.loads((ws / 'gone.json').read_text()) == report
    again = compare(ws)  # nothing to train: every run is recorded
    assert again.returncode == 0 and not (ws / 'work' / NAMES[0]).exists()


def test_other_options_or_an_edited_config_refuse_then_retrain(workspace, tmp_path):
    """Real runs of seed 0 (one epoch) through configs that only inherit the demo's (same names,
    same resolved config). Another learning rate in --cfg-options: the command, and --collect,
    stop with one line naming the first run and what differs. An edited config: only its run
    differs; --retrain trains that one again from scratch and reads the other."""
    configs = []
    for config in CONFIGS:
        path = tmp_path / 'configs' / osp.basename(config)
        path.parent.mkdir(exist_ok=True)
        path.write_text(f'_base_ = {config!r}\n')
        configs.append(str(path))
    work = tmp_path / 'work'

    def run(*flags, options=()):
        cmd = [sys.executable, osp.join(ROOT, 'tools/compare.py'), *configs, '--seeds', '0',
               '--work-dir', str(work), *flags, '--cfg-options', *TINY,
               'train_cfg.max_epochs=1', *options]
        return subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=900)

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stamps = {name: sorted(os.listdir(work / name / 'seed0')) for name in NAMES}
    for flags in ((), ('--collect',)):
        other = run(*flags, options=['optim_wrapper.optimizer.lr=0.0123'])
        error = other.stderr.strip().splitlines()[-1]  # after the packages' warnings, if any
        assert other.returncode == 1 and other.stderr.count('error:') == 1, other.stderr
        assert error.startswith(
            f"compare.py: error: {NAMES[0]} seed 0 ({work / NAMES[0] / 'seed0'}) was trained "
            "with another fingerprint than this command's, run -> command: "
            "config.optim_wrapper.optimizer.lr: 0.01 -> 0.0123; 1 more runs differ too; "
            "--retrain trains them again"), error

    with open(configs[1], 'a') as f:
        f.write('optim_wrapper = dict(optimizer=dict(lr=0.0123))\n')
    edited = run()
    assert edited.returncode == 1
    assert f'error: {NAMES[1]} seed 0 (' in edited.stderr and 'more runs' not in edited.stderr
    assert 'config.optim_wrapper.optimizer.lr: 0.01 -> 0.0123; --retrain trains it again' \
        in edited.stderr
    retrained = run('--retrain')
    assert retrained.returncode == 0, retrained.stdout[-3000:] + retrained.stderr[-3000:]
    assert sorted(os.listdir(work / NAMES[0] / 'seed0')) == stamps[NAMES[0]]  # read, not rerun
    assert attempts(tmp_path, NAMES[1], 0) == 1  # the old attempt deleted, one new one
    recorded = json.loads((work / NAMES[1] / 'seed0' / 'fingerprint.json').read_text())
    assert recorded['config']['optim_wrapper']['optimizer']['lr'] == 0.0123
    report = json.loads((work / 'compare.json').read_text())
    for name in NAMES:
        logs = read_logs(str(work / name / 'seed0'))
        assert report['configs'][name]['values'] == [logs['val'][max(logs['val'])][
            'coco/bbox_mAP']]


def test_compare_argument_errors(workspace, tmp_path):
    one = subprocess.run([sys.executable, osp.join(ROOT, 'tools/compare.py'), CONFIGS[0],
                          '--work-dir', str(tmp_path)], capture_output=True, text=True)
    assert one.returncode == 2 and 'need a baseline config and at least one other' in one.stderr
    slurm = compare(workspace, '--launcher', 'slurm')  # neither --print-commands nor --collect
    assert slurm.returncode == 2 and '--print-commands gives the commands' in slurm.stderr
    unfinished = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/compare.py'), *CONFIGS, '--seeds', '5',
         '--work-dir', str(tmp_path / 'w'), '--collect'], capture_output=True, text=True)
    assert unfinished.returncode == 1 and '2 runs are not finished' in unfinished.stderr
    both = compare(workspace, '--collect', '--retrain')
    assert both.returncode == 2 and '--retrain trains runs again; --collect only' in both.stderr


def test_the_same_seed_gives_the_same_metric_twice(workspace):
    """Two trainings with one seed end with bit-equal losses and metric on the CPU, so the
    differences tools/compare.py pairs by seed are differences of configs, not of runs."""
    results = []
    for k in range(2):
        work = str(workspace / 'twice' / str(k))
        cmd = train_command(ROOT, CONFIGS[1], work, seed=3, cfg_options=TINY)
        proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results.append(read_logs(work))
    losses = [{i: r['loss'] for i, r in logs['train'].items()} for logs in results]
    metrics = [logs['val'][max(logs['val'])] for logs in results]
    assert len(losses[0]) >= 4 and losses[0] == losses[1]
    assert metrics[0]['coco/bbox_mAP'] == metrics[1]['coco/bbox_mAP']
