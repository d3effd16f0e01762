"""The compiled CPU composition (``csrc/compose.cpp``), built on first use with
``torch.utils.cpp_extension`` (``make setup`` builds it ahead), or None where it cannot be: no
compiler or ninja, a failed build, or ``DOCONV_MM_NO_EXT=1``. Callers fall back to PyTorch ops,
which compute the same thing."""
import logging
import os
import os.path as osp
import sys
from typing import Optional

_SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'compose.cpp')
_state = {}


def load(verbose: bool = False):
    """The extension module, or None (the reason is logged once, at DEBUG level)."""
    if 'module' not in _state:
        _state['module'], _state['reason'] = _build(verbose)
        if _state['module'] is None:
            logging.getLogger('doconv_mm').debug('compiled composition unavailable: %s',
                                                 _state['reason'])
    return _state['module']


def unavailable_reason() -> Optional[str]:
    load()
    return _state['reason']


def _build(verbose):
    if os.environ.get('DOCONV_MM_NO_EXT', '') not in ('', '0'):
        return None, 'DOCONV_MM_NO_EXT is set'
    try:
        from torch.utils import cpp_extension
        bin_dir = osp.dirname(sys.executable)  # a venv's ninja, when it has one
        if bin_dir not in os.environ.get('PATH', '').split(os.pathsep):
            os.environ['PATH'] = bin_dir + os.pathsep + os.environ.get('PATH', '')
        module = cpp_extension.load(
            'doconv_mm_compose', [_SOURCE], verbose=verbose,
            extra_cflags=['-O3', '-march=native', '-fopenmp'], extra_ldflags=['-fopenmp'])
        return module, None
    except Exception as err:  # no compiler, no ninja, a failed build: PyTorch ops instead
        return None, f'{type(err).__name__}: {err}'.splitlines()[0]
