from .do_conv import DOConv2d, do_conv_kernel
from .fold import count_do_convs, fold_model
from .version import __version__

__all__ = ['DOConv2d', 'do_conv_kernel', 'fold_model', 'count_do_convs', '__version__']
