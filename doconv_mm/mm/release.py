"""A plain-conv release from a trained DO-Conv checkpoint (``tools/fold_ckpt.py``).

The release is ``OUT.pth`` (``meta`` and the folded ``state_dict``, tensors and builtins only) and,
with a config, ``OUT.py``: the deploy config, which stock mmdet/mmseg build without doconv_mm. All
paths are checked before any work, the outputs are written under temporary names and renamed into
place at the end (all or nothing), and an input is never overwritten.
"""
import hashlib
import os
import os.path as osp
import tempfile
from typing import Callable, Dict, List, Optional

import torch

from .deploy import deploy_config
from .fold_checkpoint import CheckpointMismatch, fold_checkpoint, fold_state_dict_by_key
from .runtime import read_config

TOLERANCE = 1e-4  # largest relative difference between the DO-Conv and the folded model's outputs


class ReleaseError(ValueError):
    """A release cannot be made from these inputs; nothing was written."""


def check_paths(config: Optional[str], checkpoint: str, out: str, force: bool) -> Optional[str]:
    """Validate the paths before any work; returns the deploy config's path (None: no config)."""
    if config is not None and not osp.isfile(config):
        raise ReleaseError(f'CONFIG {config!r} not found')
    if not osp.isfile(checkpoint):
        raise ReleaseError(f'CHECKPOINT {checkpoint!r} not found')
    if not os.access(checkpoint, os.R_OK):
        raise ReleaseError(f'CHECKPOINT {checkpoint!r} is not readable')
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


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _stage(path: str, save: Callable[[str], None]) -> str:
    """Call ``save(tmp)`` on a temporary file beside ``path`` (same suffix); returns ``tmp``."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=osp.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        save(tmp)
    except BaseException:
        os.remove(tmp)
        raise
    return tmp


def write_files(files: Dict[str, Callable[[str], None]], publish: bool,
                force: bool) -> Dict[str, Optional[str]]:
    """Write each ``{path: save}`` under a temporary name, then rename them all into place.

    With ``publish``, the ``.pth`` file's name gets the first 8 hex digits of its sha256, as
    OpenMMLab's ``publish_model.py`` does. Returns ``{path written: sha256 (.pth files) or None}``.
    """
    staged, digests = {}, {}
    try:
        for path, save in files.items():
            tmp = _stage(path, save)
            digest = sha256(tmp) if path.endswith('.pth') else None
            if publish and digest is not None:
                path = path[:-len('.pth')] + f'-{digest[:8]}.pth'
                if osp.exists(path) and not force:
                    raise ReleaseError(f'output {path!r} exists; pass --force to overwrite it')
            staged[path], digests[path] = tmp, digest
        for path, tmp in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged.values():
            if osp.exists(tmp):
                os.remove(tmp)
    return digests


def make_release(config: Optional[str], checkpoint: str, out: str, *, force: bool = False,
                 verify: bool = True, device: str = 'cpu', publish: bool = False,
                 log: Callable[[str], None] = print) -> List[str]:
    """Fold ``checkpoint`` (trained with ``config``; None: fold by state-dict key, unverified) and
    write the release; returns the paths written. Raises :class:`ReleaseError`, writing nothing."""
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
