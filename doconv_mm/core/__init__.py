"""The DO-Conv layer family, model-level conversion and folding: needs torch only."""
from .convert import convert
from .compose import compose_ref
from .do_conv import DOConv2d
from .functions import do_conv_kernel
from .fold import count_do_convs, fold_model

__all__ = ['DOConv2d', 'do_conv_kernel', 'compose_ref', 'convert', 'fold_model', 'count_do_convs']
