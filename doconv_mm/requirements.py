"""Which optional package each part of doconv_mm needs, and the error that says how to get it."""
import importlib.util

# package -> (what needs it, the extra that installs it)
OPTIONAL = {
    'mmengine': ('doconv_mm.mm (the OpenMMLab integration)', 'mm'),
    'mmcv': ('doconv_mm.mm (the OpenMMLab integration)', 'mm'),
    'mmdet': ('doconv_mm.mm.det (the mmdet adapters)', 'det'),
    'mmseg': ('a segmentation config', 'seg'),
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
