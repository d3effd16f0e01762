"""The benchmarks' timing helpers: figures combined over processes, work in a fresh process."""
import os

from benchmarks.timing import alternate, alternate_runs, in_fresh_process, median_over, range_over


def test_figures_combine_over_processes():
    runs = [dict(shape='a', ms=[3.0, 10.0], ratio=dict(ours=1.2)),
            dict(shape='a', ms=[1.0, 30.0], ratio=dict(ours=1.0)),
            dict(shape='a', ms=[2.0, 20.0], ratio=dict(ours=1.4))]
    assert median_over(runs) == dict(shape='a', ms=[2.0, 20.0], ratio=dict(ours=1.2))
    assert range_over(runs) == dict(shape='a', ms=[[1.0, 3.0], [10.0, 30.0]],
                                    ratio=dict(ours=[1.0, 1.4]))


def test_in_fresh_process_runs_elsewhere_and_returns_the_result():
    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(divmod, 7, 2) == (3, 1)


def test_alternate_calls_in_turn():
    calls = []
    times = alternate([lambda: calls.append('a'), lambda: calls.append('b')], repeats=2, warmup=1)
    assert calls == ['a', 'b'] * 3 and len(times) == 2 and all(t >= 0 for t in times)


def test_alternate_runs_in_turn_and_syncs_around_every_timed_run():
    calls = []
    runs = alternate_runs([lambda: calls.append('a'), lambda: calls.append('b')], 3, warmup=1,
                          sync=lambda: calls.append('sync'))
    assert calls == ['a', 'b'] + ['sync', 'a', 'sync', 'sync', 'b', 'sync'] * 3
    assert [len(r) for r in runs] == [3, 3] and all(t >= 0 for r in runs for t in r)
