"""The layers of the conformance suite, and its distributed flows in a spawned process (which
imports only torch, doconv_mm and this file)."""
import copy
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from doconv_mm import DOConv2d
from layer_helpers import trained_like

LAYERS = {
    'conv2d': lambda: nn.Conv2d(4, 6, 3, padding=1),
    'conv2d-g2': lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    'doconv': lambda: DOConv2d(4, 6, 3, padding=1),
    'doconv-dmul13': lambda: DOConv2d(4, 6, 3, padding=1, D_mul=13),
    'doconv-g2-dmul13': lambda: DOConv2d(4, 6, 3, padding=1, groups=2, D_mul=13),
    'doconv-dw': lambda: DOConv2d(4, 4, 3, padding=1, groups=4),
}


def make(kind: str, seed: int = 0) -> nn.Conv2d:
    """A layer of ``kind``, seeded; DO-Conv with a non-zero ``D`` as after training."""
    torch.manual_seed(seed)
    layer = LAYERS[kind]()
    return trained_like(layer, seed) if isinstance(layer, DOConv2d) else layer


def _step_and_eval(layer, x):
    """One SGD step, then the eval-mode output without gradients."""
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().mean().backward()
    opt.step()
    layer.eval()
    with torch.no_grad():
        return layer(x)


def _reference(layer, x):
    """The same step on a plain copy, then the convolution with the kernel folded from it."""
    layer = copy.deepcopy(layer)
    _step_and_eval(layer, x)
    with torch.no_grad():
        w = layer.fold().weight if isinstance(layer, DOConv2d) else layer.weight
        return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation,
                        layer.groups)


def distributed_flows(rank, out_dir, kinds):
    """FSDP2 and DDP over gloo in a world of one: per kind, each flow's output after a step and
    the plain reference's, saved to ``out_dir/results.pth`` (a flow this torch lacks: why)."""
    dist.init_process_group('gloo', init_method=f'file://{out_dir}/store', rank=rank,
                            world_size=1, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    try:
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh('cpu', (1, ))
    except Exception as e:  # ImportError; torch 1.13's fsdp fails to import on Python 3.11
        fully_shard, missing = None, f'no FSDP2 fully_shard in torch {torch.__version__}: {e!r}'
    x = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    results = {}
    for kind in kinds:
        ref = _reference(make(kind), x)
        ddp = nn.parallel.DistributedDataParallel(make(kind))
        results[kind] = {'ddp': (_step_and_eval(ddp, x), ref)}
        if fully_shard is None:
            results[kind]['fsdp2'] = missing
        else:
            layer = make(kind)
            fully_shard(layer, mesh=mesh)
            results[kind]['fsdp2'] = (_step_and_eval(layer, x), ref)
    torch.save(results, os.path.join(out_dir, 'results.pth'))
    dist.destroy_process_group()
