"""The Faster R-CNN DO-Conv configs: structure, baseline equality, pretrained loading, training."""
import pytest
import torch
from mmdet.models.backbones import ResNet
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules

from doconv_mm import DOConv2d
from mm_helpers import build_model, kxk_convs, one_by_one_all_plain, project_config, stock_config
from mm_helpers import strip

register_all_modules(init_default_scope=False)

BASELINE = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
HEAD = 'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-head_1x_coco.py'
ALL = 'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-all_1x_coco.py'
# k x k convs: ResNet-50 has the 7x7 stem and 16 bottleneck 3x3; the FPN 4 output 3x3; the RPN 1.
BACKBONE_KXK, HEAD_KXK = 17, 5


@pytest.fixture(scope='module')
def r50_checkpoint(tmp_path_factory):
    """A plain ResNet-50 state dict with random weights, saved as torchvision's would be."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'resnet50_random.pth'
    torch.save(ResNet(depth=50).state_dict(), path)
    return path


@pytest.mark.parametrize('path, backbone_do', [(HEAD, 0), (ALL, BACKBONE_KXK)])
def test_structure(path, backbone_do):
    model = build_model(project_config(path))
    assert kxk_convs(model.backbone) == (backbone_do, BACKBONE_KXK - backbone_do)
    assert kxk_convs(model.neck) == (4, 0)
    assert kxk_convs(model.rpn_head) == (1, 0)
    assert kxk_convs(model.roi_head) == (0, 0)
    assert one_by_one_all_plain(model)


@pytest.mark.parametrize('path', [HEAD, ALL])
def test_only_the_convs_differ_from_the_baseline(path):
    # mmengine tags what a config inherits through 'mmdet::' with '_scope_': 'mmdet' (the default
    # scope anyway); that tag is not a change
    ours = strip(project_config(path).to_dict(), ['_scope_'])
    stock = stock_config(BASELINE).to_dict()
    assert ours.pop('custom_imports') == dict(imports=['doconv_mm'], allow_failed_imports=False)
    assert strip(ours, ['model']) == strip(stock, ['model'])
    ours_model = strip(ours['model'], ['conv_cfg'])
    assert ours_model['rpn_head'].pop('type') == 'ConvCfgRPNHead'
    assert stock['model']['rpn_head'].pop('type') == 'RPNHead'
    assert ours_model == stock['model']


def test_all_backbone_loads_pretrained_exactly(r50_checkpoint):
    stock = build_model(stock_config(BASELINE), r50_checkpoint).eval()
    ours = build_model(project_config(ALL), r50_checkpoint).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(ours.backbone(x), stock.backbone(x)):
            assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


def test_head_rpn_matches_stock_given_its_weights():
    torch.manual_seed(0)
    stock = build_model(stock_config(BASELINE)).eval()
    ours = build_model(project_config(HEAD)).eval()
    result = ours.load_state_dict(stock.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        feats_ours, feats_stock = ours.extract_feat(x), stock.extract_feat(x)
        out_ours, out_stock = ours.rpn_head(feats_ours), stock.rpn_head(feats_stock)
    for a, b in zip([*feats_ours, *out_ours[0], *out_ours[1]],
                    [*feats_stock, *out_stock[0], *out_stock[1]]):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


@pytest.mark.parametrize('path', [HEAD, ALL])
def test_loss_and_backward(path, r50_checkpoint):
    # from a (random) pretrained backbone as in training: a fresh ResNet zero-inits each
    # bottleneck's last BN, which zeroes the gradients of the convs before it
    torch.manual_seed(0)
    model = build_model(project_config(path), r50_checkpoint).train()
    packed = demo_mm_inputs(2, [[3, 128, 128]] * 2, num_items=[3, 2], num_classes=80)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [m for m in model.modules() if isinstance(m, DOConv2d) and m.D is not None
                 and m.D.requires_grad]
    assert trainable and all(m.D.grad is not None and m.D.grad.abs().sum() > 0 for m in trainable)


X101 = 'configs/faster_rcnn/faster-rcnn_x101-32x4d_fpn_doconv-all_1x_coco.py'
X101_BASELINE = 'mmdet::faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py'


def test_resnext_do_gconv_config(tmp_path):
    """ResNeXt-101 32x4d: the 33 grouped 3x3 convs train as DO-GConv and load plain weights."""
    from mmdet.models.backbones import ResNeXt
    ours = strip(project_config(X101).to_dict(), ['_scope_'])
    stock = stock_config(X101_BASELINE).to_dict()
    ours.pop('custom_imports')
    assert strip(ours, ['model']) == strip(stock, ['model'])
    assert ours['model']['rpn_head'].pop('type') == 'ConvCfgRPNHead'
    assert stock['model']['rpn_head'].pop('type') == 'RPNHead'
    assert strip(ours['model'], ['conv_cfg']) == stock['model']
    torch.manual_seed(0)
    ckpt = tmp_path / 'resnext101_random.pth'
    torch.save(ResNeXt(depth=101, groups=32, base_width=4).state_dict(), ckpt)
    model = build_model(project_config(X101), ckpt).eval()
    stock_model = build_model(stock_config(X101_BASELINE), ckpt).eval()
    grouped = [m for m in model.backbone.modules() if isinstance(m, DOConv2d) and m.groups == 32]
    assert len(grouped) == 33 and kxk_convs(model.backbone) == (34, 0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.backbone(x), stock_model.backbone(x)):
            assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
