"""Compare configs over seeds: paired differences of the final metric, their 95% confidence
interval, the paired t-test p-value and the minimum detectable effect of the run (the true
difference these seeds would find with 80% power), with curves (experiments/compare.py does the
work).

    python tools/compare.py BASELINE_CONFIG CONFIG [CONFIG ...] --seeds 0 1 2 --work-dir DIR
                            [--cfg-options k=v ...] [--metric NAME] [--out PREFIX]
                            [--launcher none|pytorch|slurm] [--gpus N] [--retrain]
                            [--records DIR] [--print-commands | --collect]

Every config runs with every seed (the same seed, so the same data order, for all configs); runs
land in DIR/<config name>/seed<k>; finished runs are read, not rerun, and a killed run resumes
from its last checkpoint when started again. Each run records what trains it (the config as
resolved after --cfg-options, the seed, the checkpoints the config loads, the package versions,
the CPU kernels it is pinned to: experiments/kernels.py, so that a run repeats on another machine);
a run trained with anything else stops the command with an error naming it and what differs:
--retrain deletes such runs and trains them again (or give another --work-dir). Each finished run
is recorded in a small JSON file (its fingerprint, final metrics and curves, the machine that
trained it, its wall time: experiments/records.py) under --records (default DIR/records); the
report is made from the records, a recorded run is never trained again, and the run folders can
go: keep the records (e.g. in your repository) and --collect reports from them alone.
--print-commands prints the training commands of the unfinished runs (e.g. --launcher slurm for a
cluster) and exits; --collect only reads finished runs, recording those not recorded yet. The
report goes to PREFIX.md, .json and .png (default DIR/compare) and is printed.
"""
import argparse
import os.path as osp
import shlex
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from doconv_mm.requirements import check_input, one_line_errors  # noqa: E402
from experiments.compare import LAUNCHERS, Comparison, markdown, write_report  # noqa: E402
from experiments.kernels import KERNEL_ENV  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', help='the baseline config first, then the others')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override settings in every config (as tools/train.py does)')
    parser.add_argument('--metric', help='validation metric to compare (default: coco/bbox_mAP '
                        'or mIoU, whichever the logs hold)')
    parser.add_argument('--out', help='report path prefix (default: WORK_DIR/compare)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none')
    parser.add_argument('--gpus', type=int, default=1, help='processes per run (--launcher '
                        'pytorch; on CPU, gloo processes)')
    parser.add_argument('--retrain', action='store_true',
                        help='delete and train again the runs that another config, seed, '
                        'loaded checkpoint or package version trained')
    parser.add_argument('--records', help='where each finished run is recorded (default: '
                        'WORK_DIR/records)')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--print-commands', action='store_true',
                      help='print the commands of the unfinished runs and exit')
    mode.add_argument('--collect', action='store_true', help='only read finished runs')
    args = parser.parse_args(argv)
    if len(args.configs) < 2:
        parser.error(f'need a baseline config and at least one other, got {args.configs}')
    if args.launcher == 'slurm' and not (args.print_commands or args.collect):
        parser.error('--launcher slurm: submit the runs yourself: --print-commands gives the '
                     'commands, --collect reads the finished runs')
    if args.retrain and args.collect:
        parser.error('--retrain trains runs again; --collect only reads them: use one')
    bad = [kv for kv in args.cfg_options if '=' not in kv]
    if bad:
        parser.error(f'--cfg-options takes KEY=VALUE, got {bad}')
    with one_line_errors(osp.basename(__file__), ValueError, RuntimeError, KeyError):
        for config in args.configs:
            check_input(config, 'config')
        comparison = Comparison(ROOT, [osp.abspath(c) for c in args.configs], args.seeds,
                                osp.abspath(args.work_dir), args.cfg_options, args.metric,
                                args.launcher, args.gpus, retrain=args.retrain,
                                records=args.records and osp.abspath(args.records))
        if args.print_commands:
            pinned = [f'{k}={v}' for k, v in KERNEL_ENV.items()]  # as train() runs them
            for cmd in comparison.pending_commands():
                print(' '.join(shlex.quote(c) if c != '${PARTITION}' else c
                               for c in pinned + cmd))
            return None
        if not args.collect:
            from mmengine.utils import ProgressBar
            runs = comparison.runs()
            print(f'{len(runs)} runs ({len(args.configs)} configs x {len(args.seeds)} seeds) '
                  f'under {args.work_dir}; each run logs to its compare_train.log')
            bar = ProgressBar(len(runs))
            comparison.train(bar.update)
            print()
        report = comparison.collect()
    paths = write_report(report, args.out or osp.join(args.work_dir, 'compare'))
    print(markdown(report))
    print('\nwrote ' + ', '.join(paths))
    return report


if __name__ == '__main__':
    main()
