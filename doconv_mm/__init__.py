"""DO-Conv (depthwise over-parameterized convolution) for PyTorch, MMDetection and MMSegmentation.

The layer family and folding (:mod:`doconv_mm.core`) need torch only. Where mmengine and mmcv are
installed, importing this package also registers the ``'DOConv'`` conv type and the rest of the
OpenMMLab integration (:mod:`doconv_mm.mm`, and :mod:`doconv_mm.mm.det` where mmdet is installed),
so ``custom_imports=dict(imports=['doconv_mm'])`` in a config is all a user adds.
"""
from .core import DOConv2d, convert, count_do_convs, do_conv_kernel, fold_model
from .requirements import available
from .version import __version__

if available('mmengine') and available('mmcv'):
    from . import mm  # noqa: F401  (registers into the OpenMMLab registries)

__all__ = ['DOConv2d', 'do_conv_kernel', 'convert', 'fold_model', 'count_do_convs', '__version__']
