"""The noise study evaluates the toy detector 16 images at a time (experiments/noise.py,
``EVAL_OPTIONS``): that must predict what the configs' 4 at a time do, bit for bit."""
import pickle

import torch

from experiments.noise import EVAL_OPTIONS
from experiments.study import data_options
from experiments.toy_data import write_coco
from tool_helpers import DO_CFG, KEEP_ALL, run, tool


def predictions(workspace, ckpt, name, options):
    out = workspace / f'{name}.pkl'
    run(tool('test.py', DO_CFG, str(ckpt), '--work-dir', str(workspace / name), '--out', str(out),
             *KEEP_ALL, *data_options('det', 'data/toy_coco_batches'), *options), workspace)
    with open(out, 'rb') as f:
        return {s['img_id']: s['pred_instances'] for s in pickle.load(f)}


def test_the_noise_studys_batch_predicts_what_the_configs_batch_does(workspace, trained):
    """20 validation images: batches of 4 (the configs') against one of 16 and one of 4."""
    write_coco(str(workspace / 'data' / 'toy_coco_batches'), n_train=1, n_val=20,
               size=(128, 128), seed=3)
    ckpt = trained / 'epoch_2.pth'
    by_four = predictions(workspace, ckpt, 'batch4', ['test_dataloader.batch_size=4'])
    batched = predictions(workspace, ckpt, 'batch16', EVAL_OPTIONS['det'])
    assert EVAL_OPTIONS['det'] == ['test_dataloader.batch_size=16'] and len(by_four) == 20
    assert by_four.keys() == batched.keys()
    for img_id, pred in by_four.items():
        assert len(pred['scores']) > 0
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(torch.as_tensor(pred[key]), torch.as_tensor(batched[img_id][key]))
