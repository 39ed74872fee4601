"""Waiting in tests for something to happen: poll a condition (sync or async) until it holds,
with a deadline that fails the test naming what it waited for — never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def wait_until(
    predicate: Callable[[], Any],
    *,
    within: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)
