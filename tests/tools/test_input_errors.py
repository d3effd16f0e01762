"""Every tool answers a missing or unreadable input, and a flag this machine cannot honour, in one
line on stderr (``TOOL: error: ...``, naming the argument and the path) and exit status 1."""
import os
import subprocess

import pytest
import torch

from experiments.toy_data import write_coco
from tool_helpers import DO_CFG, STOCK_CFG, tool


def one_line_error(args, cwd):
    """Run ``args``; assert exit status 1 with exactly one line on stderr; return that line.
    (Python warnings are off: the OpenMMLab packages warn about ``pkg_resources`` on import.)"""
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    return lines[0]


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A tiny toy COCO set, a checkpoint file and a truncated copy of it, a config that does not
    parse and a folder where a config should be."""
    root = tmp_path_factory.mktemp('input_errors')
    write_coco(str(root / 'data' / 'toy_coco'), n_train=2, n_val=1, size=(64, 64), seed=0)
    ckpt = root / 'stock.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, ckpt)
    (root / 'truncated.pth').write_bytes(ckpt.read_bytes()[:40])
    (root / 'broken.py').write_text('model = dict(type=\n')
    (root / 'folder.py').mkdir()
    return root


CASES = {
    'train.py missing config': ('train.py', ['{root}/nope.py'],
                                "config '{root}/nope.py' not found"),
    'train.py unparsable config': ('train.py', ['{root}/broken.py'],
                                   "cannot read config '{root}/broken.py' (SyntaxError"),
    'train.py folder as config': ('train.py', ['{root}/folder.py'],
                                  "config '{root}/folder.py' is not a file"),
    'train.py missing --resume': ('train.py', [DO_CFG, '--work-dir', '{root}/w', '--resume',
                                               '{root}/nope.pth'],
                                  "--resume '{root}/nope.pth' not found"),
    'test.py missing config': ('test.py', ['{root}/nope.py', '{root}/stock.pth'],
                               "config '{root}/nope.py' not found"),
    'test.py missing checkpoint': ('test.py', [STOCK_CFG, '{root}/nope.pth'],
                                   "checkpoint '{root}/nope.pth' not found"),
    'test.py truncated checkpoint': ('test.py', [STOCK_CFG, '{root}/truncated.pth', '--work-dir',
                                                 '{root}/t'],
                                     "cannot read checkpoint '{root}/truncated.pth' ("),
    'fold_ckpt.py missing config': ('fold_ckpt.py', ['{root}/nope.py', '{root}/stock.pth',
                                                     '{root}/out.pth'],
                                    "CONFIG '{root}/nope.py' not found"),
    'compare.py missing config': ('compare.py', [STOCK_CFG, '{root}/nope.py', '--work-dir',
                                                 '{root}/c'],
                                  "config '{root}/nope.py' not found"),
}


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_is_one_line_and_exit_1(case, files):
    name, args, message = CASES[case]
    line = one_line_error(tool(name, *[a.format(root=files) for a in args]), files)
    assert line.startswith(f'{name}: error: ') and message.format(root=files) in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks a machine without a GPU')
def test_amp_without_a_gpu_names_the_flag(files):
    """mmengine's AmpOptimWrapper asserts a GPU when the runner builds it; the tool says so
    before any work, and what to do."""
    line = one_line_error(tool('train.py', DO_CFG, '--amp', '--work-dir', str(files / 'amp')),
                          files)
    assert line.startswith('train.py: error: --amp:') and 'train without --amp' in line, line
    assert not (files / 'amp').exists()
