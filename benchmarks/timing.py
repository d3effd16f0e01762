"""Timing helpers of the benchmarks: alternating runs in one process, work in a fresh process,
and figures combined over processes."""
import multiprocessing as mp
import queue as queue_module
import statistics
import time
from typing import Any, Callable, List, Optional, Sequence


def alternate_runs(fns: Sequence[Callable], repeats: int, warmup: int = 1,
                   sync: Optional[Callable] = None) -> List[List[float]]:
    """Seconds of every run of each function, called in turn ``repeats`` times after ``warmup``;
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each timer reads, so that work
    queued on a device is counted in the run that queued it."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - start)
    return times


def alternate(fns: Sequence[Callable], repeats: int, warmup: int = 1,
              sync: Optional[Callable] = None) -> List[float]:
    """Median seconds of each function over :func:`alternate_runs`."""
    return [statistics.median(t) for t in alternate_runs(fns, repeats, warmup, sync)]


def _call(results, fn, args):
    results.put(fn(*args))


def in_fresh_process(fn: Callable, *args) -> Any:
    """``fn(*args)`` in a new interpreter (spawned: nothing inherited from this process's allocator,
    caches or threads); returns its result. ``fn`` must be importable by name."""
    ctx = mp.get_context('spawn')
    results = ctx.Queue()
    proc = ctx.Process(target=_call, args=(results, fn, args))
    proc.start()
    try:
        while True:
            try:
                return results.get(timeout=1)
            except queue_module.Empty:
                if not proc.is_alive() and results.empty():
                    raise RuntimeError(f'{fn.__name__}{args} in a fresh process failed '
                                       f'(exit {proc.exitcode})')
    finally:
        proc.join()


def _combine(values: list, leaf: Callable[[list], Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {k: _combine([v[k] for v in values], leaf) for k in first}
    if isinstance(first, (list, tuple)):
        return [_combine(list(column), leaf) for column in zip(*values)]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return leaf(values)
    return first  # names and other labels: the same in every process


def median_over(results: Sequence[Any]) -> Any:
    """Every number of ``results`` (one nested structure of dicts and lists per process) replaced
    by its median over the processes; labels are kept."""
    return _combine(list(results), statistics.median)


def range_over(results: Sequence[Any]) -> Any:
    """Every number of ``results`` replaced by ``[lowest, highest]`` over the processes."""
    return _combine(list(results), lambda v: [min(v), max(v)])
