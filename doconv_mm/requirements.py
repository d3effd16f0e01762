"""What a part of doconv_mm needs and the errors that say what is missing: optional packages
(:class:`MissingPackageError`, naming the extra that installs them) and usable command-line inputs
(:class:`UsageError`), and :func:`one_line_errors`, the form the command lines print them in.
Standard library only."""
import contextlib
import importlib.util
import os
import os.path as osp
import sys
from typing import Iterator, Type

# package -> (what needs it, the extra of setup.cfg that installs it, its requirement there:
# what pip installs into an existing environment)
OPTIONAL = {
    'mmengine': ('doconv_mm.mm (the OpenMMLab integration)', 'mm', 'mmengine>=0.7.1,<1.0.0'),
    'mmcv': ('doconv_mm.mm (the OpenMMLab integration)', 'mm', 'mmcv>=2.0.0,<2.2.0'),
    'mmdet': ('doconv_mm.mm.det (the mmdet adapters)', 'det', 'mmdet>=3.0.0,<3.4.0'),
    'mmseg': ('a segmentation config', 'seg', 'mmsegmentation>=1.0.0,<1.3.0'),
    'onnx': ('--engine onnxruntime', 'onnx', 'onnx'),
    'onnxruntime': ('--engine onnxruntime', 'onnx', 'onnxruntime'),
}


class MissingPackageError(ImportError):
    """An optional package that this part of doconv_mm needs is not installed."""


def available(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # in sys.modules without a spec
        return True


def require(package: str, what: str = None) -> None:
    """Raise :class:`MissingPackageError` naming ``package`` and the install commands if it is not
    installed; ``what`` says what needs it (default: the part of doconv_mm listed in OPTIONAL)."""
    if available(package):
        return
    needs, extra, spec = OPTIONAL[package]
    raise MissingPackageError(
        f'{what or needs} needs {package}, which is not installed; install it with '
        f'pip install "{spec}" (or, in a doconv_mm checkout, pip install ".[{extra}]")',
        name=package)


class UsageError(ValueError):
    """A command-line argument that cannot be used (a missing or unreadable file, a flag this
    machine cannot honour); the message names it and what is wrong."""


def check_input(path: str, name: str) -> None:
    """Raise :class:`UsageError` unless ``path`` (the argument ``name``) is a readable file."""
    if not osp.exists(path):
        raise UsageError(f'{name} {path!r} not found')
    if not osp.isfile(path):
        raise UsageError(f'{name} {path!r} is not a file')
    if not os.access(path, os.R_OK):
        raise UsageError(f'{name} {path!r} is not readable')


@contextlib.contextmanager
def one_line_errors(prog: str, *also: Type[Exception]) -> Iterator[None]:
    """Within the block, a :class:`UsageError`, a :class:`MissingPackageError` or one of ``also``
    ends the program with ``PROG: error: MESSAGE`` on stderr and exit status 1, not a traceback."""
    try:
        yield
    except (UsageError, MissingPackageError, *also) as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        raise SystemExit(1)
