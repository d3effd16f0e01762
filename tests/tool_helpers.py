"""Helpers for the tests that run the command-line tools: commands, their output, toy configs."""
import hashlib
import json
import os.path as osp
import re
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DO_CFG = osp.join(ROOT, 'configs/demo/faster-rcnn_r18_fpn_doconv-all_toy-coco.py')
STOCK_CFG = osp.join(ROOT, 'configs/demo/faster-rcnn_r18_fpn_toy-coco.py')
SMALL = ['train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
         'default_hooks.checkpoint.interval=1']
# a model trained for seconds scores low: keep every box, so the metric is never empty
KEEP_ALL = ['--cfg-options', 'model.test_cfg.rcnn.score_thr=0.0']
# mmdet's own test.py, run where importing doconv_mm fails
STOCK_TEST = ("import sys, runpy, os.path as osp, mmdet; sys.modules['doconv_mm'] = None; "
              "sys.argv = ['test.py'] + sys.argv[1:]; "
              "runpy.run_path(osp.join(osp.dirname(mmdet.__file__), '.mim/tools/test.py'), "
              "run_name='__main__')")


def run(args, cwd, expect=0):
    """Run ``args`` in ``cwd``; assert its exit status; returns stdout and stderr together."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, out[-4000:]
    return out


def tool(name, *args):
    return [sys.executable, osp.join(ROOT, 'tools', name), *args]


def torchrun(name, *args):
    """``tools/<name>`` in 2 CPU processes under torchrun, on a free port."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
            f'--master_port={port}', osp.join(ROOT, 'tools', name), *args, '--launcher', 'pytorch']


def epochs(n):
    return [f'train_cfg.max_epochs={n}', f'train_cfg.val_interval={n}']


def bbox_map(out):
    """The 'bbox_mAP_copypaste' figures a COCO evaluation prints (the last one)."""
    return re.findall(r'bbox_mAP_copypaste: ([-\d. ]+)', out)[-1].strip()


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def run_benchmark(tmp_path, *args, timeout=300):
    """tools/benchmark.py with ``args`` and --json: its output and the JSON it wrote."""
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools/benchmark.py'), *args,
                           '--json', str(out)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())
