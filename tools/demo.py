"""The project's main job end to end, on an embedded toy dataset (no download).

    python tools/demo.py [--task det|seg] [--workspace DIR] [--work-dir DIR] [--cfg-options ...]

Writes the toy dataset, trains the stock baseline and the same network with DO-Conv across the
whole network (same seed) through tools/train.py, tests both, folds the DO-Conv checkpoint, tests
the release with stock mmdet/mmseg (doconv_mm unimportable), times inference and prints a table.
(experiments/demo.py does the work.)
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from experiments.demo import TASKS, run_demo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=sorted(TASKS), default='det')
    parser.add_argument('--workspace', default=ROOT,
                        help='the folder holding data/ and work_dirs/ (default: the checkout)')
    parser.add_argument('--work-dir', default=None, help='default: WORKSPACE/work_dirs/demo-TASK')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='extra settings for every train and test run, e.g. '
                        'train_cfg.max_epochs=1 (a shorter run)')
    parser.add_argument('--repeats', type=int, default=5, help='inference timing rounds')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    run_demo(ROOT, args.task, args.workspace, args.work_dir, args.cfg_options, args.repeats)


if __name__ == '__main__':
    main()
