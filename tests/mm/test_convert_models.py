"""convert() on real architectures, built from the stock mmdet/mmseg configs without downloaded
weights: it makes as many DO-Conv layers as this project's 'doconv-all' configs do, and the
converted model computes what the stock one computes (D = 0), up to float32 rounding (1e-5 of the
outputs' scale)."""
import copy

import pytest
import torch
from mmengine.model import revert_sync_batchnorm

from doconv_mm import convert, count_do_convs, fold_model
from layer_helpers import TOL32, rel_err
from mm_helpers import build_model, project_config, stock_config

CASES = {
    'faster-rcnn': ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                    'configs/faster_rcnn/faster-rcnn_r50_fpn_doconv-all_1x_coco.py'),
    'deeplabv3': ('mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py',
                  'configs/deeplabv3/deeplabv3_r50-d8_doconv-all_4xb2-80k_cityscapes-512x1024.py'),
}


def outputs(model, x):
    """Continuous outputs: features and dense heads (a detector's proposals go through NMS)."""
    with torch.no_grad():
        if hasattr(model, 'rpn_head'):
            feats = model.extract_feat(x)
            cls, reg = model.rpn_head(feats)
            return [*feats, *cls, *reg]
        return [model(x, mode='tensor')]


@pytest.mark.parametrize('name', list(CASES))
def test_convert_stock_model_equals_doconv_all_config(name):
    stock_name, project_path = CASES[name]
    torch.manual_seed(0)
    stock = revert_sync_batchnorm(build_model(stock_config(stock_name))).eval()
    expected = count_do_convs(build_model(project_config(project_path)))
    x = torch.randn(1, 3, 64, 96)
    before = outputs(stock, x)
    converted = convert(copy.deepcopy(stock))
    assert count_do_convs(converted) == expected > 20
    for a, b in zip(outputs(converted, x), before):
        assert rel_err(a, b) < TOL32
    folded = fold_model(converted)
    assert folded.state_dict().keys() == stock.state_dict().keys()
    for a, b in zip(outputs(folded, x), before):
        assert rel_err(a, b) < TOL32
