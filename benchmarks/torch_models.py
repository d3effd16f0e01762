"""DO-Conv's cost in whole models on any device, torch only (``tools/benchmark.py --device``):
torchvision's Faster R-CNN R50-FPN and DeepLabv3 R50, converted with :func:`doconv_mm.convert`
(every k x k conv: the "all" setting), against the same stock network, side by side in one
process. For machines without torchvision (and the CPU smoke test) a small torch-only network,
``toy CNN``, runs through the same code.

Per model: the training step (forward, loss, backward, SGD step; under ``--amp`` autocast, with a
GradScaler for float16), its peak device memory (CUDA: ``torch.cuda.max_memory_allocated`` of a
step, each model alone on the device), inference in eval mode, unfolded and folded. The two (or
three) models run in turn, run by run, after a warm-up, with device-synchronised timers; each
figure is the median over the runs, each ratio the median of the run-by-run ratios with their
lowest and highest.
"""
import copy
import gc
import platform
import statistics
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from doconv_mm import convert, count_do_convs, fold_model
from .timing import alternate_runs

AMP = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def _torchvision():
    try:
        import torchvision
    except Exception as e:  # not installed, or a build that does not match torch
        raise RuntimeError(f'this model needs torchvision, which does not import here '
                           f'({type(e).__name__}: {e})') from e
    return torchvision


def faster_rcnn(size: Tuple[int, int]) -> Tuple[nn.Module, Callable, Callable]:
    """Faster R-CNN R50-FPN as trained from an ImageNet backbone (frozen BN, stem and first stage
    frozen, as mmdet's config), 80 classes, images of ``size`` (h, w) kept at that size."""
    _torchvision()
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d
    backbone = resnet_fpn_backbone(backbone_name='resnet50', weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    h, w = size
    model = FasterRCNN(backbone, num_classes=81, min_size=min(h, w), max_size=max(h, w))
    g = torch.Generator().manual_seed(0)

    def batch(device, n):
        images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(n)]
        targets = []
        for _ in range(n):
            xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
            wh = 16 + torch.rand(5, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
            targets.append(dict(boxes=torch.cat([xy, xy + wh], 1).to(device),
                                labels=torch.randint(1, 81, (5, ), generator=g).to(device)))
        return images, targets

    def loss(model, data):
        return sum(model(*data).values())
    return model, batch, loss


def deeplabv3(size: Tuple[int, int]) -> Tuple[nn.Module, Callable, Callable]:
    """DeepLabv3 R50 (output stride 8, with the auxiliary FCN head as mmseg's config), 19
    classes (Cityscapes), crops of ``size`` (h, w)."""
    tv = _torchvision()
    model = tv.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                      num_classes=19, aux_loss=True)
    return model, *_dense_batch(size, 19)


def toy_cnn(size: Tuple[int, int]) -> Tuple[nn.Module, Callable, Callable]:
    """A small fully convolutional network of 3x3 convs (torch only), dense loss over 5 classes:
    the code path of the models above where torchvision is missing."""
    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True)]
    model = nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 32, 1),
                          nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.Conv2d(32, 5, 1),
                          nn.Upsample(scale_factor=4, mode='bilinear'))
    return model, *_dense_batch(size, 5)


def _dense_batch(size, classes):
    g = torch.Generator().manual_seed(0)

    def batch(device, n):
        return (torch.rand(n, 3, *size, generator=g).to(device),
                torch.randint(0, classes, (n, *size), generator=g).to(device))

    def loss(model, data):
        images, labels = data
        out = model(images)
        if isinstance(out, torch.Tensor):
            return F.cross_entropy(out.float(), labels)
        return F.cross_entropy(out['out'].float(), labels) + \
            0.4 * F.cross_entropy(out['aux'].float(), labels)
    return batch, loss


MODELS: Dict[str, Callable] = {'Faster R-CNN R50-FPN': faster_rcnn, 'DeepLabv3 R50': deeplabv3,
                               'toy CNN': toy_cnn}
SIZES = {'Faster R-CNN R50-FPN': (800, 1333), 'DeepLabv3 R50': (512, 1024), 'toy CNN': (64, 64)}
QUICK_SIZES = {'Faster R-CNN R50-FPN': (128, 160), 'DeepLabv3 R50': (64, 96), 'toy CNN': (32, 32)}


class Runner:
    """One model's training step and inference on ``device`` under the chosen precision."""

    def __init__(self, model, batch, loss, device, amp: Optional[str], channels_last: bool,
                 images: int) -> None:
        self.model, self.loss, self.device = model.to(device), loss, device
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.dtype = AMP[amp] if amp else None
        self.data = batch(device, images)
        if channels_last and isinstance(self.data[0], torch.Tensor):
            self.data = (self.data[0].contiguous(memory_format=torch.channels_last),
                         self.data[1])
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-5, momentum=0.9)
        self.scaler = None
        if amp == 'fp16':
            self.scaler = (torch.amp.GradScaler(device) if hasattr(torch.amp, 'GradScaler')
                           else torch.cuda.amp.GradScaler())

    def _autocast(self):
        return torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype is not None)

    def train_step(self) -> None:
        self.model.train()
        with self._autocast():
            loss = self.loss(self.model, self.data)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def infer_fn(self) -> Callable:
        self.model.eval()  # once, as mmengine's val and test loops do

        def infer():
            with torch.no_grad(), self._autocast():
                self.model(self.data[0])  # the images (a list for the detector)
        return infer


def _sync(device):
    return torch.cuda.synchronize if device.startswith('cuda') else None


def peak_memory(runner: Runner) -> Optional[int]:
    """Peak bytes allocated on the device during one training step after two (the optimizer's
    state included), the model alone on the device; None off CUDA."""
    if not runner.device.startswith('cuda'):
        return None
    runner.train_step()
    runner.train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    runner.train_step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _ratio(runs, base):
    """Median of the run-by-run ratios ``runs[i] / base[i]``, with their lowest and highest."""
    ratios = [a / b for a, b in zip(runs, base)]
    return dict(median=statistics.median(ratios), low=min(ratios), high=max(ratios))


def bench_model(name: str, device: str, amp: Optional[str], channels_last: bool, repeats: int,
                size: Tuple[int, int], images: int) -> dict:
    torch.manual_seed(0)
    model, batch, loss = MODELS[name](size)
    stock_model = model
    do_model = convert(copy.deepcopy(model))
    with torch.no_grad():  # trained-like: no shortcut may rely on D = 0
        for p_name, p in do_model.named_parameters():
            if p_name.endswith('.D'):
                p.normal_(0, 0.05)
    row = dict(model=name, size=list(size), images=images, do_convs=count_do_convs(do_model))
    memory = []
    for m in (stock_model, do_model):  # each alone on the device
        runner = Runner(m, batch, loss, device, amp, channels_last, images)
        memory.append(peak_memory(runner))
        m.to('cpu')
        del runner
        gc.collect()
        if device.startswith('cuda'):
            torch.cuda.empty_cache()
    if memory[0] is not None:
        row.update(mem_stock_gib=memory[0] / 2**30, mem_doconv_gib=memory[1] / 2**30,
                   mem_ratio=memory[1] / memory[0])
    stock = Runner(stock_model, batch, loss, device, amp, channels_last, images)
    do = Runner(do_model, batch, loss, device, amp, channels_last, images)
    sync = _sync(device)
    t_stock, t_do = alternate_runs([stock.train_step, do.train_step], repeats, 2, sync)
    row.update(train_stock_ms=statistics.median(t_stock) * 1e3,
               train_doconv_ms=statistics.median(t_do) * 1e3, train_ratio=_ratio(t_do, t_stock))
    folded = Runner(fold_model(copy.deepcopy(do_model)), batch, loss, device, amp, channels_last,
                    images)
    assert count_do_convs(folded.model) == 0
    e_stock, e_do, e_folded = alternate_runs(
        [stock.infer_fn(), do.infer_fn(), folded.infer_fn()], repeats, 2, sync)
    row.update(eval_stock_ms=statistics.median(e_stock) * 1e3,
               eval_doconv_ms=statistics.median(e_do) * 1e3,
               eval_folded_ms=statistics.median(e_folded) * 1e3,
               eval_ratio=_ratio(e_do, e_stock), folded_ratio=_ratio(e_folded, e_stock))
    for r in (stock, do, folded):
        r.model.to('cpu')
    return row


def machine(device: str) -> str:
    if device.startswith('cuda'):
        return (f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}, '
                f'CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')
    return (f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, '
            f'torch {torch.__version__}')


def run(device: str = 'cuda', amp: Optional[str] = None, channels_last: bool = False,
        repeats: int = 10, models: Sequence[str] = ('Faster R-CNN R50-FPN', 'DeepLabv3 R50'),
        sizes: Optional[Dict[str, Tuple[int, int]]] = None, images: int = 2) -> dict:
    """Every model's figures (see the module doc); ``sizes`` overrides :data:`SIZES`."""
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RuntimeError(f'--device {device}: CUDA is not available (torch {torch.__version__})')
    sizes = {**SIZES, **(sizes or {})}
    rows = [bench_model(name, device, amp, channels_last, repeats, tuple(sizes[name]), images)
            for name in models]
    return dict(machine=machine(device), device=device, amp=amp or 'fp32',
                channels_last=channels_last, repeats=repeats, models=rows)


def _r(ratio: dict) -> str:
    return f"{ratio['median']:.3f} ({ratio['low']:.3f}-{ratio['high']:.3f})"


def markdown(result: dict) -> str:
    fmt = 'channels_last' if result['channels_last'] else 'contiguous'
    lines = [f"Machine: {result['machine']}; precision {result['amp']}, {fmt}; medians of "
             f"{result['repeats']} alternating runs, ratios DO-Conv / stock with their "
             f"(lowest-highest) run-by-run ratio.", '',
             '| model (DO-Conv in every k x k conv) | input | train step stock ms | train ratio | '
             'peak memory stock GiB | memory ratio | eval stock ms | eval unfolded ratio | '
             'eval folded ratio |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in result['models']:
        mem = (f"{r['mem_stock_gib']:.2f} | {r['mem_ratio']:.3f}" if 'mem_ratio' in r
               else 'n/a | n/a')
        lines.append(f"| {r['model']} ({r['do_convs']} DO-Conv) | {r['images']} x "
                     f"{r['size'][0]}x{r['size'][1]} | {r['train_stock_ms']:.1f} | "
                     f"{_r(r['train_ratio'])} | {mem} | {r['eval_stock_ms']:.1f} | "
                     f"{_r(r['eval_ratio'])} | {_r(r['folded_ratio'])} |")
    return '\n'.join(lines)
