"""The toy detector the tool tests share: its dataset, and one training resumed once."""
import pytest

from experiments.toy_data import write_coco
from tool_helpers import DO_CFG, SMALL, epochs, run, tool


@pytest.fixture(scope='session')
def workspace(tmp_path_factory):
    """A folder holding data/toy_coco (8 train, 4 val images of 128 px), as the configs expect."""
    root = tmp_path_factory.mktemp('tools')
    write_coco(str(root / 'data' / 'toy_coco'), n_train=8, n_val=4, size=(128, 128), seed=1)
    return root


@pytest.fixture(scope='session')
def trained(workspace):
    """Train one epoch, then resume to two; returns the work dir."""
    work = workspace / 'work'
    run(tool('train.py', DO_CFG, '--work-dir', str(work), '--cfg-options', *SMALL, *epochs(1)),
        workspace)
    assert (work / 'epoch_1.pth').is_file()
    out = run(tool('train.py', DO_CFG, '--work-dir', str(work), '--resume', '--cfg-options',
                   *SMALL, *epochs(2)), workspace)
    assert 'resumed epoch: 1' in out
    assert (work / 'epoch_2.pth').is_file()
    return work
