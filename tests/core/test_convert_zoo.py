"""convert() on the model zoos' networks (torchvision, timm; built without weights, on every
device): the converted model computes the original, and with a trained-like D it folds back to
plain convs that compute what the DO-Conv model computes. Skipped, with the reason, where
torchvision or timm does not import."""
import copy
import importlib

import pytest
import torch
import torch.nn as nn

from doconv_mm import DOConv2d, convert, count_do_convs, fold_model
from layer_helpers import TOL32, rel_err


def _need(package):
    try:
        return importlib.import_module(package)
    except Exception as e:  # ImportError, or a build that does not match torch
        pytest.skip(f'{package} does not import here ({type(e).__name__}: {e})')


def resnet50():
    return _need('torchvision').models.resnet50(weights=None), 64


def mobilenet_v2():
    return _need('torchvision').models.mobilenet_v2(weights=None), 64


def faster_rcnn():
    detection = _need('torchvision').models.detection
    return detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=128,
                                             max_size=128), 128


def deeplabv3():
    segmentation = _need('torchvision').models.segmentation
    return segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                           num_classes=5), 64


def convnext():
    return _need('timm').create_model('convnext_atto', pretrained=False), 64


MODELS = [resnet50, mobilenet_v2, faster_rcnn, deeplabv3, convnext]


def outputs(model, x):
    """The model's outputs as a list of tensors (a detector: its backbone's features, which
    decide its boxes, and the boxes and scores)."""
    with torch.no_grad():
        if hasattr(model, 'rpn'):
            images, _ = model.transform(list(x))
            features = list(model.backbone(images.tensors).values())
            detections = model(list(x))
            return features + [t for d in detections for t in (d['boxes'], d['scores'])]
        out = model(x)
        return list(out.values()) if isinstance(out, dict) else [out]


def close(a, b):
    return len(a) == len(b) and all(
        u.shape == v.shape and (u.numel() == 0 or rel_err(u, v) < TOL32) for u, v in zip(a, b))


@pytest.mark.parametrize('build', MODELS, ids=lambda f: f.__name__)
def test_converted_zoo_model_computes_the_original_and_folds_back(build, device):
    torch.manual_seed(0)
    plain, size = build()
    plain = plain.to(device).eval()
    k_by_k = sum(isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) for m in plain.modules())
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1),
                   device='cpu').to(device)
    expected = outputs(plain, x)
    do = convert(copy.deepcopy(plain)).eval()
    assert count_do_convs(do) == k_by_k > 0
    assert close(outputs(do, x), expected)
    assert close(outputs(fold_model(copy.deepcopy(do)), x), expected)
    assert fold_model(copy.deepcopy(do)).state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():  # as after training
        for m in do.modules():
            if isinstance(m, DOConv2d) and m.D is not None:
                m.D.normal_(0, 0.05)
    trained = outputs(do, x)
    assert not close(trained[:1], expected[:1])  # D moved the function
    folded = fold_model(copy.deepcopy(do))
    assert count_do_convs(folded) == 0
    # the fold agrees to float32 rounding (composed in float64, the layer in float32): a detector's
    # features, which decide its boxes, are compared; its boxes pass through top-k and NMS, whose
    # choices between near-tied random-weight candidates that rounding can flip
    n = len(trained) - 2 * len(x) if hasattr(do, 'rpn') else len(trained)
    assert close(outputs(folded, x)[:n], trained[:n])
