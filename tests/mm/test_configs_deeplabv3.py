"""The DeepLabv3 DO-Conv configs: structure, baseline equality, pretrained loading, training."""
import pytest
import torch
from mmengine.model import revert_sync_batchnorm
from mmengine.structures import PixelData
from mmseg.models.backbones import ResNetV1c
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules

from doconv_mm import DOConv2d
from mm_helpers import build_model, kxk_convs, one_by_one_all_plain, project_config, stock_config
from mm_helpers import strip

register_all_modules(init_default_scope=False)

D = 'configs/deeplabv3/'
CONFIGS = {  # ours -> (baseline, backbone depth)
    D + 'deeplabv3_r50-d8_doconv-head_4xb2-80k_cityscapes-512x1024.py':
    ('mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py', 50),
    D + 'deeplabv3_r50-d8_doconv-all_4xb2-80k_cityscapes-512x1024.py':
    ('mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py', 50),
    D + 'deeplabv3_r101-d8_doconv-head_4xb4-20k_voc12aug-512x512.py':
    ('mmseg::deeplabv3/deeplabv3_r101-d8_4xb4-20k_voc12aug-512x512.py', 101),
    D + 'deeplabv3_r101-d8_doconv-all_4xb4-20k_voc12aug-512x512.py':
    ('mmseg::deeplabv3/deeplabv3_r101-d8_4xb4-20k_voc12aug-512x512.py', 101),
}
# k x k convs of ResNetV1c: the 3 stem convs and one 3x3 per bottleneck
BACKBONE_KXK = {50: 3 + 16, 101: 3 + 33}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Plain ResNetV1c state dicts with random weights, as open-mmlab:// ships them."""
    folder, paths = tmp_path_factory.mktemp('ckpt'), {}
    for depth in (50, 101):
        torch.manual_seed(depth)
        paths[depth] = folder / f'resnet{depth}_v1c_random.pth'
        torch.save(ResNetV1c(depth=depth).state_dict(), paths[depth])
    return paths


def is_all(path):
    return 'doconv-all' in path


@pytest.mark.parametrize('path', CONFIGS)
def test_structure(path):
    model = build_model(project_config(path))
    n = BACKBONE_KXK[CONFIGS[path][1]]
    assert kxk_convs(model.backbone) == ((n, 0) if is_all(path) else (0, n))
    # ASPP: the dilation 12/24/36 branches and the bottleneck; the image pool and dilation-1
    # branch are 1x1. FCN auxiliary head: one 3x3.
    assert kxk_convs(model.decode_head) == (4, 0)
    assert kxk_convs(model.auxiliary_head) == (1, 0)
    assert one_by_one_all_plain(model)
    assert type(model.decode_head.conv_seg) is torch.nn.Conv2d


@pytest.mark.parametrize('path', CONFIGS)
def test_only_the_convs_differ_from_the_baseline(path):
    ours = strip(project_config(path).to_dict(), ['_scope_'])
    stock = stock_config(CONFIGS[path][0]).to_dict()
    assert ours.pop('custom_imports') == dict(imports=['doconv_mm'], allow_failed_imports=False)
    assert strip(ours, ['model']) == strip(stock, ['model'])
    assert strip(ours['model'], ['conv_cfg']) == stock['model']


@pytest.mark.parametrize('path', [p for p in CONFIGS if is_all(p)])
def test_all_backbone_loads_pretrained_exactly(path, checkpoints):
    ckpt = checkpoints[CONFIGS[path][1]]
    stock = build_model(stock_config(CONFIGS[path][0]), ckpt).eval()
    ours = build_model(project_config(path), ckpt).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours.backbone(x), stock.backbone(x)):
            assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


def seg_batch(num_classes, size=(64, 64), n=2):
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8))
        label = torch.randint(0, num_classes, (1, *size), generator=g)
        samples.append(SegDataSample(gt_sem_seg=PixelData(data=label),
                                     metainfo=dict(img_shape=size, ori_shape=size,
                                                   pad_shape=size)))
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize('path', CONFIGS)
def test_loss_and_backward(path, checkpoints):
    torch.manual_seed(0)
    cfg = project_config(path)
    cfg.model.data_preprocessor.size = (64, 64)  # the configs pad to their crop size
    # SyncBN is for multi-GPU runs; like mmengine's Runner in one process, use BN
    model = revert_sync_batchnorm(build_model(cfg, checkpoints[CONFIGS[path][1]])).train()
    data = model.data_preprocessor(seg_batch(cfg.model.decode_head.num_classes), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    layers = [m for m in model.modules() if isinstance(m, DOConv2d) and m.D is not None]
    assert len(layers) == 5 + (BACKBONE_KXK[CONFIGS[path][1]] if is_all(path) else 0)
    assert all(m.D.grad is not None and m.D.grad.abs().sum() > 0 for m in layers)


MBV2 = D + 'mobilenet-v2-d8_deeplabv3_doconv-all_4xb2-80k_cityscapes-512x1024.py'
MBV2_BASELINE = 'mmseg::mobilenet_v2/mobilenet-v2-d8_deeplabv3_4xb2-80k_cityscapes-512x1024.py'


def test_mobilenet_v2_do_dconv_config(tmp_path):
    """MobileNetV2: its 17 depthwise 3x3 convs train as DO-DConv, load plain weights and train."""
    from mmseg.models.backbones import MobileNetV2
    ours = strip(project_config(MBV2).to_dict(), ['_scope_'])
    stock = stock_config(MBV2_BASELINE).to_dict()
    ours.pop('custom_imports')
    assert strip(ours, ['model']) == strip(stock, ['model'])
    assert strip(ours['model'], ['conv_cfg']) == stock['model']
    torch.manual_seed(0)
    ckpt = tmp_path / 'mobilenet_v2_random.pth'
    torch.save(MobileNetV2().state_dict(), ckpt)
    model = revert_sync_batchnorm(build_model(project_config(MBV2), ckpt)).eval()
    stock_model = revert_sync_batchnorm(build_model(stock_config(MBV2_BASELINE), ckpt)).eval()
    depthwise = [m for m in model.backbone.modules()
                 if isinstance(m, DOConv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 17 and kxk_convs(model.backbone) == (18, 0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.backbone(x), stock_model.backbone(x)):
            assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5
    model.train()
    model.data_preprocessor.size = (64, 64)
    data = model.data_preprocessor(seg_batch(19), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    assert all(m.D.grad is not None and m.D.grad.abs().sum() > 0 for m in depthwise)
