"""DO-Conv layers against ``nn.Conv2d`` and against the naive composition, side by side
(``tools/benchmark.py --layers``); needs torch only.

The naive layer is the simplest DO-Conv a user could write, as the DO-Conv authors' PyTorch layer
does it: the kernel composed by one einsum on every forward (in evaluation too), autograd keeping
that kernel for the backward pass. It shares the DOConv2d's parameters, so all three compute the
same thing. Evaluation is in eval mode without gradients. In each of several fresh processes
every figure is the median of alternating runs (stock, ours, naive in turn); the figure reported
is the median over the processes, with the range over them (a process's allocator and thread
placement move some figures by more than the runs within one process vary).

Memory is what a training forward leaves saved for its backward pass beyond the input and the
parameters (which every variant keeps), counted by ``saved_tensors_hooks``: 0 for ``nn.Conv2d``.
The composition is timed alone as the layer runs it, forward and in a training step (``K``
composed, then its gradients by autograd), beside the naive layer's einsum. Its floor is the
larger of the arithmetic (``2 C_out C_in/groups MN D_mul`` flops per composition or gradient, at
this machine's float32 matmul rate, measured on a 1024^3 matmul in the same run) and the memory
traffic (in kernel-sized copies timed in the same alternation: 1 for a composition, 1.5 for each
of the two gradients).
"""
import functools
import platform
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from doconv_mm.core import DOConv2d, do_conv_kernel
from .timing import alternate, in_fresh_process, median_over, range_over

# (in, out, groups, feature size): ResNet 3x3 convs per stage, DeepLabv3's ASPP (2048 -> 512),
# a ResNeXt grouped conv and a depthwise one
SHAPES = [(64, 64, 1, 64), (256, 256, 1, 16), (512, 512, 1, 8), (2048, 512, 1, 32),
          (256, 256, 32, 16), (256, 256, 256, 32)]
BATCH = 2


def naive_kernel(weight: Tensor, D: Tensor, W_extra: Optional[Tensor] = None) -> Tensor:
    """The kernel by one einsum over ``D + I`` and ``W = [weight | W_extra]``; autograd backward."""
    c_out, c_in_g, kh, kw = weight.shape
    mn, groups = kh * kw, D.shape[0] // c_in_g
    W = weight.reshape(c_out, c_in_g, mn)
    if W_extra is not None:
        W = torch.cat([W, W_extra], 2)
    DI = D + torch.eye(mn, D.shape[2], dtype=D.dtype, device=D.device)
    K = torch.einsum('gims,gois->goim', DI.view(groups, c_in_g, mn, -1),
                     W.view(groups, c_out // groups, c_in_g, -1))
    return K.reshape(weight.shape)


class NaiveDOConv2d(nn.Module):
    """The naive DO-Conv (see module doc) on the parameters of ``layer`` (zero padding only)."""

    def __init__(self, layer: DOConv2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        m = self.layer
        return F.conv2d(x, naive_kernel(m.weight, m.D, m.W_extra), m.bias, m.stride, m.padding,
                        m.dilation, m.groups)


def saved_bytes(module: nn.Module, x: Tensor) -> int:
    """Bytes a training forward of ``module`` saves for backward, beyond ``x`` and parameters."""
    own = {t.data_ptr() for t in (x, *module.parameters())}
    seen = {}

    def pack(t):
        if t.data_ptr() not in own:
            seen[t.data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum().backward()
    return sum(seen.values())


def matmul_gflops(repeats: int) -> float:
    """This machine's float32 matmul rate on a 1024^3 product, in GFLOP/s."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 / alternate([lambda: a @ b], repeats)[0] / 1e9


VARIANTS = ('stock', 'ours', 'naive')


def make_layers(c_in: int, c_out: int, groups: int, size: int):
    """``nn.Conv2d`` and a DOConv2d computing the same layer with a trained-like ``D`` (no
    shortcut may rely on D = 0), and an input that needs a gradient."""
    torch.manual_seed(0)
    stock = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups)
    ours = DOConv2d(c_in, c_out, 3, padding=1, groups=groups)
    with torch.no_grad():
        ours.weight.copy_(stock.weight)
        ours.bias.copy_(stock.bias)
        ours.D.normal_(0, 0.05)
    return stock, ours, torch.randn(BATCH, c_in, size, size, requires_grad=True)


def shape_name(c_in: int, c_out: int, groups: int, size: int) -> str:
    return f'{c_in}->{c_out}' + (f' g={groups}' if groups > 1 else '') + f' {size}x{size}'


def training_step(m: nn.Module, x: Tensor) -> Callable:
    def step():
        m.train()
        m(x).sum().backward()
    return step


def bench_shape(c_in: int, c_out: int, groups: int, size: int, repeats: int, gflops: float) -> dict:
    """One shape: each variant's training step, training forward and evaluation, the composition
    alone (ours, naive) and the bytes saved for backward. The input needs a gradient, as for every
    layer but a network's first."""
    stock, ours, x = make_layers(c_in, c_out, groups, size)
    layers = (stock, ours, NaiveDOConv2d(ours))
    train_step = functools.partial(training_step, x=x)

    def forward(m):
        def fwd():
            m.train()
            m(x)
        return fwd

    def infer(m):
        m.eval()

        def fwd():
            with torch.no_grad():
                m(x)
        return fwd

    row = dict(shape=shape_name(c_in, c_out, groups, size))
    for what, make in (('train', train_step), ('fwd', forward), ('eval', infer)):
        times = alternate([make(m) for m in layers], repeats)
        row[f'stock_{what}_ms'] = times[0] * 1e3
        row[what] = {name: t / times[0] for name, t in zip(VARIANTS[1:], times[1:])}
    w, D = ours.weight.detach(), ours.D.detach()
    G, copy_buf = torch.randn_like(w), torch.empty_like(w)
    w_leaf, D_leaf = w.detach().requires_grad_(), D.detach().requires_grad_()
    with torch.no_grad():
        comp = alternate([lambda: do_conv_kernel(w, D), lambda: naive_kernel(w, D),
                          lambda: copy_buf.copy_(w)], repeats)
    leaves = [w_leaf, D_leaf]
    comp_step = alternate([lambda: torch.autograd.grad(do_conv_kernel(*leaves), leaves, G),
                           lambda: torch.autograd.grad(naive_kernel(*leaves), leaves, G)],
                          repeats)
    flops = 2 * c_out * (c_in // groups) * 9 * ours.D_mul
    # floors: the multiply-adds at the matmul rate, or the memory traffic, in kernel-sized copies
    # (read one kernel-sized tensor, write one): forward, read W and write K = 1; a training
    # step, the composition (1) and the two gradients (read dL/dK and W, write dW: 1.5; read
    # dL/dK and W: 1), at 3 times the forward's arithmetic
    floor = max(flops / gflops / 1e9, comp[2])
    floor_step = max(3 * flops / gflops / 1e9, 3.5 * comp[2])
    row.update(compose_ms=[comp[0] * 1e3, comp[1] * 1e3, floor * 1e3],
               compose_step_ms=[comp_step[0] * 1e3, comp_step[1] * 1e3, floor_step * 1e3],
               floor_arith_ms=flops / gflops / 1e6, copy_ms=comp[2] * 1e3,
               saved_mb={name: saved_bytes(m, x) / 2**20 for name, m in zip(VARIANTS, layers)})
    return row


def _machine() -> str:
    return (f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, '
            f'torch {torch.__version__}')


def measure(repeats: int, shapes: Sequence[tuple]) -> dict:
    """One process's figures for every shape (see :func:`run`)."""
    gflops = matmul_gflops(repeats)
    return dict(machine=_machine(), matmul_gflops=gflops, repeats=repeats,
                layers=[bench_shape(*shape, repeats, gflops) for shape in shapes])


def run(repeats: int = 9, shapes=SHAPES, processes: int = 5) -> dict:
    """Every shape's figures, measured in ``processes`` fresh processes one after the other: each
    figure is the median over the processes of each process's median; ``spread`` holds each
    figure's ``[lowest, highest]`` over the processes, and ``per_process`` every process's own
    figures."""
    if processes < 1:
        raise ValueError(f'processes={processes}: need at least one')
    per_process = [in_fresh_process(measure, repeats, list(shapes)) for _ in range(processes)]
    result = median_over(per_process)
    result.update(repeats=repeats, processes=processes, spread=range_over(per_process),
                  per_process=per_process)
    return result


def _fig(value: float, spread, digits: int = 2) -> str:
    """``value`` with its range over processes, where there were several."""
    text, low, high = (f'{x:.{digits}f}' for x in (value, *spread))
    return text if low == high else f'{text} ({low}-{high})'


def _header(result: dict) -> str:
    return (f"medians over {result['processes']} fresh processes of each process's median of "
            f"{result['repeats']} alternating runs, (lowest-highest) over the processes")


def markdown(result: dict) -> str:
    names = VARIANTS[1:]
    lines = [f"Machine: {result['machine']}; float32 matmul {result['matmul_gflops']:.0f} GFLOP/s; "
             f"{_header(result)}; batch {BATCH}, 3x3, D_mul = 9, input with gradient.", '',
             '| layer | | stock | ' + ' | '.join(f'{n} ÷ stock' for n in names) + ' |',
             '| --- | --- | --- | ' + ' | '.join('---' for _ in names) + ' |']
    for r, s in zip(result['layers'], result['spread']['layers']):
        for what, label in (('train', 'fwd+bwd'), ('fwd', 'training fwd'), ('eval', 'eval')):
            key = f'stock_{what}_ms'
            lines.append(f"| {r['shape']} | {label} | {_fig(r[key], s[key])} ms | "
                         + ' | '.join(_fig(r[what][n], s[what][n]) for n in names) + ' |')
    lines += ['', '| layer | composition, forward ms: ours / naive / floor | composition, training '
              'step ms: ours / naive / floor | saved for backward MB: ' + ' / '.join(VARIANTS)
              + ' |',
              '| --- | --- | --- | --- |']
    for r, s in zip(result['layers'], result['spread']['layers']):
        lines.append(f"| {r['shape']} | "
                     + ' / '.join(_fig(t, lh) for t, lh in zip(r['compose_ms'], s['compose_ms']))
                     + ' | ' + ' / '.join(_fig(t, lh) for t, lh in zip(r['compose_step_ms'],
                                                                       s['compose_step_ms']))
                     + ' | ' + ' / '.join(_fig(r['saved_mb'][n], s['saved_mb'][n], 1)
                                          for n in VARIANTS) + ' |')
    return '\n'.join(lines)
