"""The DO-Conv layer family, model-level conversion and folding: needs torch only."""
from .compose import do_conv_kernel
from .convert import convert
from .do_conv import DOConv2d
from .fold import count_do_convs, fold_model

__all__ = ['DOConv2d', 'do_conv_kernel', 'convert', 'fold_model', 'count_do_convs']
