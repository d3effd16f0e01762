"""The mmdet/mmseg adapters DO-Conv needs: modules taking a ``conv_cfg`` where stock ones don't."""
from .rpn_head import ConvCfgRPNHead

__all__ = ['ConvCfgRPNHead']
