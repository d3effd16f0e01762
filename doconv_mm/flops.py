"""Count DOConv2d in mmcv's FLOPs counter as the plain conv it folds to.

mmcv's counter looks modules up by exact type, so a conv subclass is otherwise skipped.
(mmengine's ``get_model_complexity_info``, which mmdet/mmseg's ``get_flops.py`` use, traces the
ops and needs nothing: in evaluation under ``torch.no_grad`` the cached kernel is a constant.)
"""
from mmcv.cnn.utils import flops_counter

from .do_conv import DOConv2d

_stock_modules_mapping = flops_counter.get_modules_mapping


def _modules_mapping_with_do_conv() -> dict:
    mapping = _stock_modules_mapping()
    mapping[DOConv2d] = flops_counter.conv_flops_counter_hook
    return mapping


flops_counter.get_modules_mapping = _modules_mapping_with_do_conv
