"""The folded model exports (ONNX, TorchScript); DO-Conv trains under DDP like a plain conv."""
import io
import os
import socket

import numpy as np
import onnx
import onnxruntime
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from doconv_mm import DOConv2d, fold_model
from test_do_conv import TOL32, rel_err, trained_like


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


def test_folded_model_exports_to_onnx_and_torchscript():
    net = small_net().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        folded = fold_model(net)
        buf = io.BytesIO()
        torch.onnx.export(folded, x, buf, dynamo=False, input_names=['x'])
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])
    (onnx_out, ) = session.run(None, {'x': x.numpy()})
    assert rel_err(torch.from_numpy(onnx_out), expected) < TOL32
    for jit in (torch.jit.script(folded), torch.jit.trace(folded, x)):
        assert rel_err(jit(x), expected) < TOL32


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_step(rank, world_size, port, x, y, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = nn.parallel.DistributedDataParallel(small_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    part = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
    nn.functional.cross_entropy(model(x[part]), y[part]).backward()
    opt.step()
    if rank == 0:
        torch.save(model.module.state_dict(), os.path.join(out_dir, 'ddp.pth'))
    dist.destroy_process_group()


def test_ddp_step_equals_single_process_step(tmp_path):
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 12, 12), torch.randint(0, 5, (4, ))
    mp.spawn(_ddp_step, args=(2, _free_port(), x, y, str(tmp_path)), nprocs=2)
    ddp_state = torch.load(tmp_path / 'ddp.pth')
    # the same step in one process; BN statistics per half batch, as DDP without SyncBN
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = sum(nn.functional.cross_entropy(model(x[i:i + 2]), y[i:i + 2]) for i in (0, 2)) / 2
    loss.backward()
    opt.step()
    for key, value in model.state_dict().items():
        if key.endswith('.D') or key.endswith('.weight'):
            assert np.allclose(ddp_state[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-6), key
