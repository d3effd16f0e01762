"""convert(): plain convs become DO-Conv layers computing the same function, and fold_model gives
the plain network back, before and after training; under autocast (with a GradScaler),
channels_last and torch.compile as in float32 eager mode; on every device (conftest.py)."""
import copy
import logging

import pytest
import torch
import torch.nn as nn

from doconv_mm import DOConv2d, convert, count_do_convs, fold_model
from layer_helpers import TOL32, compile_unavailable, cuda_unavailable, rel_err
from reference import two_stage

# float32 outputs of two equal functions computed by different kernels (DO-Conv vs folded):
# TOL32 (1e-5) relative to the output's scale. Under autocast, DO-Conv against the same network
# as plain convs, each vs float32 (five layers deep, relative to the largest value): outputs within
# 1.1x the plain network's error, gradients 1.5x (measured on this net with bfloat16 on one CPU,
# torch 2.13: DO-Conv 4.5e-3 / 4.3e-2, plain 4.5e-3 / 3.5e-2).


class Net(nn.Module):
    """Every conv case convert() must handle, and a few it must leave alone."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # DO-Conv, no bias
        self.bn = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2)  # stride, dilation
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, padding_mode='reflect')  # DO-GConv
        self.depthwise = nn.Conv2d(8, 16, 5, padding='same', groups=8,
                                   padding_mode='circular')  # DO-DConv, multiplier 2
        self.wide = nn.Conv2d(16, 8, (1, 3), padding=(0, 1), padding_mode='replicate')  # 1x3
        self.point = nn.Conv2d(8, 8, 1)  # 1x1: stays

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.grouped(self.down(x))
        return self.point(self.wide(torch.relu(self.depthwise(x))))


def net(seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        model = Net()
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.weight.uniform_(0.5, 1.5)
    return model


def x_batch(seed=1, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, 16, generator=g, device='cpu').to(device)


def test_converted_model_computes_the_original(caplog):
    plain = net()
    with caplog.at_level(logging.INFO, logger='doconv_mm'):
        do = convert(copy.deepcopy(plain))
    assert 'convert: 5 conv layers -> 3 DO-Conv, 1 DO-DConv, 1 DO-GConv' in caplog.text
    assert count_do_convs(do) == 5 and type(do.point) is nn.Conv2d
    for name in ('stem', 'down', 'grouped', 'depthwise', 'wide'):
        a, b = getattr(plain, name), getattr(do, name)
        assert isinstance(b, DOConv2d) and torch.equal(a.weight, b.weight)
        for attr in ('stride', 'padding', 'dilation', 'groups', 'padding_mode', 'kernel_size'):
            assert getattr(a, attr) == getattr(b, attr), (name, attr)
        assert (a.bias is None) == (b.bias is None)
    x = x_batch()
    for mode in (True, False):
        plain.train(mode), do.train(mode)
        assert rel_err(do(x), plain(x)) < TOL32
    # and each layer against the independent two-stage reference, with a non-zero D
    with torch.no_grad():
        do.grouped.D.normal_(0, 0.3)
    h = torch.randn(2, 8, 8, 8)
    assert rel_err(do.grouped(h), two_stage(h, do.grouped)) < TOL32


def test_round_trip_before_and_after_training(device):
    plain = net().to(device).eval()
    x = x_batch(device=device)
    do = convert(copy.deepcopy(plain))
    folded = fold_model(copy.deepcopy(do))
    assert count_do_convs(folded) == 0
    assert all(type(m) is nn.Conv2d for m in folded.modules() if isinstance(m, nn.Conv2d))
    assert rel_err(folded(x), plain(x)) < TOL32

    do.train()
    optimizer = torch.optim.SGD(do.parameters(), lr=0.05, momentum=0.9)
    for step in range(4):
        optimizer.zero_grad()
        do(x_batch(10 + step, device)).square().mean().backward()
        optimizer.step()
    assert do.stem.D.abs().max() > 0
    do.eval()
    trained = do(x)
    assert rel_err(trained, plain(x)) > 1e-3  # training moved it
    assert rel_err(fold_model(do)(x), trained) < TOL32


def test_options_frozen_weights_and_shared_modules():
    model = net()
    model.stem.weight.requires_grad_(False)  # a frozen stage stays frozen: D too
    model.again = model.down  # one conv in two places: one DO-Conv in both
    convert(model, D_mul=12, exclude=['grouped'], include=['stem', 'down', 'grou*', 'again'])
    assert isinstance(model.stem, DOConv2d) and model.stem.D_mul == 12
    assert not model.stem.D.requires_grad and not model.stem.W_extra.requires_grad
    assert model.down is model.again and isinstance(model.down, DOConv2d)
    assert type(model.grouped) is nn.Conv2d and type(model.depthwise) is nn.Conv2d
    assert type(convert(net(), min_kernel=4).depthwise) is DOConv2d  # 5x5 only
    assert count_do_convs(convert(net(), min_kernel=4)) == 1


class StandardisedConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


def test_bad_input_names_it_and_changes_nothing():
    with pytest.raises(TypeError, match='model must be a torch.nn.Module, got dict'):
        convert({})
    with pytest.raises(TypeError, match='single conv'):
        convert(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match='min_kernel must be an int >= 2'):
        convert(net(), min_kernel=1)
    model = net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"include pattern\(s\) \['head\.\*'\] match no module"):
        convert(model, include=['stem', 'head.*'])
    with pytest.raises(ValueError, match=r"exclude pattern\(s\) \['nope'\]"):
        convert(model, exclude='nope')
    assert count_do_convs(model) == 0 and model.state_dict().keys() == before.keys()
    model.ws = StandardisedConv(8, 8, 3)
    with pytest.warns(UserWarning, match=r'ws \(test_convert.StandardisedConv\)'):
        convert(model)
    assert type(model.ws) is StandardisedConv and count_do_convs(model) == 5


def trained_do_net(device='cpu'):
    do = convert(net()).to(device)
    with torch.no_grad():
        for m in do.modules():
            if isinstance(m, DOConv2d) and m.D is not None:
                m.D.normal_(0, 0.2)
    return do


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def step(model, x):
    model.zero_grad()
    out = model(x)
    out.float().square().mean().backward()
    return out


def autocast_errors(model, x, device_type='cpu', dtype=torch.bfloat16):
    """Relative errors of ``model``'s output and worst parameter gradient under autocast, against
    float32; checks the parameters and their gradients stay float32."""
    ref = step(model, x)
    ref_grads = grads(model)
    with torch.autocast(device_type, dtype=dtype):
        out = step(model, x)
    assert out.dtype == dtype
    for g, p in zip(grads(model), model.parameters()):
        assert p.dtype == g.dtype == torch.float32
    return rel_err(out, ref), max(rel_err(g, r) for g, r in zip(grads(model), ref_grads))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_matches_float32_and_keeps_float32_parameters(device, dtype):
    """DO-Conv adds nothing to the autocast dtype's rounding beyond what the same network as plain
    convs (its fold) gets: how much that is depends on torch's low-precision convolution on the
    device (bfloat16 outputs 0.0045 on torch 2.13, 0.0145 on torch 1.13 on one CPU)."""
    if device == 'cpu' and dtype == torch.float16:
        pytest.skip('float16 autocast is run on CUDA (bfloat16 is the CPU\'s)')
    do, x = trained_do_net(device), x_batch(device=device)
    plain = fold_model(copy.deepcopy(do)).train()
    do_out, do_grad = autocast_errors(do, x, device, dtype)
    plain_out, plain_grad = autocast_errors(plain, x, device, dtype)
    assert plain_out < 3e-2 and plain_grad < 1e-1  # 8 (bfloat16) or 11 (float16) mantissa bits
    assert do_out <= 1.1 * plain_out + 1e-4
    assert do_grad <= 1.5 * plain_grad  # D's gradients pass through one more rounded product
    # evaluation: the unfolded network (float32 kernels) against its fold (float64 kernels cast to
    # float32), each convolving in the autocast dtype; a kernel element on either side of a
    # rounding boundary of that dtype differs by one unit: 2**-7 (bfloat16), 2**-10 (float16)
    do.eval()
    with torch.no_grad(), torch.autocast(device, dtype=dtype):
        unfolded = do(x)
        ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
        assert rel_err(unfolded, fold_model(copy.deepcopy(do))(x)) < ulp


def grad_scaler(device):
    """torch.amp.GradScaler for ``device`` (torch >= 2.3), or CUDA's own before it."""
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler(device, init_scale=2.0**10)
    if device != 'cuda':
        pytest.skip(f'a GradScaler for {device} needs torch >= 2.3 (torch {torch.__version__})')
    return torch.cuda.amp.GradScaler(init_scale=2.0**10)


def test_grad_scaler_skips_a_step_with_an_inf_gradient_and_takes_the_next(device):
    """Mixed-precision training as mmengine's AmpOptimWrapper runs it: a step whose gradients hold
    an inf changes no parameter and halves the scale; the next step trains, all finite."""
    dtype = torch.float16 if device == 'cuda' else torch.bfloat16
    do, x = trained_do_net(device), x_batch(device=device)
    scaler, optimizer = grad_scaler(device), torch.optim.SGD(do.parameters(), lr=0.1)

    def step(inject_inf):
        optimizer.zero_grad()
        with torch.autocast(device, dtype=dtype):
            loss = do(x).float().square().mean()
        scaler.scale(loss).backward()
        if inject_inf:
            do.grouped.D.grad.view(-1)[0] = float('inf')
        scaler.step(optimizer)
        scaler.update()

    before = {k: v.detach().clone() for k, v in do.named_parameters()}
    step(inject_inf=True)
    assert scaler.get_scale() == 2.0**9
    assert all(torch.equal(p, before[k]) for k, p in do.named_parameters())
    step(inject_inf=False)
    assert all(torch.isfinite(p).all() for p in do.parameters())
    assert all(torch.isfinite(p.grad).all() for p in do.parameters())
    assert not torch.equal(do.grouped.D, before['grouped.D']) and scaler.get_scale() == 2.0**9


def test_fold_on_cuda_equals_fold_on_cpu():
    """The float64 fold gives the same float32 kernels on either device (within one float32
    rounding: the float64 sums may run in another order)."""
    if cuda_unavailable():
        pytest.skip(cuda_unavailable())
    do = trained_do_net()
    on_cpu = fold_model(copy.deepcopy(do)).state_dict()
    on_cuda = fold_model(copy.deepcopy(do).cuda()).state_dict()
    assert on_cpu.keys() == on_cuda.keys()
    for k, v in on_cpu.items():
        assert on_cuda[k].device.type == 'cuda' and on_cuda[k].dtype == v.dtype, k
        assert rel_err(on_cuda[k].cpu(), v) < 1.2e-7, k


def test_channels_last_gives_the_contiguous_outputs_and_gradients(device):
    do, x = trained_do_net(device), x_batch(device=device)
    do_cl = copy.deepcopy(do).to(memory_format=torch.channels_last)  # same BN statistics after
    ref = step(do, x)
    ref_grads = grads(do)
    out = step(do_cl, x.contiguous(memory_format=torch.channels_last))
    assert rel_err(out, ref) < TOL32
    for g, r in zip(grads(do_cl), ref_grads):
        assert rel_err(g, r) < TOL32
    do.eval(), do_cl.eval()
    with torch.no_grad():
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert rel_err(do_cl(x_cl), do(x)) < TOL32
        assert rel_err(fold_model(do_cl)(x_cl), do(x)) < TOL32


@pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))
def test_torch_compile_matches_eager(device):
    do, x = trained_do_net(device), x_batch(device=device)
    ref = step(do, x)
    ref_grads = grads(do)
    compiled = torch.compile(do)
    out = step(compiled, x)
    assert rel_err(out, ref) < TOL32
    for g, r in zip(grads(do), ref_grads):
        assert rel_err(g, r) < TOL32
    do.eval()
    with torch.no_grad():
        assert rel_err(compiled(x), fold_model(copy.deepcopy(do))(x)) < TOL32
