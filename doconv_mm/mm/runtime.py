"""What the project's train and test commands add around mmengine's Runner, for mmdet and mmseg
configs.

* Usage errors: a config or checkpoint that is missing or cannot be read, or ``--amp`` without
  a GPU, raises :class:`~doconv_mm.requirements.UsageError` naming the argument and what is wrong.
* Trusted checkpoints: since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, and
  mmengine 0.10.7 cannot read its own checkpoints back (``--resume``, ``load_from``, testing).
  :func:`trusted_checkpoints` reads the files the user named in full, and only those.
* Distributed on CPU: mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP wrapper
  passes ``device_ids``; without a GPU :func:`setup_distributed` starts the gloo process group
  itself (and closes it), lets DDP run on CPU and turns SyncBN (CUDA only) into BN. With GPUs
  nothing changes (NCCL).
"""
import contextlib
import gc
import os
import os.path as osp
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import CheckpointLoader, Runner

from ..requirements import UsageError, available, check_input, require

# config scopes -> the module and the distribution that provide them
SCOPES = {'mmdet': 'mmdet', 'mmseg': 'mmsegmentation'}


def config_dicts(node: Any) -> Iterator[dict]:
    """Every dict in ``node`` (a config or any part of one), each before those inside it.

    A dict's children are read when the walk moves on from it, so the caller may change the dict
    it was given (a key removed is then not walked into).
    """
    if isinstance(node, dict):
        yield node
        children = list(node.values())
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return
    for child in children:
        yield from config_dicts(child)


@contextlib.contextmanager
def trusted_checkpoints(*paths: Optional[str]) -> Iterator[None]:
    """Within the block, mmengine reads local checkpoints under ``paths`` with the full unpickler.

    ``paths`` are files or folders the user named (the run's work dir, ``--resume``, ``load_from``,
    the checkpoint to test). mmengine's checkpoints hold its message hub, whose pickled history
    buffers need ``getattr`` on load, which no safe allowlist can grant; so they are read as
    trusted files, and every other ``torch.load`` (other files, downloads) keeps the
    ``weights_only=True`` default.
    """
    trusted = [osp.realpath(osp.expanduser(p)) for p in paths if p]
    stock = CheckpointLoader._schemes['']

    def load_local(filename, map_location):
        path = osp.realpath(osp.expanduser(filename))
        if not any(path == t or path.startswith(t + os.sep) for t in trusted):
            return stock(filename, map_location)
        check_input(filename, 'checkpoint')
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # truncated, corrupt, not a torch file
            raise UsageError(f'cannot read checkpoint {filename!r} ({type(e).__name__}: {e}); '
                             f'is it a complete checkpoint file?') from e

    CheckpointLoader.register_scheme('', load_local, force=True)
    try:
        yield
    finally:
        CheckpointLoader.register_scheme('', stock, force=True)


@contextlib.contextmanager
def setup_distributed(cfg: Config, launcher: str) -> Iterator[None]:
    """Within the block, ``cfg`` (and the process group) are set up for a distributed run without
    a GPU. A process group started here is closed at the end, after a garbage collection: the
    runner lives in reference cycles, and a DDP wrapper left to interpreter exit frees its gloo
    work (tensors holding Python references) while the interpreter is torn down, which can abort
    the process ("terminate called without an active exception")."""
    if launcher == 'none' or torch.cuda.is_available():
        yield
        return
    if launcher != 'pytorch':
        raise UsageError(f'--launcher {launcher} without a GPU is not supported; '
                         f'use --launcher pytorch (torchrun) for CPU runs')
    started = not dist.is_initialized()
    if started:
        dist.init_process_group('gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))
    cfg.model_wrapper_cfg = dict(
        type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    sync_bns = [node for node in config_dicts(cfg.model) if node.get('type') == 'SyncBN']
    for node in sync_bns:
        node['type'] = 'BN'
    if sync_bns:
        print_log('no GPU: SyncBN (CUDA only) replaced by BN; each process normalises with its '
                  'own batch statistics', logger='current')
    finished = False
    try:
        yield
        finished = True
    finally:
        if started and dist.is_initialized():
            gc.collect()  # the runner and its DDP wrapper, while the group is alive
            if finished:
                dist.barrier()  # no process closes the group while another still uses it
            dist.destroy_process_group()


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``. A missing or unparsable file raises
    :class:`~doconv_mm.requirements.UsageError`; a config that needs mmdet or mmseg where it is not
    installed raises :class:`~doconv_mm.requirements.MissingPackageError` naming what to install."""
    check_input(path, 'config')
    try:
        cfg = Config.fromfile(path)
    except ModuleNotFoundError as e:  # mmengine: '<distribution> is not installed, ...'
        for scope, distribution in SCOPES.items():
            if f'{distribution} is not installed' in str(e) and not available(scope):
                require(scope, f'{path} (a {scope} config)')
        raise
    except (SyntaxError, UnicodeDecodeError) as e:
        raise UsageError(f'cannot read config {path!r} ({type(e).__name__}: {e})') from e
    scope = cfg.get('default_scope')
    if scope in SCOPES:
        require(scope, f'{path} (a {scope} config)')
    return cfg


def enable_amp(cfg: Config) -> None:
    """Train with mmengine's ``AmpOptimWrapper`` (float16 autocast, dynamic loss scaling). It
    asserts a GPU (or NPU, MLU, MUSA) when the runner builds it; without one, this raises
    :class:`~doconv_mm.requirements.UsageError` before any work."""
    if not (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available()):
        raise UsageError('--amp: mmengine\'s AmpOptimWrapper trains on a GPU (or NPU, MLU, MUSA) '
                         'only, and this machine has none; train without --amp')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def load_config(path: str, launcher: str, cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None) -> Config:
    """The config as mmdet's and mmseg's tools load it: ``--cfg-options`` merged, and the work dir
    from the command line, else the config, else ``./work_dirs/<config name>``."""
    cfg = read_config(path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


def build_runner(cfg: Config) -> Runner:
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
