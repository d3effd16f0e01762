"""DO-Conv's cost against plain convolutions, measured side by side.

    python tools/benchmark.py --layers [--repeats N] [--processes N] [--json FILE]
    python tools/benchmark.py [--quick] [--json FILE] [--repeats N] [--sizes 256 512]
    python tools/benchmark.py --device cuda [--amp fp16|bf16] [--channels-last] [--quick]

--layers: DOConv2d against nn.Conv2d and against the naive einsum composition (the DO-Conv
authors' way), per layer shape: training step, training forward, evaluation, the composition
alone against its arithmetic floor, and the memory saved for backward (torch only;
benchmarks/layers.py). Each figure is
the median over --processes fresh processes of each process's median of --repeats alternating
runs, printed with its range over the processes.
--device (torch only, any device): torchvision's Faster R-CNN R50-FPN (1333x800) and DeepLabv3 R50
(512x1024), batch 2, converted with doconv_mm.convert, against stock: training step (with
autocast and a GradScaler under --amp), peak device memory, unfolded and folded inference, in one
process with device-synchronised timers (benchmarks/torch_models.py); with --layers, the layer
table on that device.
Otherwise: the training step and peak memory of Faster R-CNN R50-FPN and DeepLabv3 R50-D8 with
DO-Conv across the whole network, unfolded and folded inference, each as the median of
alternating runs and the ratio DO-Conv / stock, and fold_ckpt.py's wall time
(benchmarks/models.py).
"""
import argparse
import json
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import layers, torch_models  # noqa: E402

MODEL_NAMES = ['Faster R-CNN R50-FPN', 'DeepLabv3 R50-D8']  # benchmarks.models.MODELS
DEVICE_MODELS = list(torch_models.MODELS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--layers', action='store_true',
                        help='the layer table only (needs torch only)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny run for a smoke test: two small layer shapes, or one model '
                        'size without memory')
    parser.add_argument('--repeats', type=int, default=None,
                        help='alternating runs per figure (default: 9 per process for --layers, '
                        'else 5)')
    parser.add_argument('--processes', type=int, default=5,
                        help='with --layers: fresh processes per figure, run one after another')
    parser.add_argument('--mem-repeats', type=int, default=3,
                        help='fresh processes per model and size for the peak memory')
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512])
    parser.add_argument('--models', nargs='+', default=None, metavar='NAME',
                        help=f'models to measure (default: all of {MODEL_NAMES}; with --device '
                        f'those of {DEVICE_MODELS[:2]}, or {DEVICE_MODELS[2]!r})')
    parser.add_argument('--device', help='torch only, on this device (cpu, cuda, cuda:1, ...)')
    parser.add_argument('--amp', choices=sorted(torch_models.AMP),
                        help='with --device: autocast in this precision (default: float32)')
    parser.add_argument('--channels-last', action='store_true',
                        help='with --device: models and inputs in channels_last')
    parser.add_argument('--no-fold', action='store_true', help='skip the fold_ckpt.py timing')
    parser.add_argument('--json', help='also write the results as JSON here')
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 9 if args.layers else 10 if args.device else 5
    for name in ('repeats', 'mem_repeats', 'processes'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if any(size < 32 for size in args.sizes):
        parser.error(f'--sizes must be >= 32 px each, got {args.sizes}')
    if (args.amp or args.channels_last) and not args.device:
        parser.error('--amp and --channels-last need --device')
    names = DEVICE_MODELS if args.device and not args.layers else MODEL_NAMES
    if args.models is None:
        args.models = names[:2]
    wrong = [m for m in args.models if m not in names]
    if wrong:
        parser.error(f'--models {wrong}: not one of {names}')
    if args.device and not args.layers:
        sizes = torch_models.QUICK_SIZES if args.quick else None
        result = torch_models.run(args.device, args.amp, args.channels_last, args.repeats,
                                  args.models, sizes)
        print(torch_models.markdown(result))
    elif args.layers:
        shapes = [(32, 32, 1, 16), (32, 32, 4, 16)] if args.quick else layers.SHAPES
        result = layers.run(args.repeats, shapes, args.processes)
        print(layers.markdown(result))
    else:
        from benchmarks.models import markdown, run
        result = run(ROOT, args.sizes, args.repeats, args.mem_repeats, args.quick, args.models,
                     fold=not args.no_fold)
        print(markdown(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
