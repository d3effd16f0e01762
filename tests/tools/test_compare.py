"""tools/compare.py on the toy detector: 2 configs x 2 seeds, killed in the middle and started
again, its report checked against the runs' own logs; and the determinism that pairing by seed
relies on."""
import glob
import json
import os
import os.path as osp
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
