"""DO-Conv's cost in whole models against plain convolutions, measured side by side in one
process (``tools/benchmark.py``, ``make bench``; layers alone: :mod:`benchmarks.layers`).

Every comparison alternates the two models run by run, so machine drift cancels, and reports
medians and the ratio DO-Conv / stock:
1. training step (forward, backward, SGD step) of Faster R-CNN R50-FPN and DeepLabv3 R50-D8 with
   DO-Conv across the whole network vs stock, per input size, and the peak memory of training
   (the median over fresh child processes of the peak RSS over two steps);
2. inference in eval mode without gradients: the unfolded DO-Conv model (which composes every
   kernel at every forward) and the folded one, each vs stock;
3. tools/fold_ckpt.py's wall time on a DeepLabv3 R101-D8 checkpoint.
The models are this project's configs, so ``root`` is a checkout of it.
"""
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from doconv_mm import DOConv2d, fold_model
from doconv_mm.mm.release import build_model, deploy_config
from .timing import alternate, in_fresh_process

MODELS = {
    'Faster R-CNN R50-FPN':
    ('mmdet', 'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-all_1x_coco.py'),
    'DeepLabv3 R50-D8':
    ('mmseg', 'configs/deeplabv3/deeplabv3_r50-d8_doconv-all_4xb2-80k_cityscapes-512x1024.py'),
}


def build(package, config, doconv):
    """The config's model (DO-Conv across the whole network, or stock), random weights."""
    cfg = Config.fromfile(config)
    if not doconv:
        cfg = deploy_config(cfg)
    model = build_model(cfg)  # SyncBN already reverted
    return model, cfg


def batch(package, size):
    """A fixed synthetic batch of 2 images for ``package``'s model."""
    if package == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        torch.manual_seed(0)  # demo_mm_inputs draws from the global generator
        return demo_mm_inputs(2, [[3, size, size]] * 2, num_items=[3, 2], num_classes=80)
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    shape = (size, size)
    return dict(inputs=[torch.randint(0, 256, (3, *shape), generator=g, dtype=torch.uint8)
                        for _ in range(2)],
                data_samples=[SegDataSample(gt_sem_seg=PixelData(
                    data=torch.randint(0, 19, (1, *shape), generator=g)),
                    metainfo=dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
                    for _ in range(2)])


def train_step_fn(model, package, size):
    model.train()
    if package == 'mmseg':
        model.data_preprocessor.size = (size, size)
    data = model.data_preprocessor(batch(package, size), True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def infer_fn(model, package, size):
    """Inference on a fixed batch, in eval mode without gradients."""
    model.eval()
    if package == 'mmseg':
        model.data_preprocessor.size = (size, size)
    data = model.data_preprocessor(batch(package, size), False)

    def infer():
        with torch.no_grad():
            model(**data, mode='predict')
    return infer


def peak_memory(package, config, doconv, size):
    """Peak RSS (bytes) of this process after building the model and running two training steps
    (run it in a fresh process: :func:`median_peak_memory`)."""
    warnings.simplefilter('ignore')  # the model builders' deprecation notes, once per probe
    torch.set_num_threads(int(os.environ.get('BENCH_THREADS', torch.get_num_threads())))
    model, _ = build(package, config, doconv)
    step = train_step_fn(model, package, size)
    step()
    step()  # the second step holds the optimizer's momentum too: the steady state
    return _peak_rss()


def _peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM belongs to the process's own address
    space; ru_maxrss would also keep the parent's high-water mark across fork and exec."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_peak_memory(package, config, size, repeats):
    """Median peak RSS of the stock and the DO-Conv model, each probe a fresh process, their probes
    alternated."""
    peaks = [[], []]
    for _ in range(repeats):
        for k, doconv in enumerate((False, True)):
            peaks[k].append(in_fresh_process(peak_memory, package, config, doconv, size))
    return [statistics.median(p) for p in peaks]


def bench_models(root, sizes, repeats, quick, names, mem_repeats):
    rows = []
    for name, (package, config) in MODELS.items():
        if name not in names:
            continue
        config = osp.join(root, config)
        torch.manual_seed(0)
        stock, _ = build(package, config, doconv=False)
        do, _ = build(package, config, doconv=True)
        do.load_state_dict(stock.state_dict())  # the same start point (D = 0)
        for size in sizes:
            t_stock, t_do = alternate([train_step_fn(stock, package, size),
                                       train_step_fn(do, package, size)], repeats)
            row = dict(model=name, size=size, train_stock_s=t_stock, train_doconv_s=t_do,
                       train_ratio=t_do / t_stock)
            if not quick:
                m_stock, m_do = median_peak_memory(package, config, size, mem_repeats)
                row.update(mem_stock_gb=m_stock / 2**30, mem_doconv_gb=m_do / 2**30,
                           mem_ratio=m_do / m_stock)
            i_stock, i_do = alternate([infer_fn(stock, package, size), infer_fn(do, package, size)],
                                      repeats)
            row.update(infer_stock_s=i_stock, infer_doconv_s=i_do, infer_ratio=i_do / i_stock)
            rows.append(row)
        # folded vs stock: the folded model is the stock network with other weights
        fold_model(do)
        for size in sizes:
            i_stock, i_folded = alternate([infer_fn(stock, package, size),
                                           infer_fn(do, package, size)], repeats)
            for row in rows:
                if row['model'] == name and row['size'] == size:
                    row.update(infer_folded_s=i_folded, folded_ratio=i_folded / i_stock)
    return rows


def bench_fold_ckpt(root, quick):
    """Wall time of tools/fold_ckpt.py on a DeepLabv3 R101-D8 checkpoint with trained-like D."""
    config = 'configs/deeplabv3/deeplabv3_r101-d8_doconv-all_4xb4-20k_voc12aug-512x512.py'
    model = build_model(Config.fromfile(osp.join(root, config)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DOConv2d) and m.D is not None:
                m.D.normal_(0, 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = osp.join(tmp, 'r101.pth')
        torch.save(dict(meta=dict(), state_dict=model.state_dict()), ckpt)
        start = time.perf_counter()
        args = [sys.executable, osp.join(root, 'tools/fold_ckpt.py'), config, ckpt,
                osp.join(tmp, 'out.pth')] + (['--no-verify'] if quick else [])
        subprocess.run(args, cwd=root, check=True, capture_output=True)
        return time.perf_counter() - start


def markdown(result):
    lines = [f"Machine: {result['machine']}"]
    lines += ['', '| model (whole network DO-Conv), batch 2 | px | train step stock s | ratio | '
              'peak memory ratio | eval unfolded ratio | eval folded ratio |',
              '| --- | --- | --- | --- | --- | --- | --- |']
    for r in result['models']:
        mem = f"{r['mem_ratio']:.3f}" if 'mem_ratio' in r else 'n/a'
        lines.append(f"| {r['model']} | {r['size']} | {r['train_stock_s']:.2f} | "
                     f"{r['train_ratio']:.3f} | {mem} | {r['infer_ratio']:.3f} | "
                     f"{r['folded_ratio']:.3f} |")
    if result['fold_ckpt_s'] is not None:
        lines += ['', f"fold_ckpt.py on DeepLabv3 R101-D8: {result['fold_ckpt_s']:.1f} s"]
    return '\n'.join(lines)


def run(root: str, sizes=(256, 512), repeats: int = 5, mem_repeats: int = 3, quick=False,
        models=tuple(MODELS), fold=True) -> dict:
    """Every measurement above; the result as :func:`markdown` prints it."""
    MMLogger.get_instance('benchmark', log_level='WARNING')
    result = dict(machine=f'{platform.processor() or platform.machine()}, '
                          f'{torch.get_num_threads()} threads, torch {torch.__version__}')
    result['models'] = bench_models(root, sizes, repeats, quick, models, mem_repeats)
    result['fold_ckpt_s'] = bench_fold_ckpt(root, quick) if fold else None
    return result
