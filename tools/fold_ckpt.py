"""Fold a trained DO-Conv checkpoint into a plain-conv release that stock mmdet/mmseg load.

    python tools/fold_ckpt.py CONFIG CHECKPOINT OUT.pth [--force] [--no-verify] [--device cpu]
                              [--publish]
    python tools/fold_ckpt.py --no-config CHECKPOINT OUT.pth      # fold by key, no model built

Writes OUT.pth (``meta`` and the folded ``state_dict`` only) and OUT.py, the deploy config (plain
convs, stock modules, no custom_imports). By default the DO-Conv and folded models are run on the
same input first; a relative difference above 1e-4 writes nothing. Files are written to a temporary
name and renamed into place, never over the input. (doconv_mm.mm.release.make_release does the
work.)
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from doconv_mm.requirements import one_line_errors  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('paths', nargs='+', metavar='CONFIG CHECKPOINT OUT.pth')
    parser.add_argument('--no-config', action='store_true',
                        help='fold by state-dict key (CHECKPOINT OUT.pth); no verification')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    parser.add_argument('--no-verify', action='store_true', help='skip the output comparison')
    parser.add_argument('--device', default='cpu', help='device for the verification run')
    parser.add_argument('--publish', action='store_true',
                        help="add the first 8 hex digits of the file's sha256 to its name")
    args = parser.parse_args(argv)
    expected = 2 if args.no_config else 3
    if len(args.paths) != expected:
        usage = 'CHECKPOINT OUT.pth' if args.no_config else 'CONFIG CHECKPOINT OUT.pth'
        parser.error(f'expected {usage}, got {len(args.paths)} paths: {" ".join(args.paths)}')
    args.config = None if args.no_config else args.paths[0]
    args.checkpoint, args.out = args.paths[-2:]
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    with one_line_errors(osp.basename(__file__)):
        from doconv_mm.mm.release import make_release  # needs mmengine: a missing one is one line
        make_release(args.config, args.checkpoint, args.out, force=args.force,
                     verify=not args.no_verify, device=args.device, publish=args.publish)
    print(f'done in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
