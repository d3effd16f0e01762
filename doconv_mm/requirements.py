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

# package -> (what needs it, the extra that installs it)
OPTIONAL = {
    'mmengine': ('doconv_mm.mm (the OpenMMLab integration)', 'mm'),
    'mmcv': ('doconv_mm.mm (the OpenMMLab integration)', 'mm'),
    'mmdet': ('doconv_mm.mm.det (the mmdet adapters)', 'det'),
    'mmseg': ('a segmentation config', 'seg'),
    'onnx': ('--engine onnxruntime', 'onnx'),
    'onnxruntime': ('--engine onnxruntime', 'onnx'),
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
    """Raise :class:`MissingPackageError` naming ``package`` and the install command if it is not
    installed; ``what`` says what needs it (default: the part of doconv_mm listed in OPTIONAL)."""
    if available(package):
        return
    needs, extra = OPTIONAL[package]
    raise MissingPackageError(
        f'{what or needs} needs {package}, which is not installed; install it with '
        f'pip install "doconv_mm[{extra}]" (or add {package} to the environment you use with '
        f'OpenMMLab)', name=package)


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
