"""The compiled CPU composition's build and load: one build per kind of CPU, the user's PATH left
as it was, a first build announced, any failure a fallback with one warning."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from doconv_mm.core import _ext
from doconv_mm.core.compose import compose, compose_ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_build_is_named_for_the_cpu_it_is_made_for():
    """A -march=native build only ever loads on a CPU with the same instruction-set flags: the
    flags are in its name, hence in its cache folder."""
    avx2 = 'x86_64 avx avx2 fma sse4_2'
    avx512 = avx2 + ' avx512f avx512bw'
    assert _ext.build_name(avx2) != _ext.build_name(avx512)
    assert _ext.build_name(avx2) == _ext.build_name(avx2)
    assert _ext.build_name('') not in (_ext.build_name(avx2), _ext.build_name(avx512))
    if sys.platform.startswith('linux'):
        assert 'x86_64' in _ext.cpu_features() or 'aarch64' in _ext.cpu_features()
    module = _ext.load()
    if module is None:
        pytest.skip(f'compiled composition unavailable: {_ext.unavailable_reason()}')
    assert module.__name__ == _ext.build_name(_ext.cpu_features())


def run_fresh(code, tmp_path, **env):
    """``code`` in a fresh interpreter with its own extension cache folder."""
    env = dict({k: v for k, v in os.environ.items() if k != 'DOCONV_MM_NO_EXT'},
               TORCH_EXTENSIONS_DIR=str(tmp_path / 'ext'), PYTHONPATH=ROOT, **env)
    prelude = textwrap.dedent('''
        import logging, os, sys, warnings
        import torch
        from doconv_mm.core import _ext
        from doconv_mm.core.compose import compose, compose_ref
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s %(message)s')
        path = os.environ.get('PATH')
        w, D = torch.randn(8, 4, 3, 3), torch.randn(4, 9, 9)
    ''')
    return subprocess.run([sys.executable, '-c', prelude + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_first_build_is_announced_and_leaves_path_as_it_was(tmp_path):
    if _ext.load() is None:
        pytest.skip(f'compiled composition unavailable: {_ext.unavailable_reason()}')
    out = run_fresh('''
        assert _ext.load() is not None, _ext.unavailable_reason()
        assert os.environ.get('PATH') == path, (path, os.environ.get('PATH'))
        assert torch.allclose(compose(w, D), compose_ref(w, D), rtol=1e-5, atol=1e-5)
        print('ok')
    ''', tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]
    logs = [line for line in out.stderr.splitlines() if line.startswith('INFO doconv_mm')]
    assert len(logs) == 1 and "compiling DO-Conv's CPU composition, once" in logs[0], out.stderr
    # a second process loads the build: nothing to announce
    again = run_fresh('assert _ext.load() is not None', tmp_path)
    assert again.returncode == 0 and 'INFO doconv_mm' not in again.stderr, again.stderr[-2000:]


def test_a_failed_build_falls_back_with_one_warning(tmp_path):
    broken = tmp_path / 'broken.cpp'
    broken.write_text('#error this source does not build\n')
    out = run_fresh(f'''
        _ext._SOURCE = {str(broken)!r}
        assert _ext.load() is None and _ext.load() is None
        assert os.environ.get('PATH') == path
        assert torch.equal(compose(w, D), compose_ref(w, D))
        print(_ext.unavailable_reason())
    ''', tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    warnings = [line for line in out.stderr.splitlines() if line.startswith('WARNING doconv_mm')]
    assert len(warnings) == 1 and 'using PyTorch operators' in warnings[0], out.stderr[-2000:]


def test_switched_off_by_environment_without_a_warning(tmp_path):
    out = run_fresh('''
        assert _ext.load() is None and 'DOCONV_MM_NO_EXT' in _ext.unavailable_reason()
        assert torch.equal(compose(w, D), compose_ref(w, D))
    ''', tmp_path, DOCONV_MM_NO_EXT='1')
    assert out.returncode == 0 and 'WARNING' not in out.stderr, out.stderr[-2000:]


def test_compiled_and_reference_compositions_agree():
    if _ext.load() is None:
        pytest.skip(f'compiled composition unavailable: {_ext.unavailable_reason()}')
    torch.manual_seed(0)
    w, D, we = torch.randn(16, 8, 3, 3), torch.randn(8, 9, 12), torch.randn(16, 8, 3)
    assert torch.allclose(compose(w, D, we), compose_ref(w, D, we), rtol=1e-5, atol=1e-5)
