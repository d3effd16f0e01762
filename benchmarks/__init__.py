"""Measurements of what DO-Conv costs against plain convolutions, run from a checkout (not
installed with doconv_mm), one module per benchmark: ``layers`` (torch only) and ``models``
(Faster R-CNN and DeepLabv3 through mmdet/mmseg), with the timing helpers they share in
``timing``."""
