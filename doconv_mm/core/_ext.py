"""The compiled CPU composition (``csrc/compose.cpp``): built on first use with
``torch.utils.cpp_extension`` (``make setup`` builds it ahead) and used where it applies; else None,
and :mod:`.compose` runs the PyTorch reference, which computes the same thing.

The build is tuned to the CPU it runs on (``-march=native``), so its name carries a digest of that
CPU's instruction-set flags: a cache folder shared by machines of different CPUs (a home directory
on a cluster) holds one build per kind of CPU, and a process only ever loads the build made for a
CPU with exactly its own flags. ``DOCONV_MM_NO_EXT=1`` turns it off; any failure to build or load
falls back to PyTorch with one warning.
"""
import hashlib
import logging
import os
import os.path as osp
import platform
import sys
import threading
from typing import Optional

import torch
from torch import Tensor

_SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'compose.cpp')
_FLAGS = ['-O3', '-march=native', '-fopenmp']
_logger = logging.getLogger('doconv_mm')
_state = {}
_lock = threading.Lock()


def cpu_features() -> str:
    """This CPU's architecture and instruction-set flags (Linux: /proc/cpuinfo), or '' where they
    cannot be read."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() in ('flags', 'Features'):  # x86, ARM
                    return platform.machine() + ' ' + ' '.join(sorted(value.split()))
    except OSError:
        pass
    return ''


def _flags(features: str):
    """Tuned to the CPU where its features are known, else portable."""
    return _FLAGS if features else [f for f in _FLAGS if not f.startswith('-march')]


def build_name(features: str) -> str:
    """The extension's name (and so its cache folder) for a CPU with ``features``."""
    digest = hashlib.sha256(' '.join([features] + _flags(features)).encode()).hexdigest()[:16]
    return f'doconv_mm_compose_{digest}'


def load(verbose: bool = False):
    """The extension module, or None (why: :func:`unavailable_reason`)."""
    if 'module' not in _state:
        with _lock:
            if 'module' not in _state:
                _state['module'], _state['reason'] = _build(verbose)
    return _state['module']


def unavailable_reason() -> Optional[str]:
    load()
    return _state['reason']


def _build(verbose):
    if os.environ.get('DOCONV_MM_NO_EXT', '') not in ('', '0'):
        return None, 'DOCONV_MM_NO_EXT is set'
    path = os.environ.get('PATH')
    try:
        from torch.utils import cpp_extension
        features = cpu_features()
        name = build_name(features)
        built = osp.join(cpp_extension._get_build_directory(name, False), name + '.so')
        if not osp.exists(built):
            _logger.info("compiling DO-Conv's CPU composition, once for this kind of CPU "
                         '(about a minute); until it is ready, nothing else runs')
        # the build runs ninja by name: the interpreter's own folder (a venv's ninja) joins PATH
        # for the build only
        os.environ['PATH'] = osp.dirname(sys.executable) + os.pathsep + (path or '')
        module = cpp_extension.load(name, [_SOURCE], verbose=verbose, extra_cflags=_flags(features),
                                    extra_ldflags=['-fopenmp'])
        return module, None
    except Exception as err:  # no compiler or ninja, a failed build or load: PyTorch ops instead
        reason = f'{type(err).__name__}: {err}'.splitlines()[0]
        _logger.warning("DO-Conv's compiled CPU composition is unavailable (%s); using PyTorch "
                        'operators, which compute the same', reason)
        return None, reason
    finally:
        if path is None:
            os.environ.pop('PATH', None)
        else:
            os.environ['PATH'] = path


def applies(weight: Tensor, D: Tensor):
    """The extension where it takes this composition, else None: float32/float64 CPU tensors of
    one dtype, D_mul <= 256, and not under ``torch.jit`` tracing (export, FLOP counters), which
    must see PyTorch operators."""
    if weight.device.type != 'cpu' or weight.dtype not in (torch.float32, torch.float64) \
            or D.dtype != weight.dtype or D.shape[2] > 256 or torch.jit.is_tracing():
        return None
    return load()


_workspace = threading.local()


def kernel_buffer(weight: Tensor) -> Tensor:
    """A tensor of ``weight``'s shape, dtype and device in memory this thread reuses for every
    transient composition (the training forward and backward). A fresh kernel-sized tensor per
    composition costs page faults wherever the allocator has returned the memory to the system in
    between; the buffer grows to the largest kernel composed on the thread and is kept."""
    views = _workspace.__dict__.setdefault('views', {})  # (device, dtype, shape) -> kernel view
    key = (weight.device, weight.dtype, weight.shape)
    view = views.get(key)
    if view is None:
        buffers = _workspace.__dict__.setdefault('buffers', {})
        buf = buffers.get(key[:2])
        if buf is None or buf.numel() < weight.numel():
            buf = buffers[key[:2]] = torch.empty(weight.numel(), dtype=weight.dtype,
                                                 device=weight.device)
            views.clear()  # views of a smaller buffer would keep it alive
        view = views[key] = buf[:weight.numel()].view(weight.shape)
    return view
