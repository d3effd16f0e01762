"""Does DO-Conv's fold quantize worse? ``tools/quant_check.py`` on the study's fine-tuned models
(``tools/study.py --int8``): per task and seed, the DO-Conv-all model (folded by the tool) beside
the stock model of the same seed, and the int8 drops compared paired by seed.

Each check is a run of the command line, as a user runs it, writing
``work_dirs/study/<task>/int8/seed<k>.{md,json}``; a check whose JSON exists is read, not rerun.
"""
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Callable, Dict, Sequence

from .compare import last_checkpoint, run_dir
from .paired_stats import paired
from .study import TASKS

# the stock and the DO-Conv-all fine-tuning configs of each task (TASKS[task]['configs'])
STOCK, ALL = 0, 2
MODES = ('int8_w', 'int8_wa')


def check_seed(root: str, workspace: str, task: str, seed: int, calib: int,
               log: Callable[[str], None] = print) -> dict:
    """The quant_check report of the seed's DO-Conv-all model beside its stock model."""
    study = osp.join(workspace, 'work_dirs', 'study', task)
    out = osp.join(study, 'int8', f'seed{seed}.md')
    json_out = out[:-len('.md')] + '.json'
    if not osp.isfile(json_out):
        stock, do_all = (osp.join(root, TASKS[task]['configs'][i]) for i in (STOCK, ALL))
        cmd = [sys.executable, osp.join(root, 'tools', 'quant_check.py'), do_all,
               last_checkpoint(run_dir(study, do_all, seed)), '--baseline', stock,
               last_checkpoint(run_dir(study, stock, seed)), '--calib', str(calib),
               '--work-dir', osp.join(study, 'int8', f'seed{seed}'), '--out', out]
        log(f'{task} seed {seed}: ' + ' '.join(cmd[1:]))
        os.makedirs(osp.dirname(out), exist_ok=True)
        with open(out[:-len('.md')] + '.log', 'a') as f:
            subprocess.run(cmd, cwd=workspace, check=True, stdout=f, stderr=subprocess.STDOUT)
    with open(json_out) as f:
        return json.load(f)


def run_task(root: str, workspace: str, task: str, seeds: Sequence[int], calib: int = 32,
             log: Callable[[str], None] = print) -> Dict:
    """Every seed's check, and per mode the paired difference of the drops, DO-Conv - stock."""
    reports = {seed: check_seed(root, workspace, task, seed, calib, log) for seed in seeds}
    first = reports[seeds[0]]['models']['model']
    summary = dict(task=task, seeds=list(seeds), calib=calib, metric=first['metric'], runs={},
                   paired={})
    for seed, report in reports.items():
        summary['runs'][seed] = {
            role: dict(fp32=m['metrics']['fp32'][m['metric']], **m['drop'],
                       output_sqnr_w=m['output_sqnr_db']['int8_w'],
                       output_sqnr_wa=m['output_sqnr_db']['int8_wa'],
                       sqnr_db_median=m['weights']['sqnr_db_median'],
                       sqnr_db_min=m['weights']['sqnr_db_min'],
                       worst_layer=m['weights']['worst_layer'])
            for role, m in report['models'].items()}
    for key in ('fp32', *MODES, 'output_sqnr_w', 'output_sqnr_wa', 'sqnr_db_median',
                'sqnr_db_min'):
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

    lines = ['| task | metric | model | fp32 | drop, int8 weights | drop, int8 weights + '
             'activations | raw outputs SQNR dB, int8 weights | raw outputs SQNR dB, + '
             'activations | weight SQNR dB, median layer | worst layer |', '| --- ' * 10 + '|']
    for s in summaries:
        digits = 4 if s['metric'] == 'coco/bbox_mAP' else 2
        for role, label in (('baseline', 'stock'), ('model', 'DO-Conv all, folded')):
            worst = sorted({s['runs'][k][role]['worst_layer'] for k in s['seeds']})
            lines.append(
                f'| {s["task"]} | {s["metric"]} | {label} | {mean(s, role, "fp32"):.{digits}f} | '
                f'{mean(s, role, "int8_w"):+.{digits}f} | {mean(s, role, "int8_wa"):+.{digits}f} '
                f'| {mean(s, role, "output_sqnr_w"):.2f} | {mean(s, role, "output_sqnr_wa"):.2f} '
                f'| {mean(s, role, "sqnr_db_median"):.2f} | '
                f'{mean(s, role, "sqnr_db_min"):.1f} dB ({", ".join(worst)}) |')
        p = s['paired']
        lines.append(f'| {s["task"]} | {s["metric"]} | DO-Conv - stock, paired | '
                     f'{diff(p["fp32"], digits)} | {diff(p["int8_w"], digits)} | '
                     f'{diff(p["int8_wa"], digits)} | {diff(p["output_sqnr_w"], 2)} | '
                     f'{diff(p["output_sqnr_wa"], 2)} | {diff(p["sqnr_db_median"], 2)} | '
                     f'{diff(p["sqnr_db_min"], 1)} dB |')
    return '\n'.join(lines)
