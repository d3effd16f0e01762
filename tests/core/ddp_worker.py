"""A DDP training step in a worker process; spawned workers import only torch and doconv_mm."""
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from doconv_mm import DOConv2d
from layer_helpers import trained_like


def small_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(DOConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        DOConv2d(8, 8, (3, 5), padding=(1, 2), groups=2, padding_mode='reflect'),
                        nn.ReLU(), DOConv2d(8, 16, 3, stride=2, groups=8, D_mul=12),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    for m in net.modules():
        if isinstance(m, DOConv2d):
            trained_like(m, seed)
    return net


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 12, 12, generator=g), torch.randint(0, 5, (4, ), generator=g)


def ddp_step(rank, world_size, out_dir):
    """One SGD step of ``small_net`` under DDP on this rank's share of ``batch()``.

    The processes meet through a file store in ``out_dir`` (no port to pick) and talk over the
    loopback interface (``GLOO_SOCKET_IFNAME``, set by conftest.py); a rank that cannot reach the
    other fails after 60 s instead of waiting for gloo's default 30 minutes.
    """
    dist.init_process_group('gloo', init_method=f'file://{out_dir}/store', rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    x, y = batch()
    model = nn.parallel.DistributedDataParallel(small_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    part = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
    nn.functional.cross_entropy(model(x[part]), y[part]).backward()
    opt.step()
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(out_dir, 'ddp.pth'))
    dist.barrier()
    # Leave at once: the result is on disk, and no teardown (process group, interpreter exit)
    # is left that could keep a worker, and with it the test, waiting.
    os._exit(0)
