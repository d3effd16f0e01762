"""Helpers for the config tests: stock configs from the installed packages, model walks."""
import importlib
import os.path as osp

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import DefaultScope, MODELS
from mmengine.utils import import_modules_from_strings

from doconv_mm import DOConv2d

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def stock_config(name: str) -> Config:
    """A config shipped in an OpenMMLab wheel, e.g. ``mmdet::faster_rcnn/x.py``."""
    package, path = name.split('::')
    base = osp.dirname(importlib.import_module(package).__file__)
    return Config.fromfile(osp.join(base, '.mim', 'configs', path))


def project_config(path: str) -> Config:
    cfg = Config.fromfile(osp.join(ROOT, path))
    if 'custom_imports' in cfg:
        import_modules_from_strings(**cfg.custom_imports)
    return cfg


def build_model(cfg: Config, backbone_checkpoint=None) -> nn.Module:
    """Build ``cfg.model`` in its scope; the backbone from ``backbone_checkpoint`` or random."""
    model_cfg = cfg.model.copy()
    model_cfg.pop('pretrained', None)  # mmseg's download; replaced by the checkpoint below
    model_cfg.backbone.init_cfg = None if backbone_checkpoint is None else dict(
        type='Pretrained', checkpoint=str(backbone_checkpoint))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def kxk_convs(module: nn.Module):
    """(do, plain): counts of convolutions with a kernel larger than 1x1."""
    convs = [m for m in module.modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    do = sum(isinstance(m, DOConv2d) for m in convs)
    return do, len(convs) - do


def one_by_one_all_plain(module: nn.Module) -> bool:
    return all(m.D is None for m in module.modules()
               if isinstance(m, DOConv2d) and m.kernel_size == (1, 1))


def strip(d, keys):
    """A copy of dict ``d`` without ``keys`` at any depth."""
    if isinstance(d, dict):
        return {k: strip(v, keys) for k, v in d.items() if k not in keys}
    if isinstance(d, (list, tuple)):
        return type(d)(strip(v, keys) for v in d)
    return d
