"""tools/make_toy_data.py: writes a dataset whole or not at all, and keeps an existing one."""
import os
import subprocess
import sys

from tool_helpers import ROOT


def test_make_toy_data_keeps_existing_and_leaves_no_partial_folder(tmp_path):
    tool = [sys.executable, os.path.join(ROOT, 'tools', 'make_toy_data.py')]
    out = tmp_path / 'voc'
    subprocess.run(tool + ['voc', str(out), '--num-train', '2', '--num-val', '1'], check=True)
    assert len(os.listdir(out / 'JPEGImages')) == 3
    (out / 'marker').write_text('mine')
    proc = subprocess.run(tool + ['voc', str(out)], capture_output=True, text=True, check=True)
    assert 'kept as it is' in proc.stdout and (out / 'marker').read_text() == 'mine'
    assert sorted(os.listdir(tmp_path)) == ['voc']
