"""Does a release survive int8? Evaluate a model in fp32 and in int8, beside a baseline.

    python tools/quant_check.py CONFIG CHECKPOINT [--baseline CONFIG CHECKPOINT] [--calib N]
                                [--engine {torch,onnxruntime}] [--repeats N]
                                [--work-dir DIR] [--out REPORT.md] [--cfg-options k=v ...]

CHECKPOINT is a folded release (with its deploy config) or a DO-Conv checkpoint (with its training
config; folded first). Reports the config evaluator's metrics in fp32 and in int8 (symmetric, per
output channel weights, per tensor activations calibrated on N training images): --engine torch
(default) simulates int8 in PyTorch, with int8 weights and with int8 weights and activations, and
reports every conv and linear layer's weight SQNR; --engine onnxruntime exports the tensor part
to ONNX (WORK_DIR/<model>/onnx/), quantizes it with onnxruntime (QDQ) and evaluates the fp32 and
int8 sessions, with every layer's output SQNR and the sessions' CPU latency. Markdown to REPORT.md
(default WORK_DIR/quant_check.md) and JSON beside it. (doconv_mm.mm.quant_check does the work.)
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from doconv_mm.requirements import one_line_errors  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config of CHECKPOINT (a deploy or training config)')
    parser.add_argument('checkpoint', help='a folded release or a DO-Conv checkpoint')
    parser.add_argument('--baseline', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                        help='a model to check the same way, side by side (e.g. the stock one)')
    parser.add_argument('--calib', type=int, default=32,
                        help='training images to calibrate the activation ranges on (default 32)')
    parser.add_argument('--engine', choices=('torch', 'onnxruntime'), default='torch',
                        help='torch: simulated int8 (default); onnxruntime: exported ONNX graphs '
                        'quantized and run on onnxruntime (pip install onnx onnxruntime)')
    parser.add_argument('--repeats', type=int, default=20,
                        help='--engine onnxruntime: timed runs of each session (default 20; with a '
                        '--baseline, rounded up to a multiple of 4, so that each session runs '
                        'first equally often)')
    parser.add_argument('--work-dir', help='the runs\' logs (default '
                        'work_dirs/quant_check/<config name>)')
    parser.add_argument('--out', help='the Markdown report (default WORK_DIR/quant_check.md); '
                        'the JSON is written beside it')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of both configs, key=value')
    return parser.parse_args(argv)


def main(argv=None):
    with one_line_errors(osp.basename(__file__)):
        from doconv_mm.mm.quant_check import quant_check  # needs mmengine: missing, one line
        args = parse_args(argv)
        quant_check(args.config, args.checkpoint, baseline=args.baseline, calib=args.calib,
                    engine=args.engine, repeats=args.repeats,
                    work_dir=args.work_dir, out=args.out, cfg_options=args.cfg_options)


if __name__ == '__main__':
    main()
