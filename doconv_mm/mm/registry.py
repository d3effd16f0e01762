"""``DOConv2d`` in mmengine's registry and mmcv's FLOPs counter.

Conv types live in mmengine's root ``MODELS`` in mmcv 2.x, where ``build_conv_layer`` finds them
from the mmdet and mmseg scopes alike. mmcv's FLOPs counter looks modules up by exact type, so a
conv subclass is otherwise skipped; it is counted as the plain conv it folds to. (mmengine's
``get_model_complexity_info``, which mmdet/mmseg's ``get_flops.py`` use, traces the ops and needs
nothing: it counts the composition's batched matmul and the convolution.)
"""
from mmcv.cnn.utils import flops_counter
from mmengine.registry import MODELS

from ..core import DOConv2d

MODELS.register_module('DOConv', module=DOConv2d)

_stock_modules_mapping = flops_counter.get_modules_mapping


def _modules_mapping_with_do_conv() -> dict:
    mapping = _stock_modules_mapping()
    mapping[DOConv2d] = flops_counter.conv_flops_counter_hook
    return mapping


flops_counter.get_modules_mapping = _modules_mapping_with_do_conv
