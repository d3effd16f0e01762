"""Does a config train faster? Its curves against the baseline's, paired by seed (``tools/study.py``
prints it for the study; the curves come from the runs' records, :mod:`.records`).

For every config against the first, from a comparison's report
(:meth:`.compare.Comparison.collect`):

- the training loss averaged over fixed windows of iterations (each a ``1 / windows`` part of the
  schedule, the logged losses whose iteration falls in it): lower means faster progress on the
  training set;
- the validation metric at every validation step: higher means the model got better sooner.

Each quantity is a per-seed difference (config - baseline, same seed), summarised by
:func:`.paired_stats.paired` (mean, 95% interval, paired t-test p, minimum detectable effect).
"""
import statistics
from typing import List, Sequence

from .compare import write_report
from .paired_stats import paired


def window_means(loss: Sequence[Sequence[float]], last: int, windows: int) -> List[float]:
    """The mean of the logged losses ``[(iteration, loss), ...]`` in each of ``windows`` equal parts
    of iterations ``1..last``: iteration ``i`` falls in part ``ceil(i * windows / last) - 1``."""
    parts = [[] for _ in range(windows)]
    for i, value in loss:
        parts[min(max(-(-int(i) * windows // last) - 1, 0), windows - 1)].append(value)
    if any(not p for p in parts):
        raise ValueError(f'windows={windows}: a part of iterations 1..{last} holds no logged loss; '
                         f'use fewer windows')
    return [statistics.fmean(p) for p in parts]


def compare_speed(report: dict, windows: int = 3) -> dict:
    """The paired differences of the loss per window and of the metric per validation step, for
    every config of ``report`` against its baseline (module doc)."""
    base, seeds, curves = report['baseline'], report['seeds'], report['curves']
    last = min(max(i for i, _ in curves[name][s]['loss']) for name in curves for s in seeds)
    bounds = [(w * last // windows + 1, (w + 1) * last // windows) for w in range(windows)]

    def per_seed(name):
        loss = {s: window_means(curves[name][s]['loss'], last, windows) for s in seeds}
        val = {s: dict(map(tuple, curves[name][s]['val'])) for s in seeds}
        return loss, val

    base_loss, base_val = per_seed(base)
    steps = sorted(set.intersection(*(set(v) for v in base_val.values())))
    out = dict(metric=report['metric'], baseline=base, seeds=seeds, windows=bounds, steps=steps,
               configs={})
    for name in curves:
        if name == base:
            continue
        loss, val = per_seed(name)
        out['configs'][name] = dict(
            loss=[paired([loss[s][w] for s in seeds], [base_loss[s][w] for s in seeds])
                  for w in range(windows)],
            val=[paired([val[s][step] for s in seeds], [base_val[s][step] for s in seeds])
                 for step in steps],
            loss_curve=_paired_curve(curves, name, base, seeds, 'loss'),
            val_curve=_paired_curve(curves, name, base, seeds, 'val'))
    return out


def _paired_curve(curves: dict, name: str, base: str, seeds: Sequence[int], key: str) -> List:
    """``[step, mean difference, 95% low, 95% high]`` at every step all runs logged."""
    points = [{s: dict(map(tuple, curves[n][s][key])) for s in seeds} for n in (name, base)]
    steps = sorted(set.intersection(*(set(p[s]) for p in points for s in seeds)))
    out = []
    for step in steps:
        d = paired([points[0][s][step] for s in seeds], [points[1][s][step] for s in seeds])
        out.append([step, d['mean'], d['ci_low'], d['ci_high']])
    return out


def _cell(d: dict, digits: int) -> str:
    if d['p'] is None:
        return f"{d['mean']:+.{digits}f} | | |"
    return (f"{d['mean']:+.{digits}f} | [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}] "
            f"| {d['p']:.3f} | {d['mde']:.{digits}f}")


def markdown(speed: dict, step_name: str = 'validation step') -> str:
    """One table per config: the loss windows, then the validation steps."""
    out = []
    for name, c in speed['configs'].items():
        out += [f"{name} - {speed['baseline']}, paired over seeds {speed['seeds']}:", '',
                '| quantity | difference (mean) | 95% CI | p (paired t-test) | MDE |',
                '| --- | --- | --- | --- | --- |']
        for (lo, hi), d in zip(speed['windows'], c['loss']):
            out.append(f'| training loss, iterations {lo}-{hi} | {_cell(d, 4)} |')
        for step, d in zip(speed['steps'], c['val']):
            out.append(f"| {speed['metric']}, {step_name} {step} | {_cell(d, 4)} |")
        out.append('')
    out.append('Loss: lower than the baseline is faster progress; metric: higher is a better model '
               'sooner. MDE: the minimum detectable effect (80% power at p < 0.05).')
    return '\n'.join(out)


def plot(speed: dict, path: str) -> None:
    """The paired differences over training, loss and metric, each config's mean over seeds with
    its 95% band."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for name, c in speed['configs'].items():
        for ax, key in zip(axes, ('loss_curve', 'val_curve')):
            rows = [r for r in c[key] if r[2] is not None]
            if not rows:
                continue
            steps, mean, low, high = zip(*rows)
            line, = ax.plot(steps, mean, label=name, marker='o' if key == 'val_curve' else None,
                            markersize=3)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    for ax in axes:
        ax.axhline(0, color='black', linewidth=0.8)
        ax.grid(alpha=0.3)
    axes[0].set(xlabel='iteration', ylabel='training loss, config - baseline')
    axes[1].set(xlabel='validation step', ylabel=f"{speed['metric']}, config - baseline")
    fig.suptitle(f"paired by seed against {speed['baseline']}: mean over {len(speed['seeds'])} "
                 'seeds, 95% band', fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(speed: dict, out_prefix: str) -> List[str]:
    """``out_prefix``.md, .json and .png, all three or none."""
    return write_report(speed, out_prefix, markdown, plot)
