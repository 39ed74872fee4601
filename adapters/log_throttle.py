"""A warning that a device can trigger many times a second (malformed messages from a fleet,
line noise) logged at most once a second, with how many were dropped since: the journal keeps
the news without drowning in it."""

from __future__ import annotations

import time
from typing import Any

import structlog


class ThrottledWarning:
    """Call it like ``log.warning(**fields)``; the event text is fixed at construction."""

    def __init__(self, logger: structlog.typing.FilteringBoundLogger, event: str) -> None:
        self._log = logger
        self._event = event
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < 1.0:
            self._suppressed += 1
            return
        self._log.warning(self._event, suppressed=self._suppressed, **fields)
        self._last = now
        self._suppressed = 0
