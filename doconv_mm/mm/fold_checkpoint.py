"""Folding a trained mmdet/mmseg state dict into the plain network's, with a check that both compute
the same (the model-level part of :mod:`doconv_mm.mm.release`)."""
import copy
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, DefaultScope
from mmengine.utils import import_modules_from_strings

from ..core import count_do_convs, do_conv_kernel, fold_model


class CheckpointMismatch(ValueError):
    """The checkpoint's keys or shapes do not fit the model the config builds."""


@dataclass
class FoldReport:
    layers: int  # DO-Conv layers folded
    params_before: int
    params_after: int
    rel_diff: float  # max |DO-Conv - folded| / max |DO-Conv| over the outputs; nan if not verified


def build_model(cfg: Config) -> nn.Module:
    """The config's model in its scope, on CPU, without weight initialisation (no downloads)."""
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(cfg.model)
    return revert_sync_batchnorm(model)  # SyncBN is for multi-GPU runs; same parameters


def check_fits(model: nn.Module, state_dict: Dict[str, torch.Tensor], shown: int = 5) -> None:
    """Raise :class:`CheckpointMismatch` naming the first ``shown`` keys that do not fit."""
    own = model.state_dict()
    shapes = [f'{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}'
              for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    unexpected = [k for k in state_dict if k not in own]
    # a plain conv's weights are a complete DO-Conv state (D = 0): D may be absent
    missing = [k for k in own if k not in state_dict and not k.endswith(('.D', '.W_extra'))]
    problems = []
    for what, keys in (('shape mismatches', shapes), ('keys missing from the checkpoint', missing),
                       ('unexpected keys in the checkpoint', unexpected)):
        if keys:
            more = f' (and {len(keys) - shown} more)' if len(keys) > shown else ''
            problems.append(f'{len(keys)} {what}{more}:\n  ' + '\n  '.join(keys[:shown]))
    if problems:
        raise CheckpointMismatch('the checkpoint does not fit the config\'s model:\n'
                                 + '\n'.join(problems))


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _probe(model: nn.Module, cfg: Config, size: int) -> List[torch.Tensor]:
    """The model's raw outputs on a fixed random image, as continuous functions of the weights.

    Detectors' proposals come out of NMS, which a difference in the last bit can flip; so a
    detector is probed on its features, its dense heads and its RoI head on fixed boxes.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=g)
    with torch.no_grad():
        if cfg.get('default_scope') != 'mmdet':
            return _tensors(model(x, None, mode='tensor'))
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        feats = model.extract_feat(x)
        outs = _tensors(feats)
        for name in ('rpn_head', 'bbox_head'):
            if getattr(model, name, None) is not None:
                outs += _tensors(getattr(model, name)(feats))
        if getattr(model, 'roi_head', None) is not None:
            corners = torch.rand(64, 2, 2, generator=g).sort(dim=1).values * size
            boxes = corners.flatten(1)  # (x1, y1, x2, y2): each corner sorted per coordinate
            shape = (size, size)
            sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape,
                                                 pad_shape=shape, scale_factor=(1.0, 1.0)))
            outs += _tensors(model.roi_head.forward(feats, [InstanceData(bboxes=boxes)],
                                                    [sample]))
        return outs


def fold_checkpoint(cfg: Config, state_dict: Dict[str, torch.Tensor], verify: bool = True,
                    size: int = 256, device: str = 'cpu'):
    """Fold ``state_dict`` (trained with ``cfg``) into the plain network's state dict.

    Returns ``(folded_state_dict, FoldReport)``. With ``verify``, the DO-Conv and folded models
    are run on the same input and the outputs' relative difference is reported.
    """
    model = build_model(cfg).to(device).eval()
    check_fits(model, state_dict)
    model.load_state_dict(state_dict, strict=False)
    before = _probe(model, cfg, size) if verify else None
    layers, params_before = count_do_convs(model), sum(p.numel() for p in model.parameters())
    fold_model(model)
    rel = float('nan')
    if verify:
        after = _probe(model, cfg, size)
        ref = max(t.abs().max().item() for t in before)
        rel = max((a - b).abs().max().item() for a, b in zip(before, after)) / max(ref, 1e-12)
    folded = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return folded, FoldReport(layers, params_before, sum(p.numel() for p in model.parameters()),
                              rel)


def fold_state_dict_by_key(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Fold without a config: every ``X.weight`` with an ``X.D`` beside it is composed by key.

    For checkpoints whose model cannot be built. Groups are read off the shapes
    (``C_in / weight.shape[1]``).
    """
    out = copy.copy(state_dict)
    for key in [k for k in state_dict if k.endswith('.D')]:
        prefix = key[:-len('D')]
        weight, D = state_dict[prefix + 'weight'], state_dict[key]
        W_extra = state_dict.get(prefix + 'W_extra')
        K = do_conv_kernel(weight.double(), D.double(),
                           None if W_extra is None else W_extra.double())
        out[prefix + 'weight'] = K.to(weight.dtype)
        del out[key]
        out.pop(prefix + 'W_extra', None)
    return out
