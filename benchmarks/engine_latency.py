"""The CPU latency of a quant_check report's ONNX sessions, release against baseline, over fresh
processes.

    python benchmarks/engine_latency.py REPORT.json [--processes 5] [--repeats 20]

REPORT.json is what ``tools/quant_check.py --engine onnxruntime --baseline ...`` wrote; its graphs
(``WORK_DIR/<model>/onnx/*.onnx``) are timed on the inputs saved beside them (the first test
image), as the tool times them (fp32 and int8 of both models, interleaved so that no session runs
twice in a row: ``doconv_mm.mm.onnx_engine.schedule``), each process a new interpreter. Prints
the medians over processes of each median, and of the model / baseline ratios, with their spread
(lowest, highest).
"""
import argparse
import json
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)


def time_report(path: str, repeats: int) -> dict:
    """One process: the report's sessions timed, and the ratios."""
    import numpy as np
    import torch

    from doconv_mm.mm import onnx_engine
    with open(path) as f:
        report = json.load(f)
    runs = {role: {p: [(onnx_engine.Session(files[p]),
                        torch.from_numpy(np.load(files['input'])))
                       for files in m['onnx'].values()] for p in ('fp32', 'int8')}
            for role, m in report['models'].items()}
    result = onnx_engine.latency(runs, repeats)
    medians = {role: {p: t[p]['median_ms'] for p in t} for role, t in result.items()}
    return dict(ms=medians, ratio={p: medians['model'][p] / medians['baseline'][p]
                                   for p in ('fp32', 'int8')})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('report', help='a quant_check --engine onnxruntime JSON with --baseline')
    parser.add_argument('--processes', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args(argv)
    from benchmarks.timing import in_fresh_process, median_over, range_over
    with open(args.report) as f:
        report = json.load(f)
    if report.get('engine') != 'onnxruntime' or 'baseline' not in report.get('models', {}):
        parser.error(f'{args.report}: not a quant_check --engine onnxruntime report with a '
                     f'--baseline')
    results = [in_fresh_process(time_report, args.report, args.repeats)
               for _ in range(args.processes)]
    median, spread = median_over(results), range_over(results)
    print(f'{args.processes} fresh processes x {args.repeats} runs, onnxruntime CPU, '
          f'{report["threads"]} threads; medians over processes [lowest, highest]:')
    print('| precision | model ms | baseline ms | model / baseline |')
    print('| --- | --- | --- | --- |')
    for p in ('fp32', 'int8'):
        cells = [f'{median["ms"][role][p]:.1f} [{spread["ms"][role][p][0]:.1f}, '
                 f'{spread["ms"][role][p][1]:.1f}]' for role in ('model', 'baseline')]
        print(f'| {p} | {cells[0]} | {cells[1]} | {median["ratio"][p]:.3f} '
              f'[{spread["ratio"][p][0]:.3f}, {spread["ratio"][p][1]:.3f}] |')
    return median, spread


if __name__ == '__main__':
    main()
