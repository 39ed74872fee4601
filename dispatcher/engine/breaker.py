"""Circuit breaker: an adapter instance that keeps failing is paused, then probed."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    #: Paused: nothing is sent until ``reopen_at``.
    OPEN = "open"
    #: After the pause: one batch is let through; its result closes or reopens the breaker.
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, *, failures: int, pause: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.pause = pause
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.pause:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def seconds_until_probe(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.pause - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether a batch may be sent now (in half-open state, only one at a time)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._probing

    def started(self) -> None:
        """A batch was let through (marks the half-open probe as under way)."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> bool:
        """Record a failed batch; True when this opened (or reopened) the breaker."""
        self._consecutive += 1
        if self.state is BreakerState.HALF_OPEN or self._consecutive >= self.threshold:
            self._opened_at = self._clock()
            self._probing = False
            return True
        return False
