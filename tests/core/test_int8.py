"""doconv_mm.core.int8 against hand-computed int8 codes, closed forms and a manual W8A8 forward."""
import math

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from doconv_mm import DOConv2d, fold_model
from doconv_mm.core.int8 import (ActivationQuant, fake_quant_weight, quantize_weights,
                                 quantized_layers, restore_weights, sqnr_db, weight_qparams,
                                 weight_stats)


def test_fake_quant_weight_by_hand():
    w = torch.tensor([[1.0, 0.3, -0.7, 0.0],
                      [0.02, -0.05, 0.04, 0.01],
                      [0.0, 0.0, 0.0, 0.0]])
    # channel 0: scale 1/127; 0.3 * 127 = 38.1 -> 38, -0.7 * 127 = -88.9 -> -89
    # channel 1: scale 0.05/127; 0.4 * 127 = 50.8 -> 51, 0.8 * 127 = 101.6 -> 102, 25.4 -> 25
    codes = torch.tensor([[127, 38, -89, 0], [51, -127, 102, 25], [0, 0, 0, 0]],
                         dtype=torch.float64)
    scales = torch.tensor([1 / 127, 0.05 / 127, torch.finfo(torch.float32).eps],
                          dtype=torch.float64)
    scale, zero_point = weight_qparams(w)
    assert torch.allclose(scale.double(), scales, rtol=1e-7, atol=0)
    assert zero_point.tolist() == [0, 0, 0]
    q = fake_quant_weight(w)
    assert q.dtype == w.dtype and q.shape == w.shape
    assert torch.allclose(q.double(), codes * scales[:, None], rtol=1e-6, atol=1e-12)
    # a 4-d conv weight is quantized per output channel (dim 0) too
    conv_w = w.reshape(3, 1, 2, 2)
    assert torch.equal(fake_quant_weight(conv_w), q.reshape(3, 1, 2, 2))


def test_sqnr_closed_forms():
    # signal 9 + 16 = 25, noise 0.5^2 = 0.25: 10 log10(100) = 20 dB
    x, x_q = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.5])
    assert sqnr_db(x, x_q) == pytest.approx(20.0, abs=1e-12)
    assert sqnr_db(torch.ones(3), torch.ones(3)) == math.inf
    # rounding noise is uniform over one step: channel SQNR = 10 log10(12 * 127^2 * std^2 / peak^2)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 200_000, generator=g) * torch.tensor([[1.0], [0.1], [3.0], [0.02]])
    for row in w:
        stats = weight_stats(row[None])
        expected = 10 * math.log10(12 * 127 ** 2 / stats['peak_to_std_max'] ** 2)
        assert stats['sqnr_db'] == pytest.approx(expected, abs=0.05)
        assert stats['max_abs'] == pytest.approx(row.abs().max().item(), rel=1e-7)
        assert stats['peak_to_std_max'] == pytest.approx(
            (row.abs().max() / row.double().std(unbiased=False)).item(), rel=1e-9)


def test_per_channel_scales_make_bn_fusion_order_irrelevant():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16)
    bn.weight.data.uniform_(-2, 2)  # negative scales too
    bn.running_var.uniform_(0.1, 4)
    bn.running_mean.normal_()
    args = bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    fused, _ = fuse_conv_bn_weights(conv.weight, None, *args)
    q_fused, _ = fuse_conv_bn_weights(fake_quant_weight(conv.weight), None, *args)
    q_of_fused = fake_quant_weight(fused)
    step = weight_qparams(fused)[0].view(-1, 1, 1, 1)
    # the same code for every weight: the values differ by float32 rounding of code * scale only
    # (127 codes * eps = 1.5e-5 steps)
    assert ((q_fused - q_of_fused).abs() <= 1e-4 * step).all()
    assert sqnr_db(fused, q_fused) == pytest.approx(sqnr_db(fused, q_of_fused), abs=0.01)


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def test_quantize_and_restore_weights():
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    saved = quantize_weights(net)
    assert list(saved) == ['0', '3']
    assert torch.equal(net[0].weight, fake_quant_weight(before['0.weight']))
    assert torch.equal(net[3].weight, fake_quant_weight(before['3.weight']))
    assert torch.equal(net[0].bias, before['0.bias'])  # biases stay float
    restore_weights(net, saved)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_unfolded_do_conv_is_refused():
    net = nn.Sequential(DOConv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match='1 DO-Conv layers; .*fold_model'):
        quantized_layers(net)
    assert [n for n, _ in quantized_layers(fold_model(net))] == ['0']


def manual_fq(x, amax):
    scale = amax / 127
    return torch.round(x / scale).clamp(-127, 127) * scale


def test_activation_quant_equals_a_manual_w8a8_forward():
    net = tiny_net().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(2, 3, 6, 6, generator=g) for _ in range(3)]
    x = 1.5 * torch.randn(2, 3, 6, 6, generator=g)  # beyond the calibrated range: clamps
    aq = ActivationQuant(net)
    with torch.no_grad(), aq.calibrate():
        for c in calib:
            net(c)
    assert aq.calibrated() == 2
    amax_in = max(c.abs().max().item() for c in calib)
    amax_hidden = max(torch.relu(net[0](c)).abs().max().item() for c in calib)
    assert aq.qparams('0') == (pytest.approx(amax_in / 127, rel=1e-6), 0)
    assert aq.qparams('3') == (pytest.approx(amax_hidden / 127, rel=1e-6), 0)
    assert x.abs().max().item() > amax_in
    quantize_weights(net)
    with torch.no_grad(), aq.quantize():
        y = net(x)
    with torch.no_grad():  # the hooks are gone: a float forward with the int8 weights
        h = torch.relu(net[0](manual_fq(x, amax_in))).flatten(1)
        expected = net[3](manual_fq(h, amax_hidden))
        assert not torch.allclose(net(x), expected, atol=1e-4)
    assert torch.allclose(y, expected, rtol=0, atol=1e-5)


def test_activation_quant_needs_calibration():
    with pytest.raises(RuntimeError, match='no layer has been calibrated'):
        with ActivationQuant(tiny_net()).quantize():
            pass
