"""What a DO-Conv model's evaluation costs when its parameters change between batches (an EMA
swap, a teacher update) and when they do not (``model.eval()`` called before every batch).

    python benchmarks/eval_cache.py [--size 512] [--repeats 5]

For Faster R-CNN R50-FPN with DO-Conv across the whole network, batch 1: the median inference
forward after every parameter was edited through ``.data`` and ``model.eval()`` called (every
kernel composed again, in float64 as folding does), after ``model.eval()`` alone (the parameters
untouched: nothing compared, nothing composed), and the stock model's forward after
``stock.eval()``, alternating.
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

    from doconv_mm import DOConv2d
    from doconv_mm.mm.release import build_model, deploy_config
    MMLogger.get_instance('bench', log_level='WARNING')
    cfg = Config.fromfile(osp.join(ROOT, CONFIG))
    torch.manual_seed(0)
    stock = build_model(deploy_config(cfg)).eval()
    model = build_model(cfg).eval()
    model.load_state_dict(stock.state_dict())
    layers = [m for m in model.modules() if isinstance(m, DOConv2d) and m.D is not None]
    data = model.data_preprocessor(
        demo_mm_inputs(1, [[3, args.size, args.size]], num_classes=80), False)

    def forward(m):
        start = time.perf_counter()
        with torch.no_grad():
            m(**data, mode='predict')
        return time.perf_counter() - start

    edited, after_eval, plain = [], [], []
    forward(model), forward(stock)
    for k in range(args.repeats):
        for m in layers:  # as an EMA swap edits: through .data, no version counter moves
            m.weight.data.mul_(1 + 1e-3 * (-1) ** k)
        model.eval()  # as mmengine's loops call it after EMAHook's swap
        edited.append(forward(model))
        model.eval()
        after_eval.append(forward(model))
        stock.eval()
        plain.append(forward(stock))
    e, a, p = (statistics.median(v) for v in (edited, after_eval, plain))
    print(f'Faster R-CNN R50-FPN all, {len(layers)} DO-Conv layers, {args.size}x{args.size}, '
          f'batch 1, {torch.get_num_threads()} threads, torch {torch.__version__}, medians of '
          f'{args.repeats}:\nforward after every parameter changed: {e:.3f} s '
          f'(x{e / p:.3f} stock); after eval() alone: {a:.3f} s (x{a / p:.3f}); stock: {p:.3f} s')


if __name__ == '__main__':
    main()
