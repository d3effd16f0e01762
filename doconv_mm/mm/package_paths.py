"""``mmdet::``/``mmseg::`` config prefixes without ``pkg_resources``.

mmengine (0.10.7 and older) finds an installed package's configs through ``pkg_resources``, which
setuptools 81 removed. Where it is missing, :func:`install` gives mmengine's config loader the same
two look-ups written with ``importlib.metadata``; where it exists, mmengine is left as it is. This
covers configs loaded after ``import doconv_mm`` (this project's tools, or any script that imports
it first); stock mmdet/mmseg tools load a config before its ``custom_imports``, which is why the
``mm`` extra also asks for ``setuptools<81``.
"""
import importlib.metadata
import importlib.util
import os.path as osp

from ..requirements import available


def is_installed(package: str) -> bool:
    """Whether the distribution (or module) ``package`` is installed, as mmengine's function."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """The folder of the module the distribution ``package`` installs (``mmsegmentation`` ->
    ``.../site-packages/mmseg``), as mmengine's function."""
    module = package
    try:
        dist = importlib.metadata.distribution(package)
        top_level = (dist.read_text('top_level.txt') or '').split()
        if top_level and package not in top_level:
            module = top_level[0]
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise importlib.metadata.PackageNotFoundError(package)
    return osp.dirname(spec.origin)


def install() -> bool:
    """Use the functions above in mmengine's config loader where ``pkg_resources`` is missing;
    returns whether they were installed."""
    if available('pkg_resources'):
        return False
    import mmengine.config.config as config
    import mmengine.utils as utils
    import mmengine.utils.package_utils as package_utils
    for module in (config, utils, package_utils):
        module.is_installed = is_installed
        module.get_installed_path = get_installed_path
    return True
