"""This checkout's PyTorch composition against the compiled CPU composition of an earlier commit
(``--compiled-rev``, checked out in a temporary git worktree), at model level (train step).

    python benchmarks/compiled_vs_pytorch.py [--compiled-rev c99f533] [--processes 3] [--steps 3]
        [--sizes 256 512]

Each figure is a fresh process (the two checkouts alternating process by process, each importing
its own ``doconv_mm``) that builds the config's model with DO-Conv across the whole network, runs
one warm-up training step (forward, backward, SGD) and then ``--steps`` timed ones; the table gives
the median over processes of each process's median step and the spread (min-max) over processes.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODELS = {
    'Faster R-CNN R50-FPN all': 'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-all_1x_coco.py',
    'DeepLabv3 R50-D8 all':
    'configs/deeplabv3/deeplabv3_r50-d8_doconv-all_4xb2-80k_cityscapes-512x1024.py',
}


def child(tree, config, size, steps):
    """One process: the median training step (s) of the config's model at ``size`` px, batch 2,
    with the ``doconv_mm`` of checkout ``tree``."""
    sys.path.insert(0, tree)
    import torch
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS as REGISTRY
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings

    import doconv_mm
    try:
        from doconv_mm.core import _ext
        compiled = _ext.load() is not None
    except ImportError:  # a checkout without the compiled path
        compiled = False
    MMLogger.get_instance('bench', log_level='WARNING')
    cfg = Config.fromfile(osp.join(ROOT, config))
    import_modules_from_strings(**cfg.custom_imports)
    scope = cfg.default_scope
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = revert_sync_batchnorm(REGISTRY.build(cfg.model))
        g = torch.Generator().manual_seed(0)
        if scope == 'mmdet':
            from mmdet.testing import demo_mm_inputs
            torch.manual_seed(0)
            data = demo_mm_inputs(2, [[3, size, size]] * 2, num_items=[3, 2], num_classes=80)
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            shape = (size, size)
            model.data_preprocessor.size = shape
            data = dict(inputs=[torch.randint(0, 256, (3, *shape), generator=g, dtype=torch.uint8)
                                for _ in range(2)],
                        data_samples=[SegDataSample(gt_sem_seg=PixelData(
                            data=torch.randint(0, 19, (1, *shape), generator=g)),
                            metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
                            for _ in range(2)])
        model.train()
        data = model.data_preprocessor(data, True)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        times = []
        for i in range(steps + 1):
            start = time.perf_counter()
            loss, _ = model.parse_losses(model(**data, mode='loss'))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i:  # the first step is the warm-up
                times.append(time.perf_counter() - start)
    return dict(step_s=statistics.median(times), compiled=compiled, tree=osp.dirname(
        osp.dirname(osp.abspath(doconv_mm.__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--compiled-rev', default='c99f533',
                        help='the commit whose compiled path to measure against')
    parser.add_argument('--processes', type=int, default=3, help='fresh processes per path')
    parser.add_argument('--steps', type=int, default=3, help='timed steps per process')
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512])
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--child', nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]),
                               int(args.child[3]))))
        return None
    with tempfile.TemporaryDirectory() as tmp:
        old = osp.join(tmp, 'compiled')
        subprocess.run(['git', '-C', ROOT, 'worktree', 'add', '--detach', old, args.compiled_rev],
                       check=True, capture_output=True)
        try:
            return compare(args, {'compiled': old, 'pytorch': ROOT})
        finally:
            subprocess.run(['git', '-C', ROOT, 'worktree', 'remove', '--force', old], check=True)


def compare(args, trees):
    print(f'compiled: {args.compiled_rev}; PyTorch: this checkout')
    print('| model, batch 2 | px | compiled step s (spread) | PyTorch step s (spread) | '
          'PyTorch / compiled |\n| --- | --- | --- | --- | --- |')
    rows = []
    for name in args.models:
        for size in args.sizes:
            runs = {'compiled': [], 'pytorch': []}
            for rep in range(args.processes):
                order = ('compiled', 'pytorch') if rep % 2 == 0 else ('pytorch', 'compiled')
                for path in order:
                    env = {k: v for k, v in os.environ.items() if k != 'DOCONV_MM_NO_EXT'}
                    out = subprocess.run(
                        [sys.executable, __file__, '--child', trees[path], MODELS[name],
                         str(size), str(args.steps)], env=env, check=True, capture_output=True,
                        text=True)
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    if res['compiled'] != (path == 'compiled') or res['tree'] != trees[path]:
                        raise RuntimeError(f'the {path} process ran {res}')
                    runs[path].append(res['step_s'])
            med = {k: statistics.median(v) for k, v in runs.items()}
            rows.append(dict(model=name, size=size, runs=runs, median=med,
                             ratio=med['pytorch'] / med['compiled']))
            r = rows[-1]
            print(f"| {name} | {size} | {med['compiled']:.3f} ({min(runs['compiled']):.3f}-"
                  f"{max(runs['compiled']):.3f}) | {med['pytorch']:.3f} "
                  f"({min(runs['pytorch']):.3f}-{max(runs['pytorch']):.3f}) | "
                  f"{r['ratio']:.3f} |", flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
