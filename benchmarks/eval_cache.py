"""What each ``model.eval()`` call costs a DO-Conv model: the eval cache is dropped and the next
forward composes every kernel again (in float64, as folding does).

    python benchmarks/eval_cache.py [--size 512] [--repeats 5]

For Faster R-CNN R50-FPN with DO-Conv across the whole network, batch 1: the median inference
forward right after ``model.eval()`` (cold: every kernel composed) and with the cache warm, and the
composition of every kernel alone.
"""
import argparse
import os.path as osp
import statistics
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-all_1x_coco.py'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    import torch
    from mmdet.testing import demo_mm_inputs
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.utils import import_modules_from_strings

    from doconv_mm import DOConv2d
    MMLogger.get_instance('bench', log_level='WARNING')
    cfg = Config.fromfile(osp.join(ROOT, CONFIG))
    import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).eval()
    layers = [m for m in model.modules() if isinstance(m, DOConv2d) and m.D is not None]
    data = model.data_preprocessor(
        demo_mm_inputs(1, [[3, args.size, args.size]], num_classes=80), False)

    def forward():
        start = time.perf_counter()
        with torch.no_grad():
            model(**data, mode='predict')
        return time.perf_counter() - start

    cold, warm, compose = [], [], []
    forward()
    for _ in range(args.repeats):
        model.eval()
        cold.append(forward())
        warm.append(forward())
        start = time.perf_counter()
        for m in layers:
            m._exact_kernel()
        compose.append(time.perf_counter() - start)
    c, w, k = (statistics.median(v) for v in (cold, warm, compose))
    print(f'Faster R-CNN R50-FPN all, {len(layers)} DO-Conv layers, {args.size}x{args.size}, '
          f'batch 1, {torch.get_num_threads()} threads, torch {torch.__version__}:\n'
          f'forward after eval(): {c:.3f} s, warm: {w:.3f} s (x{c / w:.3f}); '
          f'composing every kernel: {k:.3f} s (medians of {args.repeats})')


if __name__ == '__main__':
    main()
