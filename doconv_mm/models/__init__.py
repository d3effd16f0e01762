"""The few mmdet/mmseg adapters DO-Conv needs: modules that take a ``conv_cfg`` where stock ones don't."""
from .rpn_head import ConvCfgRPNHead

__all__ = ['ConvCfgRPNHead']
