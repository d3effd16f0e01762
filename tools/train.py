"""Train an mmdet or mmseg config with DO-Conv, as mmdet's and mmseg's tools/train.py do.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                          [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

The config names its scope (``default_scope``: mmdet or mmseg) and mmengine's Runner does the rest.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from doconv_mm.mm.runtime import (build_runner, enable_amp, load_config,  # noqa: E402
                                  setup_distributed, trusted_checkpoints)
from doconv_mm.requirements import UsageError, check_input, one_line_errors  # noqa: E402
from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (float16; needs a GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without CKPT from the latest checkpoint in '
                        'the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (see mmengine DictAction)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    with one_line_errors(osp.basename(__file__)):
        cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
        if args.amp:
            enable_amp(cfg)
        if args.auto_scale_lr:
            if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
                raise UsageError(f'--auto-scale-lr: {args.config} has no '
                                 f'auto_scale_lr.base_batch_size')
            cfg.auto_scale_lr.enable = True
        if args.resume == 'auto':
            cfg.resume, cfg.load_from = True, None
        elif args.resume is not None:
            check_input(args.resume, '--resume')
            cfg.resume, cfg.load_from = True, args.resume
        with setup_distributed(cfg, args.launcher), \
                trusted_checkpoints(cfg.work_dir, cfg.get('load_from')):
            build_runner(cfg).train()


if __name__ == '__main__':
    main()
