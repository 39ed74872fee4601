"""Token bucket: an adapter instance's sends per second, enforced before calling it."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate: float | None, burst: int | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: None: unlimited.
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate or 1)))
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def available(self, wanted: int) -> int:
        """How many of ``wanted`` sends may go now (without taking them)."""
        if self.rate is None:
            return wanted
        self._refill()
        return min(wanted, int(self._tokens))

    def take(self, n: int) -> None:
        if self.rate is None:
            return
        self._refill()
        self._tokens -= n

    def give_back(self, n: int) -> None:
        """Return tokens taken for sends that did not happen."""
        if self.rate is None:
            return
        self._tokens = min(self.burst, self._tokens + n)

    def seconds_until(self, n: int = 1) -> float:
        """How long until ``n`` tokens are there (0 when they are)."""
        if self.rate is None:
            return 0.0
        self._refill()
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate
