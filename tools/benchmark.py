"""DO-Conv's cost against plain convolutions, measured side by side in one process.

    python tools/benchmark.py [--quick] [--json FILE] [--repeats N] [--sizes 256 512]

Layers (forward + backward), the training step and peak memory of Faster R-CNN R50-FPN and
DeepLabv3 R50-D8 with DO-Conv across the whole network, unfolded and folded inference, each as the
median of alternating runs and the ratio DO-Conv / stock; and fold_ckpt.py's wall time.
(doconv_mm.mm.benchmark does the work.)
"""
import argparse
import json
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from doconv_mm.mm.benchmark import MODELS, markdown, run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true',
                        help='tiny run for a smoke test: two layer shapes, one size, no memory')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--mem-repeats', type=int, default=3,
                        help='fresh processes per model and size for the peak memory')
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512])
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS),
                        metavar='NAME', help=f'models to measure (default: all of {list(MODELS)})')
    parser.add_argument('--no-fold', action='store_true', help='skip the fold_ckpt.py timing')
    parser.add_argument('--json', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    for name in ('repeats', 'mem_repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if any(size < 32 for size in args.sizes):
        parser.error(f'--sizes must be >= 32 px each, got {args.sizes}')
    result = run(ROOT, args.sizes, args.repeats, args.mem_repeats, args.quick, args.models,
                 fold=not args.no_fold)
    print(markdown(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
