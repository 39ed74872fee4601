"""The SQLite store's one writer thread, with two lanes.

Every write goes through one connection on one thread (SQLite has one writer). During a
city-wide fan-out that thread is busy with bulk work — claiming and recording batches of
thousands of SMS, taking in acknowledgements — one job after another. A warning posted then,
and the first stage of its plan and its loudspeaker commands, must not queue behind all of it:
they take the urgent lane, which the thread serves first. A job is never interrupted; urgent
work waits at most for the job in progress (tens of milliseconds).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

URGENT = 0
NORMAL = 1
_STOP = 2


class PriorityWriter(Executor):
    """A one-thread executor serving urgent jobs before normal ones (FIFO within a lane)."""

    def __init__(self, name: str = "tocsin-sqlite-writer") -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._shutdown = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit_with(
        self, priority: int, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("the store's writer is shut down")
            self._queue.put((priority, next(self._order), (future, fn, args, kwargs)))
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.submit_with(NORMAL, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                self._queue.put((_STOP, next(self._order), None))
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while True:
            _priority, _order, item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
