"""Does a config change help, or is it seed noise? Train N seeds of two or more configs, each seed
shared by all configs (the same initialisation of shared weights, the same data order), and
compare their final metric seed by seed (``tools/compare.py``).

Each run lives in ``WORK_DIR/<config name>/seed<k>`` and goes through this checkout's
tools/train.py (one process, or torchrun through tools/dist_train.sh; for tools/slurm_train.sh the
commands are printed). A run is finished when its last checkpoint is the schedule's last and its
logs hold a validation metric; finished runs are read, never rerun; an unfinished one with a
checkpoint resumes from it (``--resume``), one without starts again. Each run's folder holds the
fingerprint of what trains it (:mod:`.fingerprint`: the resolved config, the seed, the
checkpoints the config loads, the package versions, the pinned CPU kernels of
:mod:`.kernels`), written before it starts; a run with a
checkpoint whose fingerprint is not the command's is neither read nor resumed: the command stops
with an error that names it and what differs, and ``retrain`` trains it again from scratch.
Each finished run is recorded (:mod:`.records`, in ``RECORDS/<config name>/seed<k>.json``): a run
recorded with the command's fingerprint is not trained again, and the report is made from the
records alone, so that the run folders can go. The report: per config mean ± std over seeds,
the value of every run, and for every config against the first the paired differences, their
mean, 95% confidence interval and the paired t-test p-value (:mod:`.paired_stats`), the
machines the runs came from; as Markdown, JSON and a PNG of the loss and metric curves (mean over
seeds, with a band from the lowest to the highest seed).
"""
import glob
import json
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from doconv_mm.atomic import write_files

from . import records
from .records import describe
from .fingerprint import (FILE, differences, read_fingerprint, resolved_config, run_fingerprint,
                          training_code, write_fingerprint)
from .kernels import kernel_env
from .paired_stats import paired

DEFAULT_METRICS = ('coco/bbox_mAP', 'mIoU')  # mmdet's and mmseg's headline metrics
LAUNCHERS = ('none', 'pytorch', 'slurm')


def config_name(config: str) -> str:
    return osp.splitext(osp.basename(config))[0]


def run_dir(work_dir: str, config: str, seed: int) -> str:
    return osp.join(work_dir, config_name(config), f'seed{seed}')


def seed_options(seed: int) -> List[str]:
    """The seed of everything random in a run: initialisation and augmentation
    (``randomness.seed``) and the data order (the sampler's own seed, set explicitly so that it
    does not depend on what else drew random numbers before the data loader was built)."""
    return [f'randomness.seed={seed}', f'train_dataloader.sampler.seed={seed}']


def train_command(root: str, config: str, work_dir: str, seed: int, launcher: str = 'none',
                  gpus: int = 1, cfg_options: Sequence[str] = (),
                  resume: bool = False) -> List[str]:
    """The command that trains one run with this checkout's tools."""
    tools = osp.join(root, 'tools')
    options = ['--cfg-options', *seed_options(seed), *cfg_options]
    options += ['--resume'] if resume else []
    if launcher == 'none':
        return [sys.executable, osp.join(tools, 'train.py'), config, '--work-dir', work_dir,
                *options]
    if launcher == 'pytorch':
        return ['bash', osp.join(tools, 'dist_train.sh'), config, str(gpus), '--work-dir',
                work_dir, *options]
    if launcher == 'slurm':
        return ['bash', osp.join(tools, 'slurm_train.sh'), '${PARTITION}',
                f'{config_name(config)}-seed{seed}', config, work_dir, *options]
    raise ValueError(f'launcher={launcher!r} is not supported; allowed: {", ".join(LAUNCHERS)}')


def final_checkpoint(cfg: dict) -> str:
    """The file name of the schedule's last checkpoint (``cfg`` resolved): ``epoch_N.pth`` or
    ``iter_N.pth``."""
    loop = cfg['train_cfg']
    if loop.get('type', 'EpochBasedTrainLoop') in ('EpochBasedTrainLoop', 'EpochBasedLoop') \
            and 'max_epochs' in loop and loop.get('by_epoch', True):
        return f"epoch_{loop['max_epochs']}.pth"
    return f"iter_{loop['max_iters']}.pth"


def read_logs(work_dir: str) -> Dict[str, Dict[int, dict]]:
    """mmengine's scalar logs of a run, all its attempts merged (a later attempt's record for a
    step replaces an earlier one): ``{'train': {iter: record}, 'val': {step: record}}``."""
    logs = {'train': {}, 'val': {}}
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'loss' in record and 'iter' in record:
                    logs['train'][record['iter']] = record
                elif 'step' in record and 'loss' not in record:
                    logs['val'][record['step']] = record
    return logs


def pick_metric(record: dict, metric: Optional[str]) -> str:
    """``metric``, or the first of mmdet's and mmseg's headline metrics the record holds."""
    names = [metric] if metric else list(DEFAULT_METRICS)
    for name in names:
        if name in record:
            return name
    raise KeyError(f'metric={metric!r} is not in the validation log; it holds: '
                   f'{", ".join(k for k in record if k != "step")}')


def last_checkpoint(work_dir: str) -> str:
    """The path of the run's newest checkpoint, as mmengine records it."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def run_state(work_dir: str, final: str) -> str:
    """'finished', 'resumable' (has a checkpoint) or 'new'."""
    try:
        last = osp.basename(last_checkpoint(work_dir))
    except OSError:
        return 'new'
    if last == final and read_logs(work_dir)['val']:
        return 'finished'
    return 'resumable'


def record_values(record: dict, metric: Optional[str]) -> dict:
    """A run's final metric and its curves, from its record (:mod:`.records`)."""
    name = pick_metric(dict(record['final'], step=record['final_step']), metric)
    return dict(metric=name, value=record['final'][name],
                loss=[tuple(p) for p in record['curves']['loss']],
                val=[(s, r[name]) for s, r in record['curves']['val'] if name in r])


class StaleRun(RuntimeError):
    """A run that another config, seed, checkpoint or package version trained."""


def fingerprint_differences(work_dir: str, fingerprint: dict) -> List[str]:
    """What differs between the run's recorded fingerprint and ``fingerprint``, recorded ->
    given (:func:`.fingerprint.differences`); a run without one differs."""
    recorded = read_fingerprint(work_dir)
    if recorded is None:
        return [f'no {FILE} (trained before runs recorded one)']
    return differences(recorded, fingerprint)


def stale_message(run: str, work_dir: str, diff: Sequence[str], others: int = 0) -> str:
    """The one-line error of a run trained with another fingerprint (``others``: how many more
    runs differ)."""
    more = f' (and {len(diff) - 3} more)' if len(diff) > 3 else ''
    also = f'; {others} more runs differ too' if others else ''
    return (f'{run} ({work_dir}) was trained with another fingerprint than this command\'s, '
            f'run -> command: {"; ".join(diff[:3])}{more}{also}; --retrain trains '
            f'{"them" if others else "it"} again, or give another --work-dir')


class Comparison:
    """The runs of ``configs`` x ``seeds`` under ``work_dir``, trained in ``cwd`` (where relative
    data paths point; default: this process's), each finished run recorded in ``records``
    (default ``work_dir``/records; :mod:`.records`); see the module doc. With ``retrain``, runs
    whose folder or record holds another fingerprint than this command's are deleted and trained
    again. ``checkpoints``: the :func:`.fingerprint.file_id` of checkpoints the configs load that
    are not on this machine (the study's pretrained backbone, known from its record)."""

    def __init__(self, root: str, configs: Sequence[str], seeds: Sequence[int], work_dir: str,
                 cfg_options: Sequence[str] = (), metric: Optional[str] = None,
                 launcher: str = 'none', gpus: int = 1, cwd: Optional[str] = None,
                 retrain: bool = False, records: Optional[str] = None,
                 checkpoints: Optional[Dict[str, dict]] = None) -> None:
        if len(configs) < 2 or len(set(map(config_name, configs))) != len(configs):
            raise ValueError(f'configs: need two or more with distinct file names, got {configs}')
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f'seeds: need one or more distinct seeds, got {seeds}')
        if launcher not in LAUNCHERS:
            raise ValueError(f'launcher={launcher!r} is not supported; allowed: '
                             f'{", ".join(LAUNCHERS)}')
        self.root, self.configs, self.seeds = root, list(configs), list(seeds)
        self.work_dir, self.cfg_options = work_dir, list(cfg_options)
        self.metric, self.launcher, self.gpus, self.cwd = metric, launcher, gpus, cwd
        self.retrain, self.checkpoints = retrain, dict(checkpoints or {})
        self.records = records or osp.join(work_dir, 'records')
        self.resolved = {c: resolved_config(c, cfg_options) for c in configs}
        self.final = {c: final_checkpoint(self.resolved[c]) for c in configs}
        self._fingerprints = {}

    def runs(self):
        """(config, seed, folder) of every run, the configs of a seed one after the other."""
        return [(c, s, run_dir(self.work_dir, c, s)) for s in self.seeds for c in self.configs]

    def fingerprint(self, config: str, seed: int) -> dict:
        """This command's fingerprint of the run (:func:`.fingerprint.run_fingerprint`)."""
        if config not in self._fingerprints:
            self._fingerprints[config] = run_fingerprint(self.resolved[config], 0, self.cwd,
                                                         self.checkpoints)
        return dict(self._fingerprints[config], seed=seed)

    def record_path(self, config: str, seed: int) -> str:
        return records.record_path(self.records, config_name(config), seed)

    def record(self, config: str, seed: int) -> Optional[dict]:
        return records.read(self.record_path(config, seed))

    def stale(self) -> List[Tuple[str, int, str, List[str]]]:
        """The runs whose folder (with a checkpoint) or record holds another fingerprint than
        this command's, each with the stale folder or record and what differs."""
        out = []
        for config, seed, work_dir in self.runs():
            fingerprint = self.fingerprint(config, seed)
            diff = []
            if run_state(work_dir, self.final[config]) != 'new':
                diff, where = fingerprint_differences(work_dir, fingerprint), work_dir
            record = self.record(config, seed)
            if not diff and record is not None:
                diff = differences(record['fingerprint'], fingerprint)
                where = self.record_path(config, seed)
            if diff:
                out.append((config, seed, where, diff))
        return out

    def _refuse_stale(self, retrain: bool) -> None:
        """Stop at runs another fingerprint trained or, with ``retrain``, delete their folders
        and records."""
        stale = self.stale()
        if stale and not retrain:
            config, seed, where, diff = stale[0]
            raise StaleRun(stale_message(f'{config_name(config)} seed {seed}', where, diff,
                                         len(stale) - 1))
        for config, seed, _, _ in stale:
            if osp.isdir(run_dir(self.work_dir, config, seed)):
                shutil.rmtree(run_dir(self.work_dir, config, seed))
            if osp.isfile(self.record_path(config, seed)):
                os.remove(self.record_path(config, seed))

    def _prepare(self, need_checkpoint=None) -> List[Tuple[str, int, str, str]]:
        """Every run with its state: 'recorded' (a record of this command's fingerprint; its
        folder is not needed, unless ``need_checkpoint(config, seed, record)``), else its folder's
        (:func:`run_state`). Stale runs are refused or deleted first. The configs of a seed train
        on one machine: where one of them trains here, those recorded on another machine train
        here too. The fingerprint of every run about to start is written."""
        self._refuse_stale(self.retrain)
        here, plan = records.machine()['id'], []
        for seed in self.seeds:
            group = []
            for config in self.configs:
                work_dir = run_dir(self.work_dir, config, seed)
                state, record = run_state(work_dir, self.final[config]), self.record(config, seed)
                if state != 'finished' and record is not None and not (
                        need_checkpoint and need_checkpoint(config, seed, record)):
                    state = 'recorded'
                group.append([config, seed, work_dir, state, record])
            if any(run[3] in ('new', 'resumable') for run in group):
                for run in group:
                    if run[3] == 'recorded' and run[4]['machine']['id'] != here:
                        run[3] = run_state(run[2], self.final[run[0]])
            plan += group
        for config, seed, work_dir, state, _ in plan:
            if state == 'new':
                write_fingerprint(work_dir, self.fingerprint(config, seed))
        return [(config, seed, work_dir, state) for config, seed, work_dir, state, _ in plan]

    def _write_record(self, config: str, seed: int) -> None:
        """The record of a finished run, from its folder."""
        work_dir = run_dir(self.work_dir, config, seed)
        records.write(self.record_path(config, seed), records.from_run(
            self.root, work_dir, config_name(config), seed, self.fingerprint(config, seed),
            read_logs(work_dir), last_checkpoint(work_dir)))

    def command(self, config: str, seed: int, resume: bool) -> List[str]:
        return train_command(self.root, config, run_dir(self.work_dir, config, seed), seed,
                             self.launcher, self.gpus, self.cfg_options, resume)

    def pending(self, need_checkpoint=None) -> List[Tuple[str, int, str, str]]:
        """The runs to train: (config, seed, folder, 'new' or 'resumable')."""
        return [run for run in self._prepare(need_checkpoint) if run[3] in ('new', 'resumable')]

    def pending_commands(self) -> List[List[str]]:
        """The commands that would finish every run not finished yet."""
        return [self.command(c, s, state == 'resumable') for c, s, _, state in self.pending()]

    def train(self, progress=None, need_checkpoint=None, after_seed=None) -> None:
        """Train every run not finished yet (and, where ``need_checkpoint(config, seed,
        record)``, every recorded run whose folder is not here), one after the other, with the
        CPU kernels pinned (:func:`.kernels.kernel_env`), each recorded when it finishes; each
        run's output goes to ``compare_train.log`` in its folder. ``progress`` is called after
        every run, ``after_seed(seed)`` after the last run of every seed (to evaluate a seed's
        runs while their checkpoints are here, before the next seed trains)."""
        plan = self._prepare(need_checkpoint)
        for k, (config, seed, work_dir, state) in enumerate(plan):
            if state in ('new', 'resumable'):
                changed = differences(self.fingerprint(config, seed)['code'], training_code())
                if changed:  # edited while this command runs: the run would not be its own
                    raise RuntimeError(f'the training code changed since this command started '
                                       f'({"; ".join(changed)}); run it again')
                log = osp.join(work_dir, 'compare_train.log')
                with open(log, 'a') as f:
                    proc = subprocess.run(self.command(config, seed, state == 'resumable'),
                                          cwd=self.cwd, env=kernel_env(), stdout=f,
                                          stderr=subprocess.STDOUT)
                if proc.returncode or run_state(work_dir, self.final[config]) != 'finished':
                    raise RuntimeError(f'training {config_name(config)} seed {seed} failed '
                                       f'(exit {proc.returncode}); see {log}')
                self._write_record(config, seed)
            elif state == 'finished' and self.record(config, seed) is None:
                self._write_record(config, seed)
            if progress is not None:
                progress()
            if after_seed is not None and (k + 1 == len(plan) or plan[k + 1][1] != seed):
                after_seed(seed)

    def collect(self) -> dict:
        """The report of every run, from the records (every run must be recorded with this
        command's fingerprint; a finished folder without its record is recorded first)."""
        self._refuse_stale(retrain=False)
        for config, seed, work_dir in self.runs():
            if self.record(config, seed) is None and \
                    run_state(work_dir, self.final[config]) == 'finished':
                self._write_record(config, seed)
        recs = {config_name(c): {s: self.record(c, s) for s in self.seeds} for c in self.configs}
        missing = [records.record_path(self.records, name, s)
                   for name, by_seed in recs.items() for s, r in by_seed.items() if r is None]
        if missing:
            raise RuntimeError(f'{len(missing)} runs are not finished (no record): '
                               f'{", ".join(missing)}')
        runs = {name: {s: record_values(r, self.metric) for s, r in by_seed.items()}
                for name, by_seed in recs.items()}
        names = list(runs)
        metric = runs[names[0]][self.seeds[0]]['metric']
        configs = {}
        for name, by_seed in runs.items():
            values = [by_seed[s]['value'] for s in self.seeds]
            configs[name] = dict(values=values, mean=statistics.fmean(values),
                                 std=statistics.stdev(values) if len(values) > 1 else None,
                                 wall_s=statistics.fmean(recs[name][s]['wall_s']
                                                         for s in self.seeds))
        baseline = configs[names[0]]['values']
        comparisons = {name: paired(configs[name]['values'], baseline) for name in names[1:]}
        every = [r for by_seed in recs.values() for r in by_seed.values()]
        return dict(metric=metric, seeds=self.seeds, baseline=names[0], configs=configs,
                    comparisons=comparisons, cfg_options=self.cfg_options,
                    machines=records.machines(every),
                    commits=sorted({r['commit'] + ('+' if r['dirty'] else '')
                                    for r in every if r['commit']}),
                    curves={n: {s: dict(loss=r['loss'], val=r['val']) for s, r in by_seed.items()}
                            for n, by_seed in runs.items()})


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return 'n/a' if x is None else f'{x:.{digits}f}'


def markdown(report: dict) -> str:
    """The report's tables."""
    metric, seeds, base = report['metric'], report['seeds'], report['baseline']
    lines = [f'{metric}, final validation, {len(seeds)} seeds ({", ".join(map(str, seeds))}); '
             f'differences paired by seed against {base}.', '',
             f'| config | {metric} mean ± std | difference (mean) | 95% CI of the difference | '
             'p (paired t-test) | minimum detectable effect |', '| --- ' * 6 + '|']
    for name, c in report['configs'].items():
        row = f"| {name} | {_fmt(c['mean'])} ± {_fmt(c['std'])} | "
        if name == base:
            row += 'baseline | | | |'
        else:
            d = report['comparisons'][name]
            row += (f"{d['mean']:+.4f} | [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}] | "
                    f"{_fmt(d['p'], 3)} | {_fmt(d.get('mde'))} |")
        lines.append(row)
    lines += ['', 'Minimum detectable effect: the true mean difference that this many seeds, '
              'with differences spread as these, find at p < 0.05 four times in five (80% '
              'power); a difference inside it that the test calls insignificant says little '
              'either way.']
    lines += ['', '| seed | ' + ' | '.join(report['configs']) + ' |',
              '| --- |' + ' --- |' * len(report['configs'])]
    for k, seed in enumerate(seeds):
        lines.append(f'| {seed} | ' + ' | '.join(f"{c['values'][k]:.4f}"
                                                 for c in report['configs'].values()) + ' |')
    lines.append('| training wall time (mean, min) | ' + ' | '.join(
        f"{c['wall_s'] / 60:.1f}" for c in report['configs'].values()) + ' |')
    lines += ['', 'Runs from ' + '; '.join(f"{describe(m)}: {m['runs']}"
                                           for m in report['machines'])
              + f"; commits {', '.join(report['commits']) or 'unknown'} (+: training code "
              'changed since)']
    return '\n'.join(lines)


def _band(curves: List[List[tuple]]):
    """Mean, min and max over seeds at the steps every seed logged."""
    steps = sorted(set.intersection(*(set(dict(c)) for c in curves)))
    values = [[dict(c)[s] for c in curves] for s in steps]
    return (steps, [statistics.fmean(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def plot(report: dict, path: str) -> None:
    """Training loss and validation metric per config: the mean over seeds, and a band from the
    lowest to the highest seed."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for name, by_seed in report['curves'].items():
        for ax, key in zip(axes, ('loss', 'val')):
            curves = [c[key] for c in by_seed.values() if c[key]]
            if not curves:
                continue
            steps, mean, low, high = _band(curves)
            line, = ax.plot(steps, mean, label=name, marker='o' if key == 'val' else None,
                            markersize=3)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    axes[0].set(xlabel='iteration', ylabel='training loss')
    axes[1].set(xlabel='validation step (epoch or iteration)', ylabel=report['metric'])
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict, out_prefix: str, to_markdown=None, to_plot=None) -> List[str]:
    """``out_prefix``.md (``to_markdown(report)``, default :func:`markdown`), .json and .png
    (``to_plot(report, path)``, default :func:`plot`), written whole, all three or none."""
    to_markdown, to_plot = to_markdown or markdown, to_plot or plot
    return write_files({out_prefix + '.md': to_markdown(report) + '\n',
                        out_prefix + '.json': json.dumps(report, indent=1),
                        out_prefix + '.png': lambda tmp: to_plot(report, tmp)})
