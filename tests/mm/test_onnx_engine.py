"""The ONNX Runtime engine (doconv_mm.mm.onnx_engine) on the toy DeepLabv3 built from its config:
the exported graph against PyTorch, the stand-in inside mmseg's own predict, the int8 graph's
weight codes against an independent per-channel computation, and what it refuses. (The detector
runs end to end in tests/tools/test_quant_check.py.)"""
import pytest
import torch
import torch.nn as nn

from doconv_mm import fold_model
from mm_helpers import build_model, project_config
from layer_helpers import rel_err

onnx = pytest.importorskip('onnx', reason='onnx is in the tests extra')
pytest.importorskip('onnxruntime', reason='onnxruntime is in the tests extra')
pytest.importorskip('mmseg')

from doconv_mm.mm import onnx_engine as engine  # noqa: E402
from doconv_mm.requirements import UsageError  # noqa: E402

SEG_CFG = 'configs/demo/deeplabv3_r18-d8_doconv-all_toy-cityscapes.py'
TOL = 1e-4  # the fp32 session against PyTorch, relative to the largest output


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    """The folded toy DO-Conv-all DeepLabv3 (random D, so the fold is not the identity), its
    graphs and a few inputs of two image sizes."""
    torch.manual_seed(0)
    model = build_model(project_config(SEG_CFG))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('.D'):
                p.normal_(0, 0.05)
        for m in model.modules():  # BN that is not the identity (nor zero: zero_init_residual)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # SyncBN too
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = fold_model(model.eval())
    xs = [torch.randn(1, 3, 64, 128), torch.randn(2, 3, 64, 96), torch.randn(1, 3, 96, 64)]
    (part, ) = engine.parts(model)
    folder = tmp_path_factory.mktemp('onnx')
    fp32, int8 = str(folder / 'net.fp32.onnx'), str(folder / 'net.int8.onnx')
    engine.export(part, xs[0], fp32)
    engine.quantize(fp32, int8, xs)
    return model, part, xs, fp32, int8


def test_fp32_session_equals_pytorch_at_every_size(seg):
    model, part, xs, fp32, _ = seg
    assert part.name == 'net' and part.entry is model.backbone
    assert not model.training and not any(m.training for m in model.modules())  # export kept it
    session = engine.Session(fp32)
    for x in xs:  # other batch sizes and image sizes than the traced one: dynamic axes
        with torch.no_grad():
            expected = model._forward(x)
        (out, ) = session(x)
        assert out.shape == expected.shape
        assert rel_err(out, expected) < TOL


def predict_with_session(model, x, session):
    """mmseg's predict of ``x`` in PyTorch, then with ``session`` running the graph: the samples,
    PyTorch's logits, the engine's, and the input shapes the session was called with."""
    from mmseg.structures import SegDataSample
    samples = [SegDataSample(metainfo=dict(img_shape=x.shape[-2:], ori_shape=x.shape[-2:],
                                           pad_shape=x.shape[-2:], padding_size=[0, 0, 0, 0]))]
    calls = []

    def counted(inputs):
        calls.append(inputs.shape)
        return session(inputs)

    with torch.no_grad():
        expected = model.predict(x, samples)[0].seg_logits.data
        with engine.running_on(model, {'net': counted}):
            got = model.predict(x, samples)[0].seg_logits.data
    return samples, expected, got, calls


def test_running_on_puts_the_session_in_mmseg_predict(seg):
    model, _, xs, fp32, _ = seg
    x = xs[0]
    samples, expected, got, calls = predict_with_session(model, x, engine.Session(fp32))
    assert calls == [x.shape]  # the image went to the graph whole
    assert rel_err(got, expected) < TOL
    with torch.no_grad():
        # left as it was: the modules' own methods again, no instance attributes
        assert 'forward' not in model.decode_head.__dict__
        assert 'extract_feat' not in model.__dict__
        assert torch.equal(model.predict(x, samples)[0].seg_logits.data, expected)


def cascade(last_head: dict) -> nn.Module:
    """The toy DeepLabv3's R18-D8 backbone under mmseg's CascadeEncoderDecoder with an FCN head
    and ``last_head`` (OCRNet's structure), BN statistics that are not the identity, folded."""
    cfg = project_config(SEG_CFG)
    norm = cfg.model.decode_head.norm_cfg
    loss = dict(type='CrossEntropyLoss', loss_weight=1.0)
    cfg.model.update(type='CascadeEncoderDecoder', num_stages=2, auxiliary_head=None, decode_head=[
        dict(type='FCNHead', in_channels=256, in_index=2, channels=32, num_convs=1,
             concat_input=False, num_classes=19, norm_cfg=norm, loss_decode=loss),
        dict(last_head, num_classes=19, norm_cfg=norm, loss_decode=loss)])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return fold_model(model.eval())


def test_cascade_segmentor_runs_on_the_engine(tmp_path):
    """mmseg's CascadeEncoderDecoder calls each stage's forward and the last stage's predict,
    never the ModuleList's forward: the graph (backbone and every stage) stands in for the last
    stage, and mmseg's own predict gives what PyTorch gives."""
    model = cascade(dict(type='OCRHead', in_channels=512, in_index=3, channels=32,
                         ocr_channels=16))
    x = torch.randn(1, 3, 64, 96)
    (part, ) = engine.parts(model)
    path = str(tmp_path / 'net.fp32.onnx')
    engine.export(part, x, path)
    samples, expected, got, calls = predict_with_session(model, x, engine.Session(path))
    assert calls == [x.shape]
    assert expected.shape == (19, 64, 96) and rel_err(got, expected) < TOL
    with torch.no_grad():
        assert not [m for m in model.modules() if 'forward' in m.__dict__]  # all restored
        assert torch.equal(model.predict(x, samples)[0].seg_logits.data, expected)


def test_cascade_whose_last_stage_predicts_otherwise_is_refused():
    """PointRend's head predicts by subdividing points on the features, not by its forward: a
    one-line error, before any export."""
    model = cascade(dict(type='PointHead', in_channels=[64], in_index=[0], channels=32,
                         num_fcs=3, coarse_pred_each_layer=True, dropout_ratio=-1))
    with pytest.raises(UsageError) as e:
        engine.parts(model)
    assert str(e.value) == ('--engine onnxruntime: a CascadeEncoderDecoder whose last decode head '
                            'is a PointHead cannot run on an engine here (its predict is not '
                            'forward + predict_by_feat); use --engine torch')


def test_int8_graph_holds_symmetric_per_channel_codes(seg):
    """Every conv's weight in the int8 graph is ``q * s_c`` with ``s_c = max |w_c| / 127`` of
    the fp32 graph's (BN-folded) weight and ``q = round(w / s_c)``, zero point 0, computed here
    in float64 from the fp32 graph; the activations' zero points are 0 (symmetric)."""
    from onnx import numpy_helper
    _, _, _, fp32, int8 = seg
    f, q = onnx.load(fp32), onnx.load(int8)

    def tensors(graph):
        return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
                for i in graph.initializer}

    f_init, q_init = tensors(f.graph), tensors(q.graph)
    # the exporter shares equal initializers through Identity nodes
    alias = {n.output[0]: n.input[0] for n in f.graph.node if n.op_type == 'Identity'}
    weights = {n.name: f_init[alias.get(n.input[1], n.input[1])] for n in f.graph.node
               if n.op_type == 'Conv'}
    producers = {o: n for n in q.graph.node for o in n.output}
    checked = 0
    for node in q.graph.node:
        if node.op_type != 'Conv':
            continue
        dq = producers[node.input[1]]
        assert dq.op_type == 'DequantizeLinear'
        codes, scale, zero = (q_init[name] for name in dq.input)
        w = weights[node.name].double()
        expected_scale = w.flatten(1).abs().amax(dim=1) / 127
        assert scale.shape == (w.shape[0], )  # per output channel
        assert torch.allclose(scale.double(), expected_scale, rtol=1e-6, atol=0)
        assert codes.dtype == torch.int8 and not zero.any()
        r = w / expected_scale.view(-1, 1, 1, 1)
        expected = torch.round(r).clamp(-127, 127)
        # onnxruntime divides in float32: a code may round the other way at a near tie only
        tie = ((r - r.floor()) - 0.5).abs() < 1e-4
        assert torch.equal(codes.double()[~tie], expected[~tie])
        assert (codes.double() - expected).abs().max() <= 1
        checked += 1
    assert checked == len(weights) > 10
    act_zero = [q_init[n.input[2]] for n in q.graph.node if n.op_type == 'QuantizeLinear']
    assert act_zero and all(z.dtype == torch.int8 and not z.any() for z in act_zero)


def test_int8_session_runs_with_a_finite_error(seg):
    from doconv_mm.core.int8 import sqnr_db
    model, _, xs, _, int8 = seg
    with torch.no_grad():
        expected = model._forward(xs[1])
    (out, ) = engine.Session(int8)(xs[1])
    assert 10 < sqnr_db(expected, out) < 60  # int8 of a random network on a calibration input


def test_layer_outputs_name_every_conv(seg, tmp_path):
    _, _, xs, fp32, int8 = seg
    a = engine.layer_outputs(fp32, xs[0], str(tmp_path))
    b = engine.layer_outputs(int8, xs[0], str(tmp_path))
    convs = [n.name for n in onnx.load(fp32).graph.node if n.op_type == 'Conv']
    assert sorted(a) == sorted(b) == sorted(convs)
    assert list(tmp_path.iterdir()) == []  # the augmented copies are removed


def test_unsupported_models_are_refused():
    with pytest.raises(UsageError, match=r'--engine onnxruntime: a Sequential cannot be cut'):
        engine.parts(nn.Sequential())


def timed(keys, repeats, warmup):
    """``engine.latency`` over runs that record their calls: (calls, result)."""
    calls = []
    runs = {key: {p: [(lambda x, k=(key, p): calls.append(k), None)] for p in precisions}
            for key, precisions in keys.items()}
    return calls, engine.latency(runs, repeats=repeats, warmup=warmup)


def check_times(result, repeats):
    for per_key in result.values():
        for t in per_key.values():
            assert 0 <= t['min_ms'] <= t['median_ms'] <= t['max_ms'] and t['repeats'] == repeats


def test_latency_two_runs_alternate_strictly():
    """Two runs (one model, fp32 and int8): A B A B ... across repeat boundaries, where a rotation
    would give A B | B A and run B twice in a row."""
    calls, result = timed({'model': ('fp32', 'int8')}, repeats=3, warmup=2)
    assert calls == [('model', 'fp32'), ('model', 'int8')] * 5
    check_times(result, 3)


def test_latency_three_runs_rotate_and_each_is_first_equally_often():
    a, b, c = ('model', 'fp32'), ('model', 'int8'), ('baseline', 'fp32')
    calls, result = timed({'model': ('fp32', 'int8'), 'baseline': ('fp32', )}, repeats=2,
                          warmup=1)
    # 2 timed repeats round up to 3, a multiple of the 3 runs; 1 untimed repeat first
    assert calls == [a, b, c] + [b, c, a] + [c, a, b] + [a, b, c]
    assert all(x != y for x, y in zip(calls, calls[1:]))  # no run follows itself
    timed_firsts = [calls[3 * i] for i in range(1, 4)]
    assert sorted(timed_firsts) == sorted([a, b, c])  # each first once in the timed repeats
    check_times(result, 3)


def test_latency_four_runs_rotate():
    calls, result = timed({'model': ('fp32', 'int8'), 'baseline': ('fp32', 'int8')}, repeats=3,
                          warmup=1)
    order = calls[:4]
    assert order == [('model', 'fp32'), ('model', 'int8'), ('baseline', 'fp32'),
                     ('baseline', 'int8')]
    assert len(calls) == 4 * (1 + 4)  # 3 timed repeats round up to 4
    for i in range(5):
        assert calls[4 * i:4 * i + 4] == order[i % 4:] + order[:i % 4]
    assert all(x != y for x, y in zip(calls, calls[1:]))
    check_times(result, 4)


@pytest.mark.parametrize('runs', range(2, 8))
@pytest.mark.parametrize('repeats', [1, 2, 5, 12])
def test_schedule_never_repeats_a_run(runs, repeats):
    rounds = engine.schedule(runs, repeats)
    assert len(rounds) == repeats and all(sorted(r) == list(range(runs)) for r in rounds)
    flat = [i for r in rounds for i in r]
    assert all(x != y for x, y in zip(flat, flat[1:]))
    if runs > 2 and repeats % runs == 0:
        firsts = [r[0] for r in rounds]
        assert all(firsts.count(i) == repeats // runs for i in range(runs))


@pytest.mark.parametrize('stock_cfg, do_cfg', [
    ('configs/demo/deeplabv3_r18-d8_toy-cityscapes.py', SEG_CFG),
    ('configs/demo/faster-rcnn_r18_fpn_toy-coco.py',
     'configs/demo/faster-rcnn_r18_fpn_doconv-all_toy-coco.py')])
def test_folded_release_exports_the_stock_graphs(stock_cfg, do_cfg, tmp_path):
    """The folded DO-Conv-all model and the stock model export to the same operators, node for
    node, with BN folded into the convolutions (no BatchNormalization left)."""
    pytest.importorskip('mmdet')
    x = torch.randn(1, 3, 64, 64)
    graphs = []
    for cfg in (stock_cfg, do_cfg):
        torch.manual_seed(0)
        model = fold_model(build_model(project_config(cfg)).eval())
        with torch.no_grad():
            levels = len(model.extract_feat(x)) if hasattr(model, 'rpn_head') else 0
        ops = []
        for part in engine.parts(model, levels):
            path = str(tmp_path / f'{len(graphs)}-{part.name}.onnx')
            with engine.capturing({part.name: part.entry}) as seen:
                with torch.no_grad():
                    if part.name == 'bbox_head':  # the RoI head's input: RoI features
                        head = part.entry
                        part.module(torch.randn(8, head.in_channels, *head.roi_feat_size))
                    else:
                        part.module(x)
            engine.export(part, seen[part.name][0], path)
            ops.append([n.op_type for n in onnx.load(path).graph.node])
        graphs.append(ops)
    assert graphs[0] == graphs[1]
    assert all('BatchNormalization' not in ops and ('Conv' in ops or 'Gemm' in ops)
               for ops in graphs[0])
