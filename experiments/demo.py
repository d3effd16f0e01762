"""The project's main job end to end, on an embedded toy dataset (``tools/demo.py``, ``make demo``).

It drives this checkout's command-line tools as a user would (``root`` is the checkout):

1. writes the toy dataset once (tools/make_toy_data.py: COCO format for det, Cityscapes for seg);
2. trains the stock baseline and the same network with DO-Conv across the whole network, side by
   side with the same seed, through tools/train.py (mmengine's progress output visible);
3. tests both (tools/test.py), folds the DO-Conv checkpoint (tools/fold_ckpt.py), and tests the
   folded release with *stock* mmdet/mmseg through the deploy config, in a process where importing
   doconv_mm fails;
4. prints a table (metric of baseline, DO-Conv and folded DO-Conv, parameters, inference time of
   folded vs baseline) and what it does and does not show (one seed from scratch says nothing
   about DO-Conv's accuracy: that is ``make study``), and writes the folded model's predictions on
   val images and the training loss curves as PNGs.
"""
import glob
import os.path as osp
import re
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

import cv2
import numpy as np

from doconv_mm.atomic import write
from doconv_mm.mm.runtime import trusted_checkpoints
from .compare import last_checkpoint, read_logs, seed_options

TASKS = {
    'det': dict(data=('coco', 'data/toy_coco'), package='mmdet', metric='coco/bbox_mAP',
                baseline='configs/demo/faster-rcnn_r18_fpn_toy-coco.py',
                doconv='configs/demo/faster-rcnn_r18_fpn_doconv-all_toy-coco.py'),
    'seg': dict(data=('cityscapes', 'data/toy_cityscapes'), package='mmseg', metric='mIoU',
                show=['default_hooks.visualization.interval=1'],  # mmseg draws every 50th
                baseline='configs/demo/deeplabv3_r18-d8_toy-cityscapes.py',
                doconv='configs/demo/deeplabv3_r18-d8_doconv-all_toy-cityscapes.py'),
}
# runs the stock package's own tools/test.py where any import of doconv_mm fails
STOCK_TEST = ("import sys, runpy, os.path as osp, importlib; sys.modules['doconv_mm'] = None; "
              "pkg = importlib.import_module(sys.argv[1]); sys.argv = ['test.py'] + sys.argv[2:]; "
              "runpy.run_path(osp.join(osp.dirname(pkg.__file__), '.mim/tools/test.py'), "
              "run_name='__main__')")


def run(cmd, cwd, log=None):
    """Run ``cmd`` with its output shown (and kept, to parse); stop the demo if it fails."""
    print('$ ' + ' '.join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if log is None or log(line):
            sys.stdout.write(line)
            sys.stdout.flush()
    if proc.wait():
        sys.stdout.write(''.join(lines[-40:]))
        raise SystemExit(f'demo: {" ".join(cmd[:2])} failed (exit {proc.returncode})')
    return ''.join(lines)


def progress(line):
    """Show mmengine's progress and results, not its environment and config dumps."""
    return (' - mmengine - ' in line and ('Epoch(' in line or 'Iter(' in line
                                          or 'Saving' in line)) or line.startswith('wrote ') \
        or line.startswith(('folded', 'verified'))


def test_metrics(output):
    """The metrics of the last 'Epoch(test)' / 'Iter(test)' line: {name: value}."""
    line = [x for x in output.splitlines() if re.search(r'(Epoch|Iter)\(test\)', x)][-1]
    return dict(re.findall(r'(\S+): (-?[\d.]+)', line.split(')', 1)[1]))


def loss_curve(work_dir):
    """(iteration, loss) pairs from the run's mmengine scalars log."""
    return sorted((i, r['loss']) for i, r in read_logs(work_dir)['train'].items())


def plot_losses(curves, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, points in curves.items():
        ax.plot(*zip(*points), label=name)
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss')
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write(path, fig.savefig)
    plt.close(fig)


def tile(images, path, columns=4):
    """Save the painted predictions as one grid image."""
    imgs = [cv2.imread(p) for p in images[:columns * 2]]
    h = max(i.shape[0] for i in imgs)
    w = max(i.shape[1] for i in imgs)
    canvas = np.full((h * ((len(imgs) + columns - 1) // columns), w * columns, 3), 255, np.uint8)
    for k, img in enumerate(imgs):
        r, c = divmod(k, columns)
        canvas[r * h:r * h + img.shape[0], c * w:c * w + img.shape[1]] = img

    def save(tmp):
        if not cv2.imwrite(tmp, canvas):
            raise OSError(f'could not write {path}')
    write(path, save)


def inference_times(task, pairs, repeats, workspace):
    """Median seconds per image of each (config, checkpoint), measured alternately."""
    import torch
    if task['package'] == 'mmdet':
        from mmdet.apis import inference_detector as infer, init_detector as init
    else:
        from mmseg.apis import inference_model as infer, init_model as init
    data_root = osp.join(workspace, task['data'][1])
    images = sorted(glob.glob(osp.join(data_root, '**', 'val*', '**', '*.*g'), recursive=True))
    images = [p for p in images if 'gtFine' not in p][:4]
    with trusted_checkpoints(*[ckpt for _, ckpt in pairs]):
        models = [init(cfg, ckpt, device='cpu') for cfg, ckpt in pairs]
    times = [[] for _ in models]
    with torch.no_grad():
        for model in models:  # warm up
            infer(model, images[0])
        for _ in range(repeats):
            for k, model in enumerate(models):
                start = time.perf_counter()
                for img in images:
                    infer(model, img)
                times[k].append((time.perf_counter() - start) / len(images))
    return [statistics.median(t) for t in times]


def run_demo(root: str, task_name: str = 'det', workspace: Optional[str] = None,
             work_dir: Optional[str] = None, cfg_options: Sequence[str] = (),
             repeats: int = 5) -> dict:
    """Train, test, fold and time as the module doc says; returns the metrics by model."""
    task = TASKS[task_name]
    ws = osp.abspath(workspace or root)
    work = osp.abspath(work_dir or osp.join(ws, 'work_dirs', f'demo-{task_name}'))
    config = {name: osp.join(root, task[name]) for name in ('baseline', 'doconv')}
    py = sys.executable
    tools = osp.join(root, 'tools')
    start = time.perf_counter()

    fmt, data_dir = task['data']
    run([py, osp.join(tools, 'make_toy_data.py'), fmt, osp.join(ws, data_dir)], ws)
    test_options = ['--cfg-options', *cfg_options] if cfg_options else []
    dirs, metrics = {}, {}
    for name in ('baseline', 'doconv'):
        dirs[name] = osp.join(work, name)
        print(f'\n== training the {name} ({task[name]})', flush=True)
        run([py, osp.join(tools, 'train.py'), config[name], '--work-dir', dirs[name],
             '--cfg-options', *seed_options(0), *cfg_options], ws, progress)
    for name in ('baseline', 'doconv'):
        print(f'\n== testing the {name}', flush=True)
        out = run([py, osp.join(tools, 'test.py'), config[name], last_checkpoint(dirs[name]),
                   '--work-dir', osp.join(work, f'test-{name}'), *test_options], ws, progress)
        metrics[name] = test_metrics(out)[task['metric']]

    print('\n== folding the DO-Conv checkpoint for release', flush=True)
    release = osp.join(work, 'release', osp.splitext(osp.basename(task['doconv']))[0] + '.pth')
    out = run([py, osp.join(tools, 'fold_ckpt.py'), config['doconv'],
               last_checkpoint(dirs['doconv']), release, '--force'], ws, progress)
    params = [int(n.replace(',', '')) for n in
              re.search(r'parameters ([\d,]+) -> ([\d,]+)', out).groups()]
    deploy = release[:-len('.pth')] + '.py'

    print(f'\n== testing the folded release with stock {task["package"]} (no doconv_mm)',
          flush=True)
    show_dir = osp.join(work, 'show')
    show_options = task.get('show', []) + list(cfg_options)
    out = run([py, '-c', STOCK_TEST, task['package'], deploy, release, '--work-dir',
               osp.join(work, 'test-folded'), '--show-dir', show_dir]
              + (['--cfg-options', *show_options] if show_options else []), ws, progress)
    metrics['folded'] = test_metrics(out)[task['metric']]
    painted = sorted(glob.glob(osp.join(work, 'test-folded', '**', 'show', '**', '*.*g'),
                               recursive=True) + glob.glob(osp.join(show_dir, '**', '*.*g'),
                                                           recursive=True))
    tile(painted, osp.join(work, 'predictions.png'))
    plot_losses({'stock': loss_curve(dirs['baseline']), 'DO-Conv': loss_curve(dirs['doconv'])},
                osp.join(work, 'loss.png'))

    print('\n== timing inference: folded release vs baseline', flush=True)
    t_base, t_folded = inference_times(
        task, [(config['baseline'], last_checkpoint(dirs['baseline'])), (deploy, release)],
        repeats, ws)

    name = task['metric']
    print(f'\n| {task["package"]} on the toy data | value |\n| --- | --- |')
    print(f'| {name}, stock baseline | {metrics["baseline"]} |')
    print(f'| {name}, DO-Conv (whole network) | {metrics["doconv"]} |')
    print(f'| {name}, folded DO-Conv with stock {task["package"]} | {metrics["folded"]} |')
    print(f'| parameters while training / after folding | {params[0] / 1e6:.2f} M / '
          f'{params[1] / 1e6:.2f} M |')
    print(f'| inference per image, folded / baseline (median of {repeats}) | '
          f'{t_folded * 1e3:.0f} ms / {t_base * 1e3:.0f} ms = {t_folded / t_base:.2f}x |')
    print(f'\nWhat this shows: the folded release computes what the DO-Conv model computes, to '
          f'float32 rounding ({name} {metrics["folded"]} = {metrics["doconv"]}), with stock '
          f'{task["package"]} and no doconv_mm, at the stock model\'s size and speed.\n'
          f'What it does not show: whether DO-Conv helps. Stock and DO-Conv are trained once '
          f'each (one seed), from scratch, on a few toy images for minutes: one pair of runs '
          f'cannot tell a config\'s effect on {name} from the spread between seeds. The '
          f'paper\'s protocol (a pretrained backbone, fine-tuned over seeds, compared pairwise) '
          f'is `make study` (tools/study.py); tools/compare.py runs it on real data.')
    print(f'\nwrote {osp.join(work, "predictions.png")} and {osp.join(work, "loss.png")} '
          f'({(time.perf_counter() - start) / 60:.1f} min)')
    if metrics['folded'] != metrics['doconv']:
        raise SystemExit(f'demo: folded {name} {metrics["folded"]} != DO-Conv {metrics["doconv"]}')
    return metrics
