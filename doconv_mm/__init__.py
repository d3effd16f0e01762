"""DO-Conv for OpenMMLab: importing this package registers the ``'DOConv'`` conv type (mmengine's
root ``MODELS``, seen from the mmdet and mmseg scopes) and the adapters in ``doconv_mm.models``."""
from . import flops  # noqa: F401  (registers DOConv2d with mmcv's FLOPs counter)
from .do_conv import DOConv2d, do_conv_kernel
from .fold import count_do_convs, fold_model
from .models import ConvCfgRPNHead
from .version import __version__

__all__ = [
    'DOConv2d', 'do_conv_kernel', 'fold_model', 'count_do_convs', 'ConvCfgRPNHead', '__version__'
]
