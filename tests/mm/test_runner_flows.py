"""DO-Conv through OpenMMLab's own runners, hooks and tools, against plain convolutions with the
same weights: EMAHook across train / val / test in one process, mmdet's MeanTeacherHook, gradient
checkpointing in the ResNet backbone, and mmengine's FLOP counter."""
import copy
import functools

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from doconv_mm import DOConv2d, fold_model
from layer_helpers import rel_err
from mm_helpers import build_model, project_config

TOL = 1e-5  # float32 DO-Conv against the float64-folded plain convolutions


def body(conv_type):
    cfg = dict(type=conv_type)
    return nn.Sequential(build_conv_layer(cfg, 3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         build_conv_layer(cfg, 8, 4, 3, padding=1))


class TinyNet(BaseModel):
    """A regressor of the per-channel mean of its 4-channel output; ``predict`` gives the map."""

    def __init__(self, conv_type):
        super().__init__()
        torch.manual_seed(0)
        self.body = body(conv_type)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.body(inputs)
        if mode == 'loss':
            return dict(loss=(out.mean((2, 3)) - labels).square().mean())
        return out


class Toy(Dataset):
    def __init__(self, n=12):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 4, generator=g)
        self.metainfo = {}

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


class Count(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.append(len(data_samples))

    def compute_metrics(self, results):
        return dict(n=sum(results))


class CompareWithPlain(Hook):
    """After every val / test iteration: the outputs against the model's weights as they are at
    that moment, folded into plain convolutions (float64 kernels)."""

    def __init__(self):
        self.errs = {'val': [], 'test': []}

    def _check(self, runner, data_batch, outputs, stage):
        model = runner.model
        data = model.data_preprocessor(data_batch, False)
        plain = fold_model(copy.deepcopy(model))
        with torch.no_grad():
            ref = plain(**data, mode='predict')
        assert not any(isinstance(m, DOConv2d) and m.D is not None for m in plain.modules())
        self.errs[stage].append(rel_err(outputs, ref))

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._check(runner, data_batch, outputs, 'val')

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._check(runner, data_batch, outputs, 'test')


def loader():
    return dict(dataset=Toy(), batch_size=4, collate_fn=dict(type='default_collate'),
                sampler=dict(type='DefaultSampler', shuffle=False))


def runner(tmp_path, conv_type, train_cfg, check):
    return Runner(model=TinyNet(conv_type), work_dir=str(tmp_path), train_dataloader=loader(),
                  val_dataloader=loader(), test_dataloader=loader(),
                  val_evaluator=Evaluator(Count()), test_evaluator=Evaluator(Count()),
                  train_cfg=train_cfg, val_cfg=dict(), test_cfg=dict(),
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5, momentum=0.9)),
                  custom_hooks=[dict(type='EMAHook', momentum=0.3), check],
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=100)),
                  log_level='WARNING')


EPOCHS = dict(by_epoch=True, max_epochs=2, val_interval=1)
SEQUENCES = {
    'epochs: train (val every epoch), test': (EPOCHS, ['train', 'test']),
    'epochs: train, val, test': (EPOCHS, ['train', 'val', 'test']),
    'epochs: val_interval beyond the last epoch, test':
    (dict(EPOCHS, val_interval=3), ['train', 'test']),
    'iterations: train (val every 3), test':
    (dict(by_epoch=False, max_iters=6, val_interval=3), ['train', 'test']),
    'test, test': (EPOCHS, ['test', 'test']),
}


@pytest.mark.parametrize('sequence', list(SEQUENCES))
@pytest.mark.parametrize('conv_type', ['DOConv', 'Conv2d'])
def test_ema_sequences_evaluate_the_weights_in_use(sequence, conv_type, tmp_path):
    """EMAHook swaps weights through ``.data`` (no version bump) around every val and test; every
    evaluated batch must be what plain convs with the weights in use give."""
    train_cfg, calls = SEQUENCES[sequence]
    check = CompareWithPlain()
    r = runner(tmp_path, conv_type, train_cfg, check)
    for call in calls:
        getattr(r, call)()
    assert check.errs['test'], 'the test loop ran no batch'
    length = train_cfg.get('max_epochs', train_cfg.get('max_iters'))
    if 'val' in calls or ('train' in calls and train_cfg['val_interval'] <= length):
        assert check.errs['val'], 'the val loop ran no batch'
    assert max(check.errs['val'] + check.errs['test']) < TOL, check.errs


class TeacherStudent(BaseModel):
    """mmdet's semi-supervised layout (SemiBaseDetector): a frozen teacher updated by
    MeanTeacherHook through ``.data``, predicting under no_grad inside the student's loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.student, self.teacher = body('DOConv'), body('DOConv')
        self.teacher.eval().requires_grad_(False)
        self.errs = []

    def forward(self, inputs, labels=None, mode='tensor'):
        with torch.no_grad():
            t = self.teacher(inputs)
            self.errs.append(rel_err(t, fold_model(copy.deepcopy(self.teacher))(inputs)))
        if mode == 'loss':
            s = self.student(inputs)
            return dict(loss=(s - t).square().mean() + (s.mean((2, 3)) - labels).square().mean())
        return t


@pytest.mark.parametrize('by_epoch', [True, False])
def test_mean_teacher_hook_predicts_with_the_updated_teacher(by_epoch, tmp_path):
    from mmdet.engine.hooks import MeanTeacherHook
    train_cfg = dict(by_epoch=True, max_epochs=2) if by_epoch else \
        dict(by_epoch=False, max_iters=6)
    model = TeacherStudent()
    Runner(model=model, work_dir=str(tmp_path), train_dataloader=loader(), train_cfg=train_cfg,
           optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5, momentum=0.9)),
           custom_hooks=[MeanTeacherHook(momentum=0.5)],
           default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=100)),
           log_level='WARNING').train()
    assert len(model.errs) == 6 and max(model.errs) < TOL, model.errs


def toy_detector(with_cp):
    from mmdet.testing import demo_mm_inputs
    cfg = project_config('configs/demo/faster-rcnn_r18_fpn_doconv-all_toy-coco.py')
    cfg.model.backbone.with_cp = with_cp
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # D as after training
        for m in model.modules():
            if isinstance(m, DOConv2d) and m.D is not None:
                m.D.copy_(0.1 * torch.randn(m.D.shape, generator=g))
    torch.manual_seed(0)
    data = model.data_preprocessor(
        demo_mm_inputs(2, [[3, 128, 128]] * 2, num_items=[3, 2], num_classes=3), True)
    return model, data


def test_gradient_checkpointing_gives_the_gradients_of_a_plain_backward():
    """Reentrant checkpointing runs the first forward without grad and recomputes it in backward:
    both must compose the same kernel, or the discrete choices downstream (proposals, sampling)
    see two different forwards."""
    grads = []
    for with_cp in (False, True):
        model, data = toy_detector(with_cp)
        model.train()
        torch.manual_seed(1)  # the RoI sampler's draws
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    errs = {n: rel_err(grads[1][n], g) for n, g in grads[0].items()}
    assert max(errs.values()) < TOL, sorted(errs.items(), key=lambda kv: -kv[1])[:5]


def composition_flops(model, data):
    """What composing the DO-Conv kernels costs in one forward, in multiply-adds:
    C_out * C_in/groups * MN * D_mul per layer call (the RPN's conv runs once per FPN level)."""
    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append(m))
             for m in model.modules() if isinstance(m, DOConv2d) and m.D is not None]
    with torch.no_grad():
        model(data['inputs'], data['data_samples'], mode='tensor')
    for h in hooks:
        h.remove()
    return sum(m.weight.numel() * m.D_mul for m in calls)


def flops(model, data, grad):
    """mmengine's counter as mmdet's tools/analysis_tools/get_flops.py runs it."""
    from mmengine.analysis import get_model_complexity_info
    model = copy.copy(model)
    model.forward = functools.partial(model.forward, data_samples=data['data_samples'])
    with torch.set_grad_enabled(grad):
        return get_model_complexity_info(model, inputs=data['inputs'], show_table=False,
                                         show_arch=False)['flops']


def test_flops_count_every_convolution_with_and_without_grad():
    """DO-Conv's FLOPs are the plain network's with the same weights (the folded model: the same
    proposals, so the same RoI head work) plus the composition, with gradients enabled and
    disabled, and again after an evaluation forward."""
    from mmdet.testing import demo_mm_inputs
    do, _ = toy_detector(False)
    do.eval()
    plain = fold_model(copy.deepcopy(do))
    data = do.data_preprocessor(
        demo_mm_inputs(1, [[3, 128, 128]], num_items=[2], num_classes=3), False)
    base = flops(plain, data, grad=True)
    assert flops(plain, data, grad=False) == base
    fresh = flops(do, data, grad=True)
    assert flops(do, data, grad=False) == fresh  # fresh, with and without gradients
    composition = composition_flops(do, data)
    # mmengine counts the composition's batched matmul exactly
    assert fresh - base == composition
    assert flops(do, data, grad=False) == fresh == flops(do, data, grad=True)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason='the gloo setup is for machines without a GPU')
def test_cpu_process_group_closes_after_the_runner_is_freed(monkeypatch):
    """setup_distributed frees what the block left in reference cycles (a runner and its DDP
    wrapper) while its gloo group is alive, then closes the group: nothing of the group is left to
    interpreter exit, where freeing it can abort the process."""
    import gc
    import socket
    import weakref

    import torch.distributed as dist
    from mmengine.config import Config

    from doconv_mm.mm.runtime import setup_distributed

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    cfg = Config(dict(model=dict(type='Net', norm_cfg=dict(type='SyncBN'))))
    gc.disable()  # no collection but the one under test
    try:
        with setup_distributed(cfg, 'pytorch'):
            assert dist.is_initialized() and dist.get_backend() == 'gloo'
            ddp = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
            ddp(torch.ones(1, 2)).sum().backward()
            ddp.cycle = [ddp]
            freed = weakref.ref(ddp)
            del ddp
            assert freed() is not None  # only a collection frees a cycle
        assert freed() is None and not dist.is_initialized()
    finally:
        gc.enable()
    assert cfg.model.norm_cfg.type == 'BN' and cfg.model_wrapper_cfg.device_ids is None
