"""torch.compile (inductor) of DO-Conv layers trains and evaluates as eager mode does, for every
grouping (DO-Conv, DO-GConv, DO-DConv) and every padding mode, in one compiled network."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn

from doconv_mm import DOConv2d
from layer_helpers import compile_unavailable, rel_err, trained_like

# compiled against eager float32, relative to the largest value: the two run the same float32
# operators in other orders and fusions (and eager evaluation convolves the float64-composed
# kernel), so they agree to a few float32 roundings of the 12-layer network
TOL_COMPILE = 1e-4
MODES = ('zeros', 'reflect', 'replicate', 'circular')
GROUPS = (1, 2, 8)  # DO-Conv, DO-GConv, DO-DConv


def every_case_net():
    torch.manual_seed(0)
    layers = []
    for k, (mode, groups) in enumerate(itertools.product(MODES, GROUPS)):
        conv = DOConv2d(8, 8, 3, padding=1, groups=groups, padding_mode=mode,
                        D_mul=9 if k % 2 else 11)
        layers += [trained_like(conv, seed=k), nn.Tanh()]
    return nn.Sequential(*layers)


@pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))
def test_compiled_training_and_evaluation_equal_eager():
    eager = every_case_net()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net)
    x = torch.randn(2, 8, 7, 6, generator=torch.Generator().manual_seed(1))
    R = torch.randn(2, 8, 7, 6, generator=torch.Generator().manual_seed(2))
    for net, fn in ((eager, eager), (compiled_net, compiled)):
        net.train()
        (fn(x) * R).sum().backward()
    assert rel_err(compiled(x), eager(x)) < TOL_COMPILE
    for (name, a), b in zip(eager.named_parameters(), compiled_net.parameters()):
        assert a.grad is not None and rel_err(b.grad, a.grad) < TOL_COMPILE, name
    eager.eval(), compiled_net.eval()
    with torch.no_grad():
        assert rel_err(compiled(x), eager(x)) < TOL_COMPILE


def test_replicate_padding_by_index_equals_f_pad():
    """The padding the compiled replicate route uses, against F.pad, values and gradients."""
    from doconv_mm.core.do_conv import _replicate_pad
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    for pad in ([1, 1, 1, 1], [0, 2, 3, 0]):
        ours = _replicate_pad(x, pad)
        ref = torch.nn.functional.pad(x, pad, mode='replicate')
        assert torch.equal(ours, ref)
        G = torch.randn_like(ref)
        assert torch.equal(*(torch.autograd.grad(y, x, G)[0] for y in (ours, ref)))
