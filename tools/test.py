"""Test an mmdet or mmseg config's checkpoint, as mmdet's and mmseg's tools/test.py do.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show-dir DIR]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

``--out``: mmdet configs dump the predictions to a .pkl file; mmseg configs write the predicted
segmentation maps to that folder. ``--show-dir``: painted predictions go there.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from doconv_mm.mm.runtime import (build_runner, load_config, setup_distributed,  # noqa: E402
                                  trusted_checkpoints)
from doconv_mm.requirements import check_input, one_line_errors  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='mmdet: a .pkl file for the predictions; mmseg: a folder '
                        'for the predicted segmentation maps')
    parser.add_argument('--show-dir', help='save painted predictions to this folder')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (see mmengine DictAction)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_show_dir(cfg: Config, show_dir: str) -> None:
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise SystemExit('--show-dir: the config has no default_hooks.visualization hook')
    hook.draw = True
    if cfg.default_scope == 'mmdet':
        hook.test_out_dir = show_dir  # mmdet: relative to the run's log folder
    else:
        cfg.visualizer.save_dir = show_dir


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors(osp.basename(__file__)):
        check_input(args.checkpoint, 'checkpoint')
        cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
        cfg.load_from = args.checkpoint
        if args.show_dir:
            enable_show_dir(cfg, args.show_dir)
        if args.out and cfg.default_scope == 'mmseg':
            cfg.test_evaluator.update(output_dir=args.out, keep_results=True)
        if args.out and cfg.default_scope == 'mmdet' and \
                not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit(f'--out {args.out!r}: mmdet predictions are dumped to a .pkl file')
        with setup_distributed(cfg, args.launcher), trusted_checkpoints(args.checkpoint):
            runner = build_runner(cfg)
            if args.out and cfg.default_scope == 'mmdet':
                from mmdet.evaluation import DumpDetResults
                runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
            return runner.test()


if __name__ == '__main__':
    main()
