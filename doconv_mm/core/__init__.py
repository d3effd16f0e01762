"""The DO-Conv layer family and model-level folding: needs torch only."""
from .do_conv import DOConv2d, do_conv_kernel
from .fold import count_do_convs, fold_model

__all__ = ['DOConv2d', 'do_conv_kernel', 'fold_model', 'count_do_convs']
