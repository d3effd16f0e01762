"""DO-Conv in the OpenMMLab machinery: registry, ConvModule, fuse_conv_bn, initialisers, FLOPs."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule, build_conv_layer, fuse_conv_bn
from mmengine.model import BaseModule
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint

from doconv_mm import DOConv2d
from reference import two_stage
from layer_helpers import TOL32, rel_err, trained_like


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_build_conv_layer_finds_doconv_in_both_scopes(scope):
    import mmdet.registry  # noqa: F401
    import mmseg.registry  # noqa: F401
    with DefaultScope.overwrite_default_scope(scope):
        conv = build_conv_layer(dict(type='DOConv', D_mul=12), 4, 8, 3, 2, padding=1)
    assert type(conv) is DOConv2d and conv.D_mul == 12 and conv.stride == (2, 2)


def conv_bn(efficient=False, d_mul=None, seed=0):
    torch.manual_seed(seed)
    m = ConvModule(4, 6, 3, padding=1, conv_cfg=dict(type='DOConv', D_mul=d_mul),
                   norm_cfg=dict(type='BN'), efficient_conv_bn_eval=efficient)
    trained_like(m.conv, seed)
    with torch.no_grad():  # BN statistics and affine as after training
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(-2, 2)
        m.bn.bias.uniform_(-1, 1)
    return m


def conv_bn_reference(x, m):
    y = two_stage(x, m.conv)
    bn = m.bn
    shape = (1, -1, 1, 1)
    var = bn.running_var.double().view(shape)
    y = (y - bn.running_mean.double().view(shape)) / (var + bn.eps).sqrt()
    return (y * bn.weight.double().view(shape) + bn.bias.double().view(shape)).relu()


@pytest.mark.parametrize('efficient', [False, True])
def test_conv_module_eval_matches_reference(efficient):
    m = conv_bn(efficient).eval()
    x = torch.randn(2, 4, 7, 7)
    assert rel_err(m(x), conv_bn_reference(x, m)) < TOL32
    # trained with frozen BN (BN in eval, conv training): same output and the same gradients
    stock = conv_bn(False)
    for mod in (m, stock):
        mod.train()
        mod.bn.eval()
        mod(x).square().sum().backward()
    assert rel_err(m.conv.D.grad, stock.conv.D.grad) < TOL32
    assert rel_err(m.conv.weight.grad, stock.conv.weight.grad) < TOL32


def test_efficient_conv_bn_eval_refuses_extra_columns():
    m = conv_bn(efficient=True, d_mul=12).eval()
    with pytest.raises(RuntimeError, match='D_mul > M\\*N'):
        m(torch.randn(1, 4, 5, 5))


def test_fuse_conv_bn_parity():
    m = nn.Sequential(conv_bn(seed=1), conv_bn(seed=2).conv).eval()
    m[1] = DOConv2d(6, 6, 3, padding=1, groups=2)
    trained_like(m[1])
    x = torch.randn(2, 4, 7, 7)
    expected = m(x)
    fused = fuse_conv_bn(m)
    assert isinstance(fused[0].bn, nn.Identity) and type(fused[0].conv) is DOConv2d
    assert rel_err(fused(x), expected) < TOL32
    # with D_mul > M*N, fuse_conv_bn rescales weight but not W_extra: the next forward refuses
    fused = fuse_conv_bn(conv_bn(d_mul=12).eval())
    with pytest.raises(RuntimeError, match='weight parameter was replaced but not its W_extra'):
        fused(x)


class Net(BaseModule):

    def __init__(self, conv_cfg=None, init_cfg=None):
        super().__init__(init_cfg)
        self.stem = ConvModule(3, 8, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=dict(type='BN'))
        self.head = build_conv_layer(conv_cfg, 8, 4, 3, padding=1)

    def forward(self, x):
        return self.head(self.stem(x))


def test_initialisers_and_pretrained_keep_identity_start(tmp_path):
    torch.manual_seed(0)
    plain = Net()
    ckpt = tmp_path / 'plain.pth'
    torch.save(plain.state_dict(), ckpt)
    x = torch.randn(2, 3, 8, 8)
    expected = plain.eval()(x)
    do_cfg = dict(type='DOConv')
    # Kaiming on layer='Conv2d' then the pretrained checkpoint, as mmdet/mmseg backbones do
    net = Net(do_cfg, init_cfg=[dict(type='Kaiming', layer='Conv2d'),
                                dict(type='Pretrained', checkpoint=str(ckpt))])
    net.init_weights()
    assert all(torch.count_nonzero(m.D) == 0 for m in net.modules() if isinstance(m, DOConv2d))
    assert torch.equal(net.eval()(x), expected)
    # mmengine's load_checkpoint into a model whose D is already non-zero
    net = Net(do_cfg)
    for m in net.modules():
        if isinstance(m, DOConv2d):
            trained_like(m)
    load_checkpoint(net, str(ckpt), map_location='cpu')
    assert torch.equal(net.eval()(x), expected)
    # the initialisers write the conv's weight (Xavier here) and leave D at zero
    net = Net(do_cfg, init_cfg=dict(type='Xavier', layer='Conv2d', gain=3.0))
    before = net.head.weight.clone()
    net.init_weights()
    assert not torch.equal(net.head.weight, before) and torch.count_nonzero(net.head.D) == 0


def test_flops_counters_count_the_plain_conv():
    from mmcv.cnn import get_model_complexity_info as mmcv_flops
    from mmengine.analysis import get_model_complexity_info as mmengine_flops
    torch.manual_seed(0)
    do_net, plain_net = Net(dict(type='DOConv')).eval(), Net().eval()
    for m in do_net.modules():
        if isinstance(m, DOConv2d):
            trained_like(m)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        # under mmengine's tracer every pass composes the kernels with PyTorch operators: counted
        # at each pass, before and after an evaluation forward
        first = mmengine_flops(do_net, inputs=x, show_table=False, show_arch=False)
        do_net(x)
        warm = mmengine_flops(do_net, inputs=torch.randn(1, 3, 16, 16), show_table=False,
                              show_arch=False)
        stock = mmengine_flops(plain_net, inputs=torch.randn(1, 3, 16, 16), show_table=False,
                               show_arch=False)
    assert warm['flops'] == first['flops'] and stock['flops'] > 0
    # the two compositions, C_out*C_in*MN*D_mul multiply-adds each (fvcore counts a MAC as one)
    assert first['flops'] - stock['flops'] == 8 * 3 * 9 * 9 + 4 * 8 * 9 * 9
    # mmcv's hook-based counter counts the layer as the conv it is
    ours = mmcv_flops(do_net, (3, 16, 16), print_per_layer_stat=False, as_strings=False)
    stock = mmcv_flops(plain_net, (3, 16, 16), print_per_layer_stat=False, as_strings=False)
    assert ours[0] == stock[0] > 0
