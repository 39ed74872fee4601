"""The store's writer thread: urgent jobs overtake queued normal ones, order holds within a
lane, errors reach the caller, and shutdown lets queued work finish."""

from __future__ import annotations

import threading

import pytest

from dispatcher.store.sqlite_writer import NORMAL, URGENT, PriorityWriter


def test_urgent_jobs_overtake_queued_normal_jobs() -> None:
    writer = PriorityWriter()
    gate = threading.Event()
    done: list[str] = []
    try:
        blocker = writer.submit(gate.wait)  # keeps the thread busy while the queue fills
        normal = [writer.submit_with(NORMAL, done.append, f"n{i}") for i in range(3)]
        urgent = [writer.submit_with(URGENT, done.append, f"u{i}") for i in range(2)]
        gate.set()
        for future in [blocker, *normal, *urgent]:
            future.result(timeout=5)
    finally:
        writer.shutdown()
    assert done == ["u0", "u1", "n0", "n1", "n2"]


def test_errors_reach_the_caller_and_the_thread_goes_on() -> None:
    writer = PriorityWriter()
    try:
        failing = writer.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=5)
        assert writer.submit(lambda: 42).result(timeout=5) == 42
    finally:
        writer.shutdown()


def test_shutdown_finishes_queued_work_then_refuses_more() -> None:
    writer = PriorityWriter()
    gate = threading.Event()
    writer.submit(gate.wait)
    queued = writer.submit(lambda: "ran")
    gate.set()
    writer.shutdown(wait=True)
    assert queued.result(timeout=0) == "ran"
    with pytest.raises(RuntimeError, match="shut down"):
        writer.submit(lambda: None)
