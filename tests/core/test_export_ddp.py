"""The folded model exports (ONNX, TorchScript); DO-Conv trains under DDP like a plain conv."""
import io
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from ddp_worker import batch, ddp_step, small_net
from doconv_mm import fold_model
from layer_helpers import TOL32, rel_err


def test_folded_model_exports_to_onnx_and_torchscript():
    onnx = pytest.importorskip('onnx', reason='onnx is in the tests extra')
    onnxruntime = pytest.importorskip('onnxruntime', reason='onnxruntime is in the tests extra')
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


def test_ddp_step_equals_single_process_step(tmp_path):
    workers = mp.start_processes(ddp_step, args=(2, str(tmp_path)), nprocs=2, join=False,
                                 start_method='spawn')
    deadline = time.monotonic() + 300
    while not workers.join(timeout=5):  # raises when a worker failed
        if time.monotonic() > deadline:
            for p in workers.processes:
                p.kill()
            pytest.fail('the two DDP workers did not finish within 300 s')
    ddp_state = torch.load(tmp_path / 'ddp.pth')
    # the same step in one process; BN statistics per half batch, as DDP without SyncBN
    x, y = batch()
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = sum(nn.functional.cross_entropy(model(x[i:i + 2]), y[i:i + 2]) for i in (0, 2)) / 2
    loss.backward()
    opt.step()
    for key, value in model.state_dict().items():
        if key.endswith('.D') or key.endswith('.weight'):
            assert np.allclose(ddp_state[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-6), key
