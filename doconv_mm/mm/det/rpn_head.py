import torch.nn as nn
from mmcv.cnn import ConvModule, build_conv_layer
from mmdet.models.dense_heads import RPNHead
from mmdet.registry import MODELS
from mmdet.utils import OptConfigType


@MODELS.register_module()
class ConvCfgRPNHead(RPNHead):
    """mmdet's ``RPNHead`` with its 3x3 conv(s) built from ``conv_cfg``.

    The stock head hard-codes ``nn.Conv2d`` and takes no ``conv_cfg``. Modules, parameter names and
    initialisation are the stock head's, so with ``conv_cfg=None`` it *is* the stock head, and a
    folded checkpoint loads into the stock ``RPNHead`` (see ``doconv_mm.mm.release.deploy_config``).
    """

    def __init__(self, *args, conv_cfg: OptConfigType = None, **kwargs) -> None:
        self.conv_cfg = conv_cfg
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()  # rpn_cls, rpn_reg and a stock rpn_conv, replaced below
        if self.num_convs == 1:
            self.rpn_conv = build_conv_layer(
                self.conv_cfg, self.in_channels, self.feat_channels, 3, padding=1)
            return
        # ``inplace=False`` as in the stock head: autograd needs the ReLU inputs
        self.rpn_conv = nn.Sequential(*[
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels, 3,
                       padding=1, conv_cfg=self.conv_cfg, inplace=False)
            for i in range(self.num_convs)
        ])
