"""Does DO-Conv's fold quantize worse? ``tools/quant_check.py`` on the study's fine-tuned models
(``tools/study.py --int8``): per task and seed, the DO-Conv-all model (folded by the tool) beside
the stock model of the same seed, and the int8 drops compared paired by seed.

Each check is a run of the command line, as a user runs it, writing
``work_dirs/study/<task>/int8/seed<k>.{md,json}``, and is recorded beside the runs' records
(``<records>/<task>/int8/seed<k>[.<engine>].json``: the report, the two checkpoints' hashes, the
calibration size, the machine, the commit; :mod:`.records`). A recorded check is read, not rerun,
while its two checkpoints are the ones the runs' records hold and a version that reports each drop
against its own reference wrote it (``drop_from``); it runs again otherwise, from the
checkpoints, which must then be on disk.
"""
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Callable, Dict, Optional, Sequence

from . import records
from .compare import config_name, last_checkpoint, run_dir
from .fingerprint import sources
from .paired_stats import paired
from .study import TASKS

# the stock and the DO-Conv-all fine-tuning configs of each task (TASKS[task]['configs'])
STOCK, ALL = 0, 2
# per engine (tools/quant_check.py --engine), the figures of a model's report the summary pairs:
# (key, column, kind, how to read it); kinds: 'metric' (the task's digits), 'drop' (signed),
# 'db' and 'ms' (2 and 1 digits)
FIELDS = {
    'torch': [
        ('fp32', 'fp32', 'metric', lambda m: m['metrics']['fp32'][m['metric']]),
        ('int8_w', 'drop, int8 weights', 'drop', lambda m: m['drop']['int8_w']),
        ('int8_wa', 'drop, int8 weights + activations', 'drop', lambda m: m['drop']['int8_wa']),
        ('output_sqnr_w', 'raw outputs SQNR dB, int8 weights', 'db',
         lambda m: m['output_sqnr_db']['int8_w']),
        ('output_sqnr_wa', 'raw outputs SQNR dB, + activations', 'db',
         lambda m: m['output_sqnr_db']['int8_wa']),
        ('sqnr_db_median', 'weight SQNR dB (BN folded), median layer', 'db',
         lambda m: m['weights']['sqnr_db_median'])],
    'onnxruntime': [
        ('fp32', 'fp32 (PyTorch)', 'metric', lambda m: m['metrics']['fp32'][m['metric']]),
        ('onnx_fp32', 'drop, ONNX fp32 from PyTorch fp32', 'drop',
         lambda m: m['drop']['onnx_fp32']),
        ('onnx_int8', 'drop, ONNX int8 from ONNX fp32', 'drop', lambda m: m['drop']['onnx_int8']),
        ('output_sqnr', 'raw outputs SQNR dB, ONNX int8 from ONNX fp32', 'db',
         lambda m: m['output_sqnr_db']['onnx_int8']),
        ('sqnr_db_median', 'layer outputs SQNR dB, median layer', 'db',
         lambda m: m['layer_outputs']['sqnr_db_median'])]}
LATENCY = [('fp32_ms', 'latency ms, ONNX fp32', 'ms', 'fp32'),
           ('int8_ms', 'latency ms, ONNX int8', 'ms', 'int8')]
SUMMARY = {'torch': 'weights', 'onnxruntime': 'layer_outputs'}  # where the worst layer is


def report_path(study: str, seed: int, engine: str) -> str:
    """The seed's Markdown report; the simulation's keeps its old name (seed<k>.md)."""
    suffix = '' if engine == 'torch' else f'.{engine}'
    return osp.join(study, 'int8', f'seed{seed}{suffix}.md')


def current(report: dict) -> bool:
    """Whether ``report`` is of this version: drops each from its own reference (``drop_from``)
    and the weight SQNR on the kernels as deployed."""
    return all('drop_from' in m for m in report['models'].values())


def int8_record_path(task_records: str, seed: int, engine: str) -> str:
    suffix = '' if engine == 'torch' else f'.{engine}'
    return osp.join(task_records, 'int8', f'seed{seed}{suffix}.json')


def _runs(task_records: str, task: str, seed: int) -> Optional[Dict[str, dict]]:
    """The records of the seed's DO-Conv-all ('model') and stock ('baseline') runs, or None where
    one is missing."""
    out = {}
    for role, index in (('model', ALL), ('baseline', STOCK)):
        name = config_name(TASKS[task]['configs'][index])
        out[role] = records.read(records.record_path(task_records, name, seed))
    return None if None in out.values() else out


def recorded(task_records: str, task: str, seed: int, calib: int, engine: str) -> Optional[dict]:
    """The seed's recorded check, if it is of the two runs' recorded checkpoints, with ``calib``
    calibration images, by this version; else None."""
    record = records.read(int8_record_path(task_records, seed, engine))
    runs = _runs(task_records, task, seed)
    if record is None or runs is None or record['calib'] != calib or \
            not current(record['report']) or \
            record['sources'] != {r: run['checkpoint']['sha256'] for r, run in runs.items()}:
        return None
    return record['report']


def needs_checkpoint(task_records: str, task: str, calib: int, engines: Sequence[str]):
    """For :meth:`.compare.Comparison.train`: the stock and DO-Conv-all runs of a seed are needed
    on this machine while a check of that seed is not recorded."""
    names = {config_name(TASKS[task]['configs'][i]) for i in (STOCK, ALL)}

    def need(config, seed, record):
        return config_name(config) in names and any(
            recorded(task_records, task, seed, calib, e) is None for e in engines)

    return need


def check_seed(root: str, workspace: str, task: str, seed: int, calib: int,
               engine: str = 'torch', log: Callable[[str], None] = print,
               records_dir: Optional[str] = None) -> dict:
    """The quant_check report of the seed's DO-Conv-all model beside its stock model: its record
    (``records_dir``/``task``/int8, default ``workspace``/work_dirs/study/records) where it is of
    the runs' recorded checkpoints, else checked from the checkpoints, which must be those, and
    recorded."""
    study = osp.join(workspace, 'work_dirs', 'study', task)
    task_records = osp.join(records_dir or osp.join(workspace, 'work_dirs', 'study', 'records'),
                            task)
    report = recorded(task_records, task, seed, calib, engine)
    if report is not None:
        return report
    out = report_path(study, seed, engine)
    stock, do_all = (osp.join(root, TASKS[task]['configs'][i]) for i in (STOCK, ALL))
    runs = _runs(task_records, task, seed)
    if runs is None:
        raise RuntimeError(f'{task} seed {seed}: its stock and DO-Conv-all runs are not both '
                           f'recorded in {task_records}; tools/study.py trains them first')
    try:
        checkpoints = dict(model=last_checkpoint(run_dir(study, do_all, seed)),
                           baseline=last_checkpoint(run_dir(study, stock, seed)))
    except FileNotFoundError:
        raise RuntimeError(f'{task} seed {seed}: the int8 check ({engine}) is not recorded and '
                           f'the runs\' checkpoints are not here; tools/study.py --int8 trains '
                           f'them again first') from None
    source = sources(**checkpoints)  # the runs' recorded checkpoints, or the records first
    if any(source[r]['sha256'] != runs[r]['checkpoint']['sha256'] for r in source):
        raise RuntimeError(f'{task} seed {seed}: the checkpoints {checkpoints} are not the ones '
                           f'the runs\' records hold; tools/study.py records them first')
    work = osp.join(study, 'int8', f'seed{seed}' + ('' if engine == 'torch' else f'-{engine}'))
    cmd = [sys.executable, osp.join(root, 'tools', 'quant_check.py'), do_all,
           checkpoints['model'], '--baseline', stock, checkpoints['baseline'], '--calib',
           str(calib), '--engine', engine, '--work-dir', work, '--out', out]
    log(f'{task} seed {seed}: ' + ' '.join(cmd[1:]))
    os.makedirs(osp.dirname(out), exist_ok=True)
    with open(out[:-len('.md')] + '.log', 'a') as f:
        subprocess.run(cmd, cwd=workspace, check=True, stdout=f, stderr=subprocess.STDOUT)
    with open(out[:-len('.md')] + '.json') as f:
        report = json.load(f)
    records.write(int8_record_path(task_records, seed, engine), dict(
        calib=calib, sources={r: c['sha256'] for r, c in source.items()}, report=report,
        machine=records.machine(), **records.commit(root)))
    return report


def run_task(root: str, workspace: str, task: str, seeds: Sequence[int], calib: int = 32,
             engine: str = 'torch', log: Callable[[str], None] = print,
             records_dir: Optional[str] = None) -> Dict:
    """Every seed's check (:func:`check_seed`), and per figure the paired difference, DO-Conv -
    stock."""
    reports = {seed: check_seed(root, workspace, task, seed, calib, engine, log, records_dir)
               for seed in seeds}
    first = reports[seeds[0]]['models']['model']
    summary = dict(task=task, engine=engine, seeds=list(seeds), calib=calib,
                   metric=first['metric'], runs={}, paired={})
    keys = [key for key, *_ in FIELDS[engine]] + ['sqnr_db_min']
    for seed, report in reports.items():
        summary['runs'][seed] = {}
        for role, m in report['models'].items():
            worst = m[SUMMARY[engine]]
            run = {key: read(m) for key, _, _, read in FIELDS[engine]}
            run.update(sqnr_db_min=worst['sqnr_db_min'], worst_layer=worst['worst_layer'])
            if engine != 'torch':
                run.update({key: report['latency'][role][p]['median_ms']
                            for key, _, _, p in LATENCY})
            summary['runs'][seed][role] = run
    if engine != 'torch':
        keys += [key for key, *_ in LATENCY]
    for key in keys:
        summary['paired'][key] = paired([summary['runs'][s]['model'][key] for s in seeds],
                                        [summary['runs'][s]['baseline'][key] for s in seeds])
    return summary


def markdown(summaries: Sequence[dict]) -> str:
    """One row per task: stock and DO-Conv-all (mean over seeds) and the paired difference."""
    def mean(summary, role, key):
        values = [summary['runs'][s][role][key] for s in summary['seeds']]
        return sum(values) / len(values)

    def diff(p, digits):
        ci = '' if p['ci_low'] is None else (
            f' [{p["ci_low"]:+.{digits}f}, {p["ci_high"]:+.{digits}f}], p {p["p"]:.3f}')
        return f'{p["mean"]:+.{digits}f}{ci}'

    engine = summaries[0].get('engine', 'torch')
    fields = [f[:3] for f in FIELDS[engine]]
    if engine != 'torch':
        fields += [f[:3] for f in LATENCY]
    lines = ['| task | metric | model | ' + ' | '.join(label for _, label, _ in fields)
             + ' | worst layer |', '| --- ' * (len(fields) + 4) + '|']
    for s in summaries:
        metric_digits = 4 if s['metric'] == 'coco/bbox_mAP' else 2
        digits = dict(metric=metric_digits, drop=metric_digits, db=2, ms=1)
        for role, label in (('baseline', 'stock'), ('model', 'DO-Conv all, folded')):
            worst = sorted({s['runs'][k][role]['worst_layer'] for k in s['seeds']})
            cells = [f'{mean(s, role, key):{"+" if kind == "drop" else ""}.{digits[kind]}f}'
                     for key, _, kind in fields]
            lines.append(f'| {s["task"]} | {s["metric"]} | {label} | ' + ' | '.join(cells)
                         + f' | {mean(s, role, "sqnr_db_min"):.1f} dB ({", ".join(worst)}) |')
        p = s['paired']
        cells = [diff(p[key], digits[kind]) for key, _, kind in fields]
        lines.append(f'| {s["task"]} | {s["metric"]} | DO-Conv - stock, paired | '
                     + ' | '.join(cells) + f' | {diff(p["sqnr_db_min"], 1)} dB |')
    return '\n'.join(lines)
