"""A quick look at what DO-Conv does in a real detector, with nothing to download.

Builds Faster R-CNN R50-FPN with DO-Conv across the whole network (the project's config), trains it
a few SGD steps on a synthetic batch so ``D`` moves away from zero, folds it into plain convs and
checks that the folded network, loaded into the *stock* mmdet model, computes the same detections.
"""
import argparse
import os.path as osp
import time

import torch
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import MODELS, DefaultScope
from mmengine.utils import import_modules_from_strings

from doconv_mm import count_do_convs, fold_model

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-all_1x_coco.py')


def build(model_cfg):
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--steps', type=int, default=3, help='SGD steps before folding')
    parser.add_argument('--size', type=int, default=256, help='image side in pixels')
    args = parser.parse_args()
    torch.manual_seed(0)
    MMLogger.get_instance('demo', log_level='WARNING')  # no per-parameter init report
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(CONFIG)
    import_modules_from_strings(**cfg.custom_imports)
    cfg.model.backbone.init_cfg = None  # random start instead of the ImageNet download
    model = build(cfg.model)
    params_train = sum(p.numel() for p in model.parameters())
    batch = demo_mm_inputs(2, [[3, args.size, args.size]] * 2, num_items=[3, 2], num_classes=80)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for step in range(args.steps):
        t = time.perf_counter()
        loss, _ = model.parse_losses(model(**model.data_preprocessor(batch, True), mode='loss'))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f'step {step + 1}/{args.steps}: loss {loss.item():.4f} '
              f'({time.perf_counter() - t:.1f} s)')

    model.eval()
    data = model.data_preprocessor(batch, False)
    with torch.no_grad():
        before = model(**data, mode='tensor')
        n_do = count_do_convs(model)
        fold_model(model)
        # the stock config: plain convs everywhere and mmdet's own RPNHead
        stock_cfg = Config.fromfile(CONFIG).model
        stock_cfg.backbone.init_cfg = None
        stock_cfg.backbone.pop('conv_cfg')
        stock_cfg.neck.pop('conv_cfg')
        stock_cfg.rpn_head.pop('conv_cfg')
        stock_cfg.rpn_head.type = 'RPNHead'
        stock = build(stock_cfg).eval()
        stock.load_state_dict(model.state_dict(), strict=True)
        after = stock(**data, mode='tensor')
    flat = lambda out: torch.cat([t.flatten() for level in out for t in level])  # noqa: E731
    a, b = flat(before), flat(after)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    print()
    print('| what | value |')
    print('| --- | --- |')
    print(f'| DO-Conv layers folded | {n_do} |')
    print(f'| parameters while training | {params_train / 1e6:.2f} M |')
    print(f'| parameters after folding (= stock) | '
          f'{sum(p.numel() for p in stock.parameters()) / 1e6:.2f} M |')
    print(f'| stock mmdet model loads the folded state dict | strict=True |')
    print(f'| max relative difference, DO-Conv vs folded stock outputs | {rel:.2e} |')
    if rel > 1e-4:
        raise SystemExit(f'folded outputs differ by {rel:.2e} > 1e-4')


if __name__ == '__main__':
    main()
