"""The project's experiments, run from a checkout (not installed with doconv_mm): toy datasets,
the demo, comparison over seeds with its paired statistics, and the toy-scale study. Each module
imports only what it needs, so ``paired_stats`` needs the standard library alone and ``toy_data``
numpy, OpenCV and Pillow."""
