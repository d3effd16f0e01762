"""A plain-conv release from a trained DO-Conv checkpoint: fold, verify, deploy config, files.

The release is ``OUT.pth`` (``meta`` and the folded ``state_dict``, tensors and builtins only) and,
with a config, ``OUT.py``: the deploy config, which stock mmdet/mmseg build without doconv_mm.
:func:`make_release` is the whole job; in order:

1. the paths are checked before any work, and an input is never overwritten (:func:`check_paths`);
2. the checkpoint is read and checked against the config's model (:func:`check_fits`);
3. every DO-Conv layer is folded (:func:`fold_checkpoint`, through :func:`doconv_mm.fold_model`;
   without a config, by state-dict key: :func:`fold_state_dict_by_key`), and the DO-Conv and the
   folded model are run on the same input (:func:`probe`) and compared;
4. the deploy config is derived (:func:`deploy_config`), and the files are written under temporary
   names and renamed into place at the end, all or nothing (:func:`write_files`).
"""
import copy
import hashlib
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, DefaultScope
from mmengine.utils import import_modules_from_strings

from .. import atomic
from ..core import count_do_convs, do_conv_kernel, fold_model
from ..requirements import UsageError, check_input
from .runtime import config_dicts, read_config

TOLERANCE = 1e-4  # largest relative difference between the DO-Conv and the folded model's outputs
# plugin module types -> the stock types they stand in for (same parameters once folded)
STOCK_TYPES = {'ConvCfgRPNHead': 'RPNHead'}


class ReleaseError(UsageError):
    """A release cannot be made from these inputs; nothing was written."""


class CheckpointMismatch(ReleaseError):
    """The checkpoint's keys or shapes do not fit the model the config builds."""


def check_paths(config: Optional[str], checkpoint: str, out: str, force: bool) -> Optional[str]:
    """Validate the paths before any work; returns the deploy config's path (None: no config)."""
    if config is not None:
        check_input(config, 'CONFIG')
    check_input(checkpoint, 'CHECKPOINT')
    if not out.endswith('.pth'):
        raise ReleaseError(f'OUT.pth {out!r} must end with .pth (the deploy config is written '
                           f'beside it as .py)')
    deploy = None if config is None else out[:-len('.pth')] + '.py'
    inputs = {osp.realpath(p) for p in (config, checkpoint) if p}
    for path in filter(None, (out, deploy)):
        if osp.realpath(path) in inputs:
            raise ReleaseError(f'output {path!r} is one of the inputs; choose another OUT.pth')
        if osp.exists(path) and not force:
            raise ReleaseError(f'output {path!r} exists; pass --force to overwrite it')
    return deploy


def read_checkpoint(path: str) -> dict:
    """The checkpoint the user named (trusted: mmengine checkpoints need the full unpickler)."""
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # truncated, corrupt, not a torch file
        raise ReleaseError(f'cannot read CHECKPOINT {path!r} ({type(e).__name__}: {e}); is it a '
                           f'complete checkpoint file?') from e
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(
            isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ReleaseError(f'CHECKPOINT {path!r} holds no state dict (expected a dict of tensors, '
                           f'or an mmengine checkpoint with "state_dict")')
    return checkpoint


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


def probe(model: nn.Module, cfg: Config, size: int = 256,
          x: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """The model's raw outputs on ``x`` (default: a fixed random ``size`` x ``size`` image), as
    continuous functions of the weights.

    Detectors' proposals come out of NMS, which a difference in the last bit can flip; so a
    detector is probed on its features, its dense heads and its RoI head on fixed boxes.
    """
    g = torch.Generator().manual_seed(0)
    if x is None:
        x = torch.randn(1, 3, size, size, generator=g).to(next(model.parameters()).device)
    with torch.no_grad():
        if cfg.get('default_scope') != 'mmdet':
            return _tensors(model(x, None, mode='tensor'))
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        x = x[:1]
        feats = model.extract_feat(x)
        outs = _tensors(feats)
        for name in ('rpn_head', 'bbox_head'):
            if getattr(model, name, None) is not None:
                outs += _tensors(getattr(model, name)(feats))
        if getattr(model, 'roi_head', None) is not None:
            shape = tuple(x.shape[-2:])
            corners = torch.rand(64, 2, 2, generator=g).sort(dim=1).values * torch.tensor(
                shape[::-1], dtype=torch.float32)
            boxes = corners.flatten(1).to(x.device)  # (x1, y1, x2, y2): corners sorted per axis
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
    before = probe(model, cfg, size) if verify else None
    layers, params_before = count_do_convs(model), sum(p.numel() for p in model.parameters())
    fold_model(model)
    rel = float('nan')
    if verify:
        after = probe(model, cfg, size)
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


def deploy_config(cfg: Config) -> Config:
    """``cfg`` with every ``conv_cfg=dict(type='DOConv', ...)`` removed (plain convs), plugin module
    types replaced by their stock types, and no ``custom_imports``."""
    cfg_dict = copy.deepcopy(cfg.to_dict())
    cfg_dict.pop('custom_imports', None)
    for node in config_dicts(cfg_dict):
        if isinstance(node.get('conv_cfg'), dict) and node['conv_cfg'].get('type') == 'DOConv':
            del node['conv_cfg']
        if node.get('type') in STOCK_TYPES:
            node['type'] = STOCK_TYPES[node['type']]
    return Config(cfg_dict)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def write_files(files: Dict[str, Callable[[str], None]], publish: bool,
                force: bool) -> Dict[str, Optional[str]]:
    """Write each ``{path: save}`` whole, all or nothing (:func:`doconv_mm.atomic.write_files`).

    With ``publish``, the ``.pth`` file's name gets the first 8 hex digits of its sha256, as
    OpenMMLab's ``publish_model.py`` does. Returns ``{path written: sha256 (.pth files) or None}``.
    """
    digests = {}

    def target(path: str, tmp: str) -> str:
        digest = sha256(tmp) if path.endswith('.pth') else None
        if publish and digest is not None:
            path = path[:-len('.pth')] + f'-{digest[:8]}.pth'
            if osp.exists(path) and not force:
                raise ReleaseError(f'output {path!r} exists; pass --force to overwrite it')
        digests[path] = digest
        return path

    atomic.write_files(files, target)
    return digests


def make_release(config: Optional[str], checkpoint: str, out: str, *, force: bool = False,
                 verify: bool = True, device: str = 'cpu', publish: bool = False,
                 log: Callable[[str], None] = print) -> List[str]:
    """Fold ``checkpoint`` (trained with ``config``; None: fold by state-dict key, unverified) and
    write the release; returns the paths written. Raises
    :class:`~doconv_mm.requirements.UsageError` (:class:`ReleaseError` where these inputs make no
    release), writing nothing."""
    deploy_path = check_paths(config, checkpoint, out, force)
    ckpt = read_checkpoint(checkpoint)
    state_dict = ckpt.get('state_dict', ckpt)
    meta = dict(ckpt.get('meta') or {}) if 'state_dict' in ckpt else {}
    files = {}
    if config is None:
        folded = fold_state_dict_by_key(state_dict)
        layers = sum(k.endswith('.D') for k in state_dict)
        log(f'folded {layers} DO-Conv layers by key (no config: not verified)')
    else:
        cfg = read_config(config)
        try:
            folded, report = fold_checkpoint(cfg, state_dict, verify=verify, device=device)
        except CheckpointMismatch as e:
            raise ReleaseError(f'CHECKPOINT {checkpoint!r} vs CONFIG {config!r}: {e}') from e
        layers = report.layers
        if layers == 0:
            log('no DO-Conv layer in this model: the release is an identical copy')
        log(f'folded {layers} DO-Conv layers; parameters {report.params_before:,} -> '
            f'{report.params_after:,}')
        if verify:
            log(f'verified: max relative difference DO-Conv vs folded = {report.rel_diff:.2e} '
                f'(tolerance {TOLERANCE:g})')
            if not report.rel_diff <= TOLERANCE:
                raise ReleaseError(f'folded outputs differ by {report.rel_diff:.2e} > '
                                   f'{TOLERANCE:g}; nothing written')
        files[deploy_path] = deploy_config(cfg).dump
    meta['doconv_folded'] = dict(layers=layers, source=osp.basename(checkpoint))
    release = dict(meta=meta, state_dict=folded)
    files = {out: lambda tmp: torch.save(release, tmp), **files}
    written = write_files(files, publish, force)
    for path, digest in written.items():
        log(f'wrote {path}' + (f' sha256 {digest}' if digest else
                               ' (deploy config: stock mmdet/mmseg, no doconv_mm needed)'))
    return list(written)
