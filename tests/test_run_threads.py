"""The ``run_threads`` harness of tests/conftest.py: what a thread raises is reported, never lost."""
from __future__ import annotations

import threading


def test_results_in_argument_order(run_threads):
    run = run_threads(lambda x: x * x, [3, 1, 2])
    assert run.results == [9, 1, 4] and run.errors == []
    assert run_threads(lambda i: i, 3).results == [0, 1, 2]


def test_an_exception_is_collected_and_aborts_the_barrier(run_threads):
    barrier = threading.Barrier(3, timeout=60)

    def work(i):
        if i == 0:
            raise ValueError("thread 0 failed")
        barrier.wait()   # would wait for thread 0 until the timeout without the abort

    run = run_threads(work, 3, barrier=barrier)
    kinds = sorted(type(e).__name__ for e in run.errors)
    assert kinds == ["BrokenBarrierError", "BrokenBarrierError", "ValueError"]


def test_a_thread_past_the_timeout_is_an_error(run_threads):
    release = threading.Event()
    try:
        run = run_threads(lambda _: release.wait(30), 1, timeout=0.05)
        assert len(run.errors) == 1 and isinstance(run.errors[0], TimeoutError)
    finally:
        release.set()

