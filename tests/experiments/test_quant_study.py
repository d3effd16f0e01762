"""experiments/quant_study.py's summary: per-seed reports (as tools/quant_check.py writes them)
paired by seed, against hand-computed differences; each recorded with the runs, read from the
records when the runs are gone, and made again when a run's checkpoint changes, and only then."""
import json
import os.path as osp
import shutil
import subprocess

import pytest

from experiments import quant_study, records
from experiments.compare import config_name
from experiments.fingerprint import file_id

REAL_RUN = subprocess.run


RECORDS = osp.join('work_dirs', 'study', 'records')  # the study's records, by default


def finished_runs(tmp_path, task, seeds, checkpoint='epoch_6.pth'):
    """The stock and DO-Conv-all runs of each seed, a checkpoint each, recorded (the part of a
    record read here); returns their paths by (role, seed)."""
    paths = {}
    for role, index in (('baseline', quant_study.STOCK), ('model', quant_study.ALL)):
        name = config_name(quant_study.TASKS[task]['configs'][index])
        for seed in seeds:
            run = tmp_path / 'work_dirs' / 'study' / task / name / f'seed{seed}'
            run.mkdir(parents=True, exist_ok=True)
            (run / checkpoint).write_bytes(f'{name} {seed} {checkpoint}'.encode())
            (run / 'last_checkpoint').write_text(str(run / checkpoint))
            paths[role, seed] = str(run / checkpoint)
            records.write(records.record_path(str(tmp_path / RECORDS / task), name, seed), dict(
                config=name, seed=seed, checkpoint=dict(name=checkpoint,
                                                        **file_id(str(run / checkpoint)))))
    return paths


def recorded_check(tmp_path, task, seed, paths, report, engine='torch', calib=32):
    """Record a report as the check of the seed's two runs, as check_seed does."""
    hashes = {role: file_id(paths[role, seed])['sha256'] for role in ('model', 'baseline')}
    records.write(quant_study.int8_record_path(str(tmp_path / RECORDS / task), seed, engine),
                  dict(calib=calib, report=report, sources=hashes))


def report(fp32, drops, sqnr, out=((40.0, 30.0), (41.0, 31.0))):
    """The fields of a quant_check JSON report that the summary reads, for the two roles."""
    def model(f, d, s, o):
        return dict(metric='coco/bbox_mAP', output_sqnr_db=dict(int8_w=o[0], int8_wa=o[1]),
                    metrics=dict(fp32={'coco/bbox_mAP': f}, int8_w={'coco/bbox_mAP': f - d[0]},
                                 int8_wa={'coco/bbox_mAP': f - d[1]}),
                    drop=dict(int8_w=d[0], int8_wa=d[1]),
                    drop_from=dict(int8_w='fp32', int8_wa='fp32'),
                    weights=dict(sqnr_db_median=s, sqnr_db_min=s - 10, worst_layer='rpn_cls'))
    return dict(models=dict(model=model(fp32[0], drops[0], sqnr[0], out[0]),
                            baseline=model(fp32[1], drops[1], sqnr[1], out[1])))


def test_summary_pairs_the_drops_by_seed(tmp_path):
    paths = finished_runs(tmp_path, 'det', [0, 1])
    # seed 0: DO-Conv drops 0.010 / 0.030, stock 0.005 / 0.020;
    # seed 1: DO-Conv 0.020 / 0.040, stock 0.005 / 0.010
    recorded_check(tmp_path, 'det', 0, paths, report(
        (0.30, 0.28), ((0.010, 0.030), (0.005, 0.020)), (40.0, 41.0)))
    recorded_check(tmp_path, 'det', 1, paths, report(
        (0.32, 0.30), ((0.020, 0.040), (0.005, 0.010)), (39.0, 41.5),
        ((38.0, 27.0), (41.0, 30.0))))
    shutil.rmtree(tmp_path / 'work_dirs' / 'study' / 'det')  # the runs gone, their records kept
    s = quant_study.run_task('unused-root', str(tmp_path), 'det', [0, 1])  # both read, none run
    assert s['metric'] == 'coco/bbox_mAP'
    assert s['paired']['fp32']['diffs'] == pytest.approx([0.02, 0.02], abs=1e-12)
    assert s['paired']['int8_w']['diffs'] == pytest.approx([0.005, 0.015], abs=1e-12)
    assert s['paired']['int8_wa']['mean'] == pytest.approx((0.010 + 0.030) / 2, abs=1e-12)
    assert s['paired']['sqnr_db_median']['diffs'] == pytest.approx([-1.0, -2.5], abs=1e-12)
    assert s['paired']['output_sqnr_w']['diffs'] == pytest.approx([-1.0, -3.0], abs=1e-12)
    assert s['paired']['output_sqnr_wa']['diffs'] == pytest.approx([-1.0, -3.0], abs=1e-12)
    # two pairs (0.005, 0.015): sd 0.005 sqrt 2, standard error 0.005, t = 0.010 / 0.005 = 2;
    # the interval's half width is t(0.975, 1) = 12.7062047 standard errors
    assert s['paired']['int8_w']['t'] == pytest.approx(2.0, rel=1e-9)
    assert s['paired']['int8_w']['ci_high'] - 0.010 == pytest.approx(12.7062047 * 0.005, rel=1e-6)
    rows = quant_study.markdown([s]).splitlines()
    assert 'weight SQNR dB (BN folded), median layer' in rows[0]
    assert rows[2].startswith('| det | coco/bbox_mAP | stock | 0.2900 | +0.0050 | +0.0150 | 41.00 '
                              '| 30.50 | 41.25 | 31.2 dB (rpn_cls) |')
    assert rows[3].startswith('| det | coco/bbox_mAP | DO-Conv all, folded | 0.3100 | +0.0150 | '
                              '+0.0350 | 39.00 | 28.50 | 39.50 | 29.5 dB (rpn_cls) |')
    assert rows[4].startswith('| det | coco/bbox_mAP | DO-Conv - stock, paired | +0.0200')


def engine_report(fp32, drop, sqnr, layer, ms, export=(0.0, 0.0)):
    """The fields of a quant_check --engine onnxruntime JSON report the summary reads: per role
    (model, baseline) the fp32 metric, the export's drop (ONNX fp32 from PyTorch fp32) and the int8
    drop (ONNX int8 from ONNX fp32), raw-output and layer SQNR, latency."""
    def model(f, d, s, q, e):
        return dict(metric='mIoU', metrics=dict(fp32={'mIoU': f}, onnx_fp32={'mIoU': f - e},
                                                onnx_int8={'mIoU': f - e - d}),
                    drop=dict(onnx_fp32=e, onnx_int8=d),
                    drop_from=dict(onnx_fp32='fp32', onnx_int8='onnx_fp32'),
                    output_sqnr_db=dict(onnx_int8=s),
                    layer_outputs=dict(sqnr_db_median=q, sqnr_db_min=q - 5,
                                       worst_layer='net:/conv_seg/Conv'))
    return dict(models=dict(model=model(fp32[0], drop[0], sqnr[0], layer[0], export[0]),
                            baseline=model(fp32[1], drop[1], sqnr[1], layer[1], export[1])),
                latency={role: dict(fp32=dict(median_ms=t[0]), int8=dict(median_ms=t[1]))
                         for role, t in zip(('model', 'baseline'), ms)})


def test_engine_summary_pairs_by_seed_and_reads_its_own_files(tmp_path):
    paths = finished_runs(tmp_path, 'seg', [0, 1])
    recorded_check(tmp_path, 'seg', 0, paths, engine_report(
        (80.0, 81.0), (0.5, 0.25), (30.0, 31.0), (28.0, 29.0), ((10.0, 12.0), (11.0, 12.5)),
        export=(0.02, 0.0)), engine='onnxruntime')
    recorded_check(tmp_path, 'seg', 1, paths, engine_report(
        (79.0, 79.5), (0.75, 0.25), (29.0, 31.0), (27.5, 29.0), ((10.5, 12.0), (10.0, 12.0))),
        engine='onnxruntime')
    # the simulation's records of the same seeds are other files: not read here
    recorded_check(tmp_path, 'seg', 0, paths, dict(models={}))
    s = quant_study.run_task('unused-root', str(tmp_path), 'seg', [0, 1], engine='onnxruntime')
    assert s['engine'] == 'onnxruntime' and s['metric'] == 'mIoU'
    p = s['paired']
    assert p['fp32']['diffs'] == pytest.approx([-1.0, -0.5], abs=1e-12)
    assert p['onnx_int8']['diffs'] == pytest.approx([0.25, 0.5], abs=1e-12)
    assert p['onnx_fp32']['diffs'] == pytest.approx([0.02, 0.0], abs=1e-12)
    assert p['output_sqnr']['diffs'] == pytest.approx([-1.0, -2.0], abs=1e-12)
    assert p['sqnr_db_median']['diffs'] == pytest.approx([-1.0, -1.5], abs=1e-12)
    assert p['sqnr_db_min']['diffs'] == pytest.approx([-1.0, -1.5], abs=1e-12)
    assert p['fp32_ms']['diffs'] == pytest.approx([-1.0, 0.5], abs=1e-12)
    assert p['int8_ms']['diffs'] == pytest.approx([-0.5, 0.0], abs=1e-12)
    rows = quant_study.markdown([s]).splitlines()
    assert rows[0] == ('| task | metric | model | fp32 (PyTorch) | drop, ONNX fp32 from PyTorch '
                       'fp32 | drop, ONNX int8 from ONNX fp32 | raw outputs SQNR dB, ONNX int8 '
                       'from ONNX fp32 | layer outputs SQNR dB, median layer | latency ms, '
                       'ONNX fp32 | latency ms, ONNX int8 | worst layer |')
    assert rows[2] == ('| seg | mIoU | stock | 80.25 | +0.00 | +0.25 | 31.00 | 29.00 | 10.5 | '
                       '12.2 | 24.0 dB (net:/conv_seg/Conv) |')
    assert rows[3] == ('| seg | mIoU | DO-Conv all, folded | 79.50 | +0.01 | +0.62 | 29.50 | '
                       '27.75 | 10.2 | 12.0 | 22.8 dB (net:/conv_seg/Conv) |')
    assert rows[4].startswith('| seg | mIoU | DO-Conv - stock, paired | -0.75 [')


def test_a_report_is_made_again_when_a_run_changes(tmp_path, monkeypatch):
    """tools/quant_check.py replaced by a stand-in that writes its report and notes the two
    checkpoints it was given: a seed's report is made once, read while its runs' checkpoints
    stay, and made again from the new ones when the runs are resumed."""
    paths = finished_runs(tmp_path, 'det', [0])
    made = []

    def quant_check(cmd, cwd=None, check=False, stdout=None, stderr=None, **kwargs):
        if cmd[0] == 'git':  # the record's commit
            return REAL_RUN(cmd, cwd=cwd, check=check, stdout=stdout, stderr=stderr, **kwargs)
        made.append((cmd[3], cmd[cmd.index('--baseline') + 2]))
        out = cmd[cmd.index('--out') + 1]
        with open(out[:-len('.md')] + '.json', 'w') as f:
            json.dump(report((0.30 + 0.01 * len(made), 0.28), ((0.01, 0.03), (0.005, 0.02)),
                             (40.0, 41.0)), f)

    monkeypatch.setattr(quant_study.subprocess, 'run', quant_check)
    first = quant_study.check_seed('root', str(tmp_path), 'det', 0, 8, log=lambda msg: None)
    assert made == [(paths['model', 0], paths['baseline', 0])]
    assert quant_study.check_seed('root', str(tmp_path), 'det', 0, 8, log=lambda m: None) == first
    assert len(made) == 1
    resumed = finished_runs(tmp_path, 'det', [0], checkpoint='epoch_8.pth')
    again = quant_study.check_seed('root', str(tmp_path), 'det', 0, 8, log=lambda msg: None)
    assert made[1] == (resumed['model', 0], resumed['baseline', 0])
    assert again['models']['model']['metrics']['fp32']['coco/bbox_mAP'] == pytest.approx(0.32)
    recorded = json.loads(open(quant_study.int8_record_path(
        str(tmp_path / RECORDS / 'det'), 0, 'torch')).read())
    assert recorded['sources'] == {role: file_id(resumed[role, 0])['sha256']
                                   for role in ('model', 'baseline')}
    assert recorded['report'] == again and recorded['calib'] == 8
    assert recorded['machine'] == records.machine()
    # the runs gone: the recorded check is read; with another calibration size it cannot be made
    shutil.rmtree(tmp_path / 'work_dirs' / 'study' / 'det')
    assert quant_study.check_seed('root', str(tmp_path), 'det', 0, 8, log=lambda m: None) == again
    with pytest.raises(RuntimeError, match=r"^det seed 0: the int8 check \(torch\) is not recorded "
                       r"and the runs' checkpoints are not here; tools/study.py --int8 trains "
                       r"them again first$"):
        quant_study.check_seed('root', str(tmp_path), 'det', 0, 16, log=lambda m: None)
    need = quant_study.needs_checkpoint(str(tmp_path / RECORDS / 'det'), 'det', 8, ['torch'])
    configs = quant_study.TASKS['det']['configs']
    assert not need(configs[quant_study.ALL], 0, None)  # recorded
    assert need(configs[quant_study.ALL], 0, None) == need(configs[quant_study.STOCK], 0, None)
    assert need(configs[quant_study.ALL], 1, None)  # seed 1: nothing recorded
    assert not need(configs[1], 1, None)  # DO-Conv head is not checked
    assert quant_study.needs_checkpoint(str(tmp_path / RECORDS / 'det'), 'det', 8, [
        'torch', 'onnxruntime'])(configs[quant_study.ALL], 0, None)  # no engine check recorded


def test_a_report_of_an_earlier_version_is_checked_again(tmp_path, monkeypatch):
    """A report without ``drop_from`` (drops all from PyTorch fp32, weight SQNR before BN folding)
    is not read: the seed's check runs again, and its new report is what the summary reads."""
    paths = finished_runs(tmp_path, 'det', [0])
    stale = report((0.30, 0.28), ((0.010, 0.030), (0.005, 0.020)), (40.0, 41.0))
    for m in stale['models'].values():
        del m['drop_from']
    recorded_check(tmp_path, 'det', 0, paths, stale)  # of the runs' current checkpoints
    fresh = report((0.30, 0.28), ((0.020, 0.030), (0.005, 0.020)), (40.0, 41.0))
    commands = []

    def fake_run(cmd, **kwargs):  # what tools/quant_check.py writes: the JSON beside --out
        if cmd[0] == 'git':  # the record's commit
            return REAL_RUN(cmd, **kwargs)
        commands.append(cmd)
        out = cmd[cmd.index('--out') + 1]
        with open(out[:-len('.md')] + '.json', 'w') as f:
            json.dump(fresh, f)

    monkeypatch.setattr(quant_study.subprocess, 'run', fake_run)
    s = quant_study.run_task('root', str(tmp_path), 'det', [0], log=lambda msg: None)
    assert len(commands) == 1 and commands[0][1].endswith('tools/quant_check.py')
    assert s['paired']['int8_w']['diffs'] == pytest.approx([0.015], abs=1e-12)
    quant_study.run_task('root', str(tmp_path), 'det', [0], log=lambda msg: None)
    assert len(commands) == 1  # a current report is read, not checked again
