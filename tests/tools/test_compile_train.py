"""tools/train.py with ``compile=True`` (mmengine compiles the model's train step with inductor)
trains the toy DO-Conv detector: one iteration on two images, without validation."""
import math
import re

import torch

from tool_helpers import DO_CFG, run, tool


def test_train_with_torch_compile(workspace):
    work = workspace / 'compiled'
    out = run(tool('train.py', DO_CFG, '--work-dir', str(work), '--cfg-options', 'compile=True',
                   'train_dataloader.batch_size=2', 'train_dataloader.dataset.indices=2',
                   'train_cfg.max_epochs=1', 'train_cfg.val_interval=2',
                   'default_hooks.logger.interval=1'), workspace)
    assert 'Model has been "compiled"' in out
    losses = [float(v) for v in re.findall(r'Epoch\(train\) \[1\]\[1/1\].*? loss: (\S+)', out)]
    assert len(losses) == 1 and math.isfinite(losses[0]), out[-3000:]
    state = torch.load(work / 'epoch_1.pth', weights_only=False)['state_dict']
    D = [v for k, v in state.items() if k.endswith('.D')]
    assert len(D) == 22 and all(torch.isfinite(d).all() for d in D)
    assert any(d.abs().max() > 0 for d in D)  # the step moved D off the identity start
