"""DOConv2d in the flows users run with nn.Conv2d: each flow runs on nn.Conv2d and on DOConv2d
(default D_mul, D_mul > M*N, grouped, depthwise), nothing that works for nn.Conv2d raises, and
every output equals the convolution with the kernel folded (in float64, :meth:`DOConv2d.fold`)
from the parameters as they are at that moment. A layer that cached its kernel across forwards
would fail the flows whose writes no cache can see (fused optimizers, aliases, other processes).

Tolerance: relative to the output's largest value, 1e-5 (the layer composes in float32, the fold
in float64; both convolve in float32), 1e-2 under bfloat16 autocast (8 mantissa bits).
"""
import copy
import io
import multiprocessing
import pickle
import sys

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from conformance_worker import distributed_flows, make
from doconv_mm import DOConv2d
from layer_helpers import compile_unavailable, rel_err

TOL, TOL_BF16 = 1e-5, 1e-2
KINDS = ['conv2d', 'conv2d-g2', 'doconv', 'doconv-dmul13', 'doconv-g2-dmul13', 'doconv-dw']


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 6, 5, generator=g).to(dtype)


def folded(layer, x):
    """The convolution of ``x`` with ``layer``'s kernel folded from its parameters now
    (differentiable in ``x`` only)."""
    with torch.no_grad():
        w = layer.fold().weight if isinstance(layer, DOConv2d) else layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
    return F.conv2d(x, w.to(x.dtype), bias, layer.stride, layer.padding, layer.dilation,
                    layer.groups)


def check(layer, x, out, tol=TOL):
    assert rel_err(out, folded(layer, x)) < tol


def train_step(layer, opt, x):
    layer(x).square().mean().backward()
    opt.step()
    opt.zero_grad()


def step_then_check(layer, x):
    """One SGD step (training mode), then the eval-mode output without gradients, checked."""
    train_step(layer.train(), torch.optim.SGD(layer.parameters(), lr=0.1), x)
    layer.eval()
    with torch.no_grad():
        out = layer(x)
    check(layer, x, out)
    return out


def needs(feature, reason):
    """Skip with ``reason`` where this torch lacks ``feature`` (a dotted name under torch)."""
    obj = torch
    for name in feature.split('.'):
        obj = getattr(obj, name, None)
        if obj is None:
            pytest.skip(f'{reason} (torch {torch.__version__})')
    return obj


OPTIMIZERS = {
    'sgd-foreach': lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True),
    'sgd-fused': lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
    'adam-fused': lambda p: torch.optim.Adam(p, lr=0.05, fused=True),
    'adamw-fused': lambda p: torch.optim.AdamW(p, lr=0.05, fused=True),
    'adamw-foreach': lambda p: torch.optim.AdamW(p, lr=0.05, foreach=True),
}


@pytest.mark.parametrize('optimizer', OPTIMIZERS)
@pytest.mark.parametrize('kind', KINDS)
def test_optimizer_steps_in_eval_mode_with_validation_between(kind, optimizer):
    """Fine-tuning with the layer in eval mode (frozen BN/dropout around it): fused steps move no
    version counter, and every no_grad validation must see the new parameters."""
    layer, x = make(kind).eval(), inputs()
    try:
        opt = OPTIMIZERS[optimizer](layer.parameters())
    except (TypeError, RuntimeError) as e:  # torch 1.13: no fused CPU optimizers
        pytest.skip(f'{optimizer} on the CPU: {e}')
    with torch.no_grad():
        before = layer(x)
    for _ in range(3):
        train_step(layer, opt, x)
        with torch.no_grad():
            out = layer(x)
        check(layer, x, out)
    assert rel_err(out, before) > 1e-3  # the steps moved the output


def write_through(alias, p):
    """An alias of ``p``'s memory taken now, and a function that writes through it later."""
    if alias == 'data':
        a = p.data
        return lambda: a.mul_(1.5)
    if alias == 'numpy':
        a = p.detach().numpy()
        return lambda: a.__imul__(1.5)
    a = torch.utils.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(p.detach()))
    return lambda: a.mul_(1.5)


@pytest.mark.parametrize('alias', ['data', 'numpy', 'dlpack'])
@pytest.mark.parametrize('kind', KINDS)
def test_aliases_written_after_a_forward(kind, alias):
    layer, x = make(kind).eval(), inputs()
    writes = [write_through(alias, p) for p in layer.parameters()]
    with torch.no_grad():
        before = layer(x)
        for write in writes:
            write()
        out = layer(x)
    check(layer, x, out)
    assert rel_err(out, before) > 1e-3


def scale_in_place(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(1.5)


@pytest.mark.skipif(sys.platform != 'linux', reason='fork: Linux only here')
@pytest.mark.parametrize('kind', KINDS)
def test_shared_memory_written_by_another_process(kind):
    """Hogwild: the parameters in shared memory, updated in place by a forked process."""
    layer, x = make(kind).eval().share_memory(), inputs()
    with torch.no_grad():
        before = layer(x)
    worker = multiprocessing.get_context('fork').Process(target=scale_in_place, args=(layer, ))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    with torch.no_grad():
        out = layer(x)
    check(layer, x, out)
    assert rel_err(out, before) > 1e-3


@pytest.mark.parametrize('kind', KINDS)
def test_functional_call_and_vmap_ensembling(kind):
    func = needs('func.functional_call', 'torch.func needs torch >= 2.0')
    layer, x = make(kind).eval(), inputs()
    params = {n: p.detach() * 1.5 for n, p in layer.named_parameters()}
    out = func(layer, params, (x, ))
    other = copy.deepcopy(layer)
    other.load_state_dict(params)
    check(other, x, out)
    with torch.no_grad():
        check(layer, x, layer(x))  # the layer's own parameters are back
    # an ensemble of three, evaluated with vmap over their stacked parameters
    models = [make(kind, seed=s) for s in range(3)]
    stacked = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to('meta')
    outs = torch.vmap(lambda p, b, x: func(base, (p, b), (x, )), in_dims=(0, 0, None))(
        *stacked, x)
    for model, out in zip(models, outs):
        check(model, x, out)


@pytest.mark.parametrize('frozen', [False, True], ids=['trainable', 'frozen'])
@pytest.mark.parametrize('kind', KINDS)
def test_inference_mode_then_input_gradients(kind, frozen):
    """A forward under inference_mode, then one with input gradients (Grad-CAM, attacks)."""
    layer, x = make(kind).eval().requires_grad_(not frozen), inputs()
    with torch.inference_mode():
        layer(x)
    x = x.clone().requires_grad_()
    R = torch.randn(2, layer.out_channels, 6, 5, generator=torch.Generator().manual_seed(2))
    (layer(x) * R).sum().backward()
    xr = x.detach().clone().requires_grad_()
    (folded(layer, xr) * R).sum().backward()  # F.conv2d's input gradient
    assert rel_err(x.grad, xr.grad) < TOL
    assert all((p.grad is None) == frozen for p in layer.parameters())


@pytest.mark.parametrize('kind', KINDS)
def test_load_state_dict_assign(kind):
    layer, x = make(kind), inputs()
    state = {k: v * 1.5 for k, v in make(kind, seed=1).state_dict().items()}
    ids = {id(p) for p in layer.parameters()}
    try:
        layer.load_state_dict(state, assign=True)
    except TypeError:
        pytest.skip(f'load_state_dict(assign=True) needs torch >= 2.1 (torch {torch.__version__})')
    assert not ids & {id(p) for p in layer.parameters()}  # every parameter replaced
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in state.items())
    step_then_check(layer, x)


@pytest.mark.parametrize('kind', KINDS)
def test_swap_module_params_on_conversion_then_double(kind):
    future = torch.__future__
    if not hasattr(future, 'set_swap_module_params_on_conversion'):
        pytest.skip(f'swap on conversion needs torch >= 2.3 (torch {torch.__version__})')
    layer, x = make(kind), inputs(torch.float64)
    ids = [id(p) for p in layer.parameters()]
    was = future.get_swap_module_params_on_conversion()
    future.set_swap_module_params_on_conversion(True)
    try:
        layer.double()
    finally:
        future.set_swap_module_params_on_conversion(was)
    assert [id(p) for p in layer.parameters()] == ids
    assert step_then_check(layer, x).dtype == torch.float64


@pytest.mark.parametrize('kind', KINDS)
def test_whole_model_pickling_and_deepcopy(kind):
    layer, x = make(kind), inputs()
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    kwargs = {'weights_only': False} if 'weights_only' in torch.load.__code__.co_varnames else {}
    for other in (torch.load(buf, **kwargs), pickle.loads(pickle.dumps(layer)),
                  copy.deepcopy(layer)):
        step_then_check(other, x)


@pytest.mark.parametrize('kind', KINDS)
def test_swa_averaged_model(kind):
    layer, x = make(kind), inputs()
    avg = torch.optim.swa_utils.AveragedModel(layer)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):
        train_step(layer, opt, x)
        avg.update_parameters(layer)
    avg.eval()
    with torch.no_grad():
        check(avg.module, x, avg(x))


class Scale(nn.Module):

    def forward(self, w):
        return 2 * w


@pytest.mark.parametrize('how', ['parametrize', 'spectral_norm', 'parametrizations.spectral_norm'])
@pytest.mark.parametrize('kind', KINDS)
def test_parametrized_weight(kind, how):
    layer, x = make(kind), inputs()
    if how == 'parametrize':
        torch.nn.utils.parametrize.register_parametrization(layer, 'weight', Scale())
    elif how == 'spectral_norm':
        torch.nn.utils.spectral_norm(layer)
    else:
        needs('nn.utils.parametrizations.spectral_norm', 'spectral_norm as a parametrization')(
            layer)
    step_then_check(layer, x)


@pytest.fixture(scope='module')
def distributed(tmp_path_factory):
    """FSDP2 ``fully_shard`` and DDP, each over gloo in a one-process world (a spawned process,
    so that no process group outlives it): outputs and references per kind."""
    out = tmp_path_factory.mktemp('dist')
    mp.start_processes(distributed_flows, args=(str(out), KINDS), nprocs=1, start_method='spawn')
    return torch.load(out / 'results.pth')


@pytest.mark.parametrize('kind', KINDS)
def test_fsdp2_and_ddp_over_gloo(kind, distributed):
    for flow, result in distributed[kind].items():
        if isinstance(result, str):
            pytest.skip(result)
        out, ref = result
        assert rel_err(out, ref) < TOL, flow


@pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))
@pytest.mark.parametrize('kind', KINDS)
def test_compile_and_export(kind):
    """torch.compile (dynamo and AOT autograd; inductor is tests/core/test_compile.py's) trains
    and evaluates; torch.export's program evaluates."""
    layer, x = make(kind), inputs()
    compiled = torch.compile(layer, backend='aot_eager')
    train_step(compiled, torch.optim.SGD(layer.parameters(), lr=0.1), x)
    layer.eval()
    with torch.no_grad():
        check(layer, x, compiled(x))
    export = needs('export.export', 'torch.export needs torch >= 2.1')
    check(layer, x, export(layer, (x, )).module()(x))


@pytest.mark.parametrize('kind', KINDS)
def test_channels_last_and_bf16_autocast(kind):
    layer, x = make(kind).to(memory_format=torch.channels_last), inputs()
    x = x.to(memory_format=torch.channels_last)
    step_then_check(layer, x)
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = layer(x)
            assert out.dtype == torch.bfloat16
            check(layer, x, out, TOL_BF16)
