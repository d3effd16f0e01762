"""DO-Conv's cost against plain convolutions, run from a checkout (not installed with doconv_mm):
``layers`` (torch only) and ``models`` (Faster R-CNN and DeepLabv3 through mmdet/mmseg)."""
