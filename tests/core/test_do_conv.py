import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

try:  # torch >= 2.0
    from torch.func import functional_call
except ImportError:  # torch 1.13
    from torch.nn.utils.stateless import functional_call

from doconv_mm import DOConv2d, do_conv_kernel, fold_model
from layer_helpers import TOL32, TOL64, rel_err, trained_like
from reference import two_stage

# groups as (in, out, groups): DO-Conv, DO-GConv, DO-DConv, DO-DConv with channel multiplier 2
GROUPINGS = [(4, 6, 1), (4, 6, 2), (4, 4, 4), (4, 8, 4)]
KERNELS = [(3, 3), (5, 5), (1, 3), (3, 5)]


@pytest.mark.parametrize('channels', GROUPINGS, ids=lambda c: 'in{}-out{}-g{}'.format(*c))
@pytest.mark.parametrize('kernel', KERNELS, ids=lambda k: '{}x{}'.format(*k))
def test_matches_two_stage_reference(channels, kernel, device):
    c_in, c_out, groups = channels
    mn = kernel[0] * kernel[1]
    grid = itertools.product((1, 2), (1, 2), ('zeros', 'reflect', 'replicate', 'circular'),
                             (True, False), (mn, mn + 3))
    torch.manual_seed(0)
    for stride, dilation, mode, bias, d_mul in grid:
        padding = (kernel[0] // 2 * dilation, kernel[1] // 2 * dilation + 1)  # non-square
        conv = DOConv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias, mode,
                        D_mul=d_mul)
        trained_like(conv)
        x = torch.randn(2, c_in, 11, 10)
        case = (stride, dilation, mode, bias, d_mul)
        assert rel_err(conv(x), two_stage(x, conv)) < TOL32, case
        conv64 = conv.double()
        assert rel_err(conv64(x.double()), two_stage(x, conv64)) < TOL64, case


def test_same_and_valid_padding_match_reference(device):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 8, dtype=torch.float64)
    for padding, dilation in (('same', 1), ('same', 2), ('valid', 1)):
        conv = trained_like(DOConv2d(4, 5, (3, 4), padding=padding, dilation=dilation)).double()
        out = conv(x)
        assert rel_err(out, two_stage(x, conv)) < TOL64
        if padding == 'same':
            assert out.shape[2:] == x.shape[2:]


def test_one_by_one_is_a_plain_conv(device):
    conv = DOConv2d(4, 6, 1, D_mul=9)
    assert conv.D is None and conv.W_extra is None and conv.D_mul == 1
    assert {n for n, _ in conv.named_parameters()} == {'weight', 'bias'}
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias))


@pytest.mark.parametrize('channels', GROUPINGS, ids=lambda c: 'in{}-out{}-g{}'.format(*c))
def test_gradients_match_two_stage_reference(channels, device):
    """Training gradients (input, weight, D, W_extra, bias) against the reference's autograd."""
    c_in, c_out, groups = channels
    torch.manual_seed(0)
    cases = [((3, 3), 1, 1, 'zeros', 9), ((3, 5), 2, 1, 'reflect', 17), ((5, 5), 1, 2, 'zeros', 25),
             ((3, 4), 1, 1, 'zeros', 12)]  # the last: even width, asymmetric 'same' padding
    for kernel, stride, dilation, mode, d_mul in cases:
        padding = 'same' if kernel == (3, 4) else (kernel[0] // 2 * dilation, kernel[1] // 2)
        conv = trained_like(DOConv2d(c_in, c_out, kernel, stride, padding, dilation, groups,
                                     padding_mode=mode, D_mul=d_mul)).double()
        x = torch.randn(2, c_in, 9, 10, dtype=torch.float64, requires_grad=True)
        R = torch.randn_like(two_stage(x, conv))
        inputs = [x] + [p for p in conv.parameters()]
        names = ['input'] + [n for n, _ in conv.named_parameters()]
        ref = torch.autograd.grad((two_stage(x, conv) * R).sum(), inputs)
        ours = torch.autograd.grad((conv(x) * R).sum(), inputs)
        for name, a, b in zip(names, ours, ref):
            assert rel_err(a, b) < TOL64, (kernel, name)
        # an input without gradient (a network's first layer)
        ours = torch.autograd.grad((conv(x.detach()) * R).sum(), inputs[1:])
        assert all(rel_err(a, b) < TOL64 for a, b in zip(ours, ref[1:])), kernel


def loop_kernel(weight, D, W_extra):
    """K by the module doc's formula, one (output, input channel) pair at a time (float64)."""
    c_out, c_in_g, kh, kw = weight.shape
    W = weight.reshape(c_out, c_in_g, -1)
    W = W if W_extra is None else torch.cat([W, W_extra], 2)
    eye = torch.eye(kh * kw, D.shape[2], dtype=D.dtype)
    c_out_g = c_out // (D.shape[0] // c_in_g)
    rows = [torch.stack([(D[o // c_out_g * c_in_g + i] + eye) @ W[o, i] for i in range(c_in_g)])
            for o in range(c_out)]
    return torch.stack(rows).view(weight.shape)


@pytest.mark.parametrize('channels', GROUPINGS + [(6, 6, 3)],
                         ids=lambda c: 'in{}-out{}-g{}'.format(*c))
@pytest.mark.parametrize('d_extra', [0, 3])
def test_kernel_and_its_gradients_match_the_formula(channels, d_extra, device):
    """do_conv_kernel and its gradients against the formula composed pair by pair (autograd
    through the loop gives the reference gradients), for every input needing a gradient and for
    each one alone."""
    c_in, c_out, groups = channels
    torch.manual_seed(0)
    weight = torch.randn(c_out, c_in // groups, 3, 3, dtype=torch.float64)
    D = 0.3 * torch.randn(c_in, 9, 9 + d_extra, dtype=torch.float64)
    W_extra = torch.randn(c_out, c_in // groups, d_extra, dtype=torch.float64) if d_extra else None
    G = torch.randn_like(weight)
    leaves = [t for t in (weight, D, W_extra) if t is not None]
    for wanted in [leaves] + [[t] for t in leaves]:
        for t in leaves:
            t.requires_grad_(any(t is w for w in wanted))
        K = do_conv_kernel(weight, D, W_extra)
        assert rel_err(K, loop_kernel(weight, D, W_extra)) < TOL64
        ours = torch.autograd.grad(K, wanted, G)
        ref = torch.autograd.grad(loop_kernel(weight, D, W_extra), wanted, G)
        assert all(rel_err(a, b) < TOL64 for a, b in zip(ours, ref))


# float32 sums of at most 25 products (gradients: at most 300): within 25 * 2**-24 ~ 1.5e-6 of the
# largest value; the gradients' longer sums are pairwise in BLAS
TOL_SUM32 = 2e-6


def einsum_kernel(weight, D, W_extra):
    """K by the formula as one einsum (float64; for shapes too large for :func:`loop_kernel`)."""
    c_out, c_in_g, kh, kw = weight.shape
    groups = D.shape[0] // c_in_g
    W = weight.reshape(c_out, c_in_g, -1)
    W = W if W_extra is None else torch.cat([W, W_extra], 2)
    DI = D + torch.eye(kh * kw, D.shape[2], dtype=D.dtype)
    return torch.einsum('gims,gois->goim', DI.view(groups, c_in_g, kh * kw, -1),
                        W.view(groups, c_out // groups, c_in_g, -1)).reshape(weight.shape)


@pytest.mark.parametrize('shape', [(40, 19, 1, (3, 3), 9), (24, 19, 1, (3, 3), 16),
                                   (18, 12, 3, (3, 3), 12), (8, 8, 8, (3, 3), 9),
                                   (20, 6, 2, (1, 3), 5), (9, 4, 1, (2, 2), 16),
                                   (6, 4, 2, (5, 5), 25), (72, 300, 1, (3, 3), 9),
                                   (128, 256, 2, (3, 3), 12)],
                         ids=lambda s: 'out{}-in{}-g{}-{}x{}-dmul{}'.format(*s[:3], *s[3], s[4]))
def test_float32_composition_matches_the_formula(shape, device):
    """The float32 kernel and its gradients (other kernel sizes, extra columns, groups, channel
    multipliers, shapes large enough for the batched products to run on several threads) against
    the float64 formula."""
    c_out, c_in, groups, (kh, kw), d_mul = shape
    mn = kh * kw
    torch.manual_seed(0)
    weight = torch.randn(c_out, c_in // groups, kh, kw, dtype=torch.float64)
    D = 0.3 * torch.randn(c_in, mn, d_mul, dtype=torch.float64)
    W_extra = torch.randn(c_out, c_in // groups, d_mul - mn, dtype=torch.float64) \
        if d_mul > mn else None
    leaves = [t.requires_grad_() for t in (weight, D, W_extra) if t is not None]
    G = torch.randn_like(weight)
    ref_K = (loop_kernel if c_out * c_in < 5000 else einsum_kernel)(weight, D, W_extra)
    ref = torch.autograd.grad(ref_K, leaves, G)
    f32 = [t.detach().float().requires_grad_() for t in leaves]
    K = do_conv_kernel(*f32)
    assert K.dtype == torch.float32 and K.is_contiguous() and rel_err(K, ref_K) < TOL_SUM32
    grads = torch.autograd.grad(K, f32, G.float())
    assert all(rel_err(a, b) < TOL_SUM32 for a, b in zip(grads, ref))


@pytest.mark.parametrize('frozen', ['weight', 'D', 'W_extra', 'bias'])
def test_partly_frozen_layer_gradients_match_reference(frozen, device):
    torch.manual_seed(0)
    conv = trained_like(DOConv2d(4, 6, 3, padding=1, groups=2, D_mul=11)).double()
    getattr(conv, frozen).requires_grad_(False)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    inputs = [x] + [p for p in conv.parameters() if p.requires_grad]
    ours = torch.autograd.grad(conv(x).square().sum(), inputs)
    ref = torch.autograd.grad(two_stage(x, conv).square().sum(), inputs)
    assert all(rel_err(a, b) < TOL64 for a, b in zip(ours, ref))
    assert getattr(conv, frozen).grad is None


def test_gradcheck(device):
    torch.manual_seed(0)
    conv = trained_like(DOConv2d(4, 4, 3, padding=1, groups=2, D_mul=11)).double()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in conv.named_parameters()]

    def f(x, *params):
        return functional_call(conv, dict(zip(names, params)), (x, ))

    assert torch.autograd.gradcheck(f, (x, *conv.parameters()))


def test_training_forward_keeps_one_composed_kernel(device):
    """Beyond the input and the parameters, a training forward saves the composed kernel (for the
    input's gradient) and nothing else kernel-sized or larger: the memory of one kernel."""
    conv = trained_like(DOConv2d(8, 16, 3, padding=1, D_mul=12))
    x = torch.randn(2, 8, 6, 6)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = conv(x)
    ours = {t.data_ptr() for t in [x, *conv.parameters()]}
    extra = [t for t in saved if t.data_ptr() not in ours]
    kernels = [t for t in extra if t.shape == conv.weight.shape]
    assert len(kernels) == 1 and torch.equal(kernels[0], conv.kernel().detach())
    # the rest: W = [weight | W_extra] and D + I for the batched product, each smaller than K
    assert sum(t.numel() for t in extra) <= 2 * conv.weight.numel() + conv.W_extra.numel() \
        + conv.D.numel(), [tuple(t.shape) for t in extra]
    out.sum().backward()
    assert all(p.grad is not None for p in conv.parameters())


def test_keep_kernel_is_accepted_and_ignored():
    with pytest.warns(DeprecationWarning, match='keep_kernel=...\\) has no effect'):
        conv = DOConv2d(4, 8, 3, keep_kernel=False)
    assert not hasattr(conv, 'keep_kernel') and 'keep_kernel' not in repr(conv)


def test_frozen_layer_in_eval_mode_gives_input_gradients(device):
    """A frozen layer in eval mode (mmdet's frozen stages, Grad-CAM) composes its kernel as in
    training and passes the input's gradient through."""
    conv = trained_like(DOConv2d(4, 4, 3, padding=1)).requires_grad_(False).eval()
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    assert rel_err(x.grad, torch.autograd.grad(two_stage(x, conv).sum(), x)[0]) < TOL32


def test_is_a_conv2d_with_conv_attributes_and_keyword_only_d_mul():
    conv = DOConv2d(4, 8, 3, 2, 1)  # stride and padding positionally, as for nn.Conv2d
    assert isinstance(conv, nn.Conv2d)
    assert conv.stride == (2, 2) and conv.padding == (1, 1)
    assert conv.weight.shape == (8, 4, 3, 3) and conv.transposed is False
    assert conv.output_padding == (0, 0) and conv.D.shape == (4, 9, 9)
    assert torch.count_nonzero(conv.D) == 0
    with pytest.raises(TypeError):
        DOConv2d(4, 8, 3, 1, 0, 1, 1, True, 'zeros', None, None, 12)


@pytest.mark.parametrize('d_mul', [None, 13])
@pytest.mark.parametrize('groups', [1, 2, 4])
def test_plain_state_dict_loads_as_identity_start(groups, d_mul, device):
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 8, 3, padding=1, groups=groups)
    x = torch.randn(2, 4, 7, 7)
    expected = plain(x)
    for strict in (False, True):
        conv = trained_like(DOConv2d(4, 8, 3, padding=1, groups=groups, D_mul=d_mul))
        result = conv.load_state_dict(plain.state_dict(), strict=strict)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.count_nonzero(conv.D) == 0
        assert torch.equal(conv(x), expected)
        assert torch.equal(conv.fold().weight, plain.weight)


def test_wrong_shape_state_dict_raises_size_mismatch():
    conv = DOConv2d(4, 8, 3)
    with pytest.raises(RuntimeError, match='size mismatch for weight'):
        conv.load_state_dict(nn.Conv2d(4, 8, 5).state_dict(), strict=False)
    state = conv.state_dict()
    state['D'] = torch.zeros(4, 9, 10)
    with pytest.raises(RuntimeError, match='size mismatch for D'):
        conv.load_state_dict(state)


def test_do_conv_state_dict_round_trip(device):
    conv = trained_like(DOConv2d(4, 8, 3, padding=1, D_mul=12))
    other = DOConv2d(4, 8, 3, padding=1, D_mul=12)
    other.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(other(x), conv(x))
    assert set(conv.state_dict()) == {'weight', 'bias', 'D', 'W_extra'}


@pytest.mark.parametrize('channels', GROUPINGS)
def test_fold_matches_reference(channels, device):
    c_in, c_out, groups = channels
    torch.manual_seed(1)
    conv = trained_like(DOConv2d(c_in, c_out, (3, 5), 2, (1, 2), 2, groups, True, 'circular',
                                 D_mul=17))
    folded = conv.fold()
    assert type(folded) is nn.Conv2d
    for attr in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation',
                 'groups', 'padding_mode'):
        assert getattr(folded, attr) == getattr(conv, attr)
    x = torch.randn(2, c_in, 12, 12)
    assert rel_err(folded(x), two_stage(x, conv)) < TOL32


def tiny_net(conv_type):
    return nn.Sequential(
        conv_type(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(conv_type(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)))


def test_fold_model_gives_plain_network_state_dict(device):
    torch.manual_seed(0)
    net = tiny_net(DOConv2d)
    for m in net.modules():
        if isinstance(m, DOConv2d):
            trained_like(m)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    plain_state = tiny_net(nn.Conv2d).state_dict()
    assert fold_model(net) is net
    assert not any(isinstance(m, DOConv2d) for m in net.modules())
    state = net.state_dict()
    assert list(state) == list(plain_state)
    assert all(state[k].shape == plain_state[k].shape for k in state)
    assert rel_err(net(x), expected) < TOL32
    # a stock network loads it strictly
    stock = tiny_net(nn.Conv2d).eval()
    stock.load_state_dict(state, strict=True)
    assert torch.equal(stock(x), net(x))
    # a bare layer folds to a new conv
    assert type(fold_model(DOConv2d(2, 2, 3))) is nn.Conv2d


def test_sgd_step_from_plain_kernel_follows_the_math():
    """One SGD step from D = 0: the updated kernel as predicted by the chain rule, by loops."""
    torch.manual_seed(0)
    c_in, c_out, groups, d_mul, lr = 4, 6, 2, 11, 0.1
    plain = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False).double()
    conv = DOConv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False, D_mul=d_mul).double()
    conv.load_state_dict(plain.state_dict())
    x = torch.randn(2, c_in, 6, 6, dtype=torch.float64)
    R = torch.randn(2, c_out, 6, 6, dtype=torch.float64)
    # dL/dK from the plain conv's autograd
    (plain(x) * R).sum().backward()
    G = plain.weight.grad.reshape(c_out, c_in // groups, 9).numpy()
    W = np.concatenate([plain.weight.detach().reshape(c_out, c_in // groups, 9).numpy(),
                        conv.W_extra.detach().numpy()], 2)
    gW, gD = np.zeros_like(W), np.zeros((c_in, 9, d_mul))
    c_in_g, c_out_g = c_in // groups, c_out // groups
    for o, i, m, s in itertools.product(range(c_out), range(c_in_g), range(9), range(d_mul)):
        c = (o // c_out_g) * c_in_g + i
        gW[o, i, s] += (m == s) * G[o, i, m]  # D = 0: dK/dW = I
        gD[c, m, s] += W[o, i, s] * G[o, i, m]
    W1, D1 = W - lr * gW, -lr * gD
    K1 = np.zeros((c_out, c_in_g, 9))
    for o, i, m, s in itertools.product(range(c_out), range(c_in_g), range(9), range(d_mul)):
        c = (o // c_out_g) * c_in_g + i
        K1[o, i, m] += (D1[c, m, s] + (m == s)) * W1[o, i, s]
    opt = torch.optim.SGD(conv.parameters(), lr=lr)
    (conv(x) * R).sum().backward()
    opt.step()
    K = conv.fold().weight.detach().reshape(c_out, c_in_g, 9).numpy()
    assert np.abs(K - K1).max() / np.abs(K1).max() < TOL64


def test_every_mode_composes_from_the_parameters_as_they_are(device):
    """No kernel outlives a forward: each one, in eval mode without gradients too, follows every
    way of editing the parameters (in place, through ``.data``, a NumPy view, a new parameter)."""
    torch.manual_seed(0)
    conv = trained_like(DOConv2d(4, 6, 3, padding=1, D_mul=11)).eval()
    x = torch.randn(1, 4, 5, 5)
    edits = [lambda: conv.D.add_(0.5), lambda: conv.D.data[3, 1, 2].add_(0.5),
             lambda: conv.weight.detach().numpy().__imul__(3),
             lambda: setattr(conv, 'D', nn.Parameter(conv.D.detach() + 0.2)),
             lambda: conv.W_extra.mul_(2)]
    with torch.no_grad():
        for edit in [lambda: None] + edits:
            edit()
            assert rel_err(conv(x), two_stage(x, conv)) < TOL32


def test_weight_replaced_without_w_extra_is_refused_at_forward():
    """Replacing the ``weight`` parameter alone (mmcv's fuse_conv_bn) drops ``W_extra``'s
    rescaling when D_mul > M*N: the next forward refuses; replacing every parameter (a loader)
    or none (in place, ``.data``) does not, and with D_mul = M*N the rescaling is exact."""
    x = torch.randn(1, 4, 5, 5)
    conv = trained_like(DOConv2d(4, 6, 3, padding=1, D_mul=11))
    conv.weight = nn.Parameter(conv.weight.detach() * 2)
    with pytest.raises(RuntimeError, match='weight parameter was replaced but not its W_extra.*'
                                           'doconv_mm.fold_model'):
        conv(x)
    conv = trained_like(DOConv2d(4, 6, 3, padding=1, D_mul=11))
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    conv.weight.data = conv.weight.data * 2  # the same parameter object
    conv(x)
    if 'assign' in nn.Module.load_state_dict.__code__.co_varnames:  # torch >= 2.1
        conv.load_state_dict(state, assign=True)  # every parameter replaced
        assert rel_err(conv(x), two_stage(x, conv)) < TOL32
    conv = trained_like(DOConv2d(4, 6, 3, padding=1))
    conv.weight = nn.Parameter(conv.weight.detach() * 2)
    assert rel_err(conv(x), two_stage(x, conv)) < TOL32


# autocast vs the float64 reference, relative to the largest value (72-term sums of rounded
# inputs, accumulated in float32): bfloat16 (8 mantissa bits) 2e-2, float16 (11 bits) 4e-3
TOL_AUTOCAST = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_convolves_the_float32_kernel_in_the_autocast_dtype(device, dtype):
    """As nn.Conv2d under autocast with the float32-composed kernel: the same output, and the
    same gradients up to the autocast dtype's rounding; the gradients are float32."""
    if device == 'cpu' and dtype == torch.float16:
        pytest.skip('float16 autocast is run on CUDA (bfloat16 is the CPU\'s)')
    torch.manual_seed(0)
    conv = trained_like(DOConv2d(8, 8, 3, padding=1, D_mul=10))
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    R = torch.randn(2, 8, 8, 8)
    inputs = [x, *conv.parameters()]
    K = do_conv_kernel(conv.weight, conv.D, conv.W_extra)  # float32, outside autocast
    with torch.autocast(device, dtype=dtype):
        out = conv(x)
        ref = F.conv2d(x, K, conv.bias, 1, 1)
    assert out.dtype == ref.dtype == dtype
    assert torch.equal(out, ref)
    assert rel_err(out.float(), two_stage(x, conv)) < TOL_AUTOCAST[dtype]
    ours = torch.autograd.grad((out.float() * R).sum(), inputs)
    theirs = torch.autograd.grad((ref.float() * R).sum(), inputs)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.float32 and rel_err(a, b) < TOL_AUTOCAST[dtype]


@pytest.mark.parametrize('kwargs, match', [
    (dict(kernel_size=5, D_mul=9), 'D_mul=9 must be an int >= M\\*N = 25'),
    (dict(kernel_size=(3, 3, 3)), 'kernel_size must be .* got \\(3, 3, 3\\)'),
    # nn.Conv2d's own checks
    (dict(groups=3), 'in_channels must be divisible by groups'),
    (dict(out_channels=6, groups=4), 'out_channels must be divisible by groups'),
    (dict(padding_mode='mirror'), "padding_mode must be one of .* padding_mode='mirror'"),
    (dict(padding='same', stride=2), "padding='same' is not supported for strided"),
    (dict(padding='full'), "Invalid padding string 'full'"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    d_mul = args.pop('D_mul', None)
    with pytest.raises(ValueError, match=match):
        DOConv2d(**args, D_mul=d_mul)


@pytest.mark.parametrize('channels', GROUPINGS, ids=lambda c: 'in{}-out{}-g{}'.format(*c))
def test_training_mode_computes_one_kernel_with_and_without_grad(channels, device):
    """Reentrant gradient checkpointing runs a segment first under no_grad, then again with grad
    in backward: a layer in training mode must give bit-identical outputs both times."""
    c_in, c_out, groups = channels
    torch.manual_seed(0)
    conv = trained_like(DOConv2d(c_in, c_out, 3, padding=1, groups=groups, D_mul=11))
    x = torch.randn(2, c_in, 6, 6, requires_grad=True)
    with torch.no_grad():
        first = conv(x)
    again = conv(x)
    assert again.requires_grad and torch.equal(first, again)
    out = torch.utils.checkpoint.checkpoint(conv, x, use_reentrant=True)
    assert torch.equal(out, again)
