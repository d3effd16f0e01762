"""The mmdet adapters (needs mmdet): modules that take a ``conv_cfg`` where stock ones don't."""
from ...requirements import require

require('mmdet')

from .rpn_head import ConvCfgRPNHead  # noqa: E402

__all__ = ['ConvCfgRPNHead']
