"""Write a small synthetic dataset in a real on-disk format (see experiments/toy_data.py).

    python tools/make_toy_data.py {coco,cityscapes,voc} OUT_DIR [--num-train N] [--num-val N]

The dataset is written to a temporary folder beside OUT_DIR and renamed into place when complete,
so an interrupted run leaves no half-written dataset; an existing OUT_DIR is kept as it is.
"""
import argparse
import os
import os.path as osp
import shutil
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from experiments.toy_data import WRITERS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('format', choices=sorted(WRITERS))
    parser.add_argument('out_dir')
    parser.add_argument('--num-train', type=int, default=None)
    parser.add_argument('--num-val', type=int, default=None)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if osp.isdir(args.out_dir):
        print(f'{args.out_dir} exists: kept as it is')
        return
    kwargs = dict(seed=args.seed)
    if args.num_train is not None:
        kwargs['n_train'] = args.num_train
    if args.num_val is not None:
        kwargs['n_val'] = args.num_val
    parent = osp.dirname(osp.abspath(args.out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.toy-', dir=parent)
    try:
        counts = WRITERS[args.format](tmp, **kwargs)
        os.rename(tmp, args.out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f'wrote a {args.format}-format dataset to {args.out_dir}: '
          + ', '.join(f'{n} {split} images' for split, n in counts.items()))


if __name__ == '__main__':
    main()
