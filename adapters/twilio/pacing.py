"""Keeping to the provider's limits before calling it: one token bucket per sender (a long code
sends about one SMS a second), and the account's concurrent-call slots.

The engine already holds the adapter to the senders' total rate (:meth:`send_rate`), so a batch
normally finds a token at every sender it needs; the pool spreads the batch over them, keeping
each person on the same sender (so their reply goes to the number that texted them)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence


class _Gcra:
    """One sender's pace as a theoretical arrival time (GCRA): a send is allowed when the
    sender's schedule is at most ``burst - 1`` intervals ahead of now."""

    __slots__ = ("_at", "_interval", "_tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._at = 0.0

    def wait(self, now: float) -> float:
        return max(0.0, self._at - self._tolerance - now)

    def take(self, now: float) -> None:
        self._at = max(self._at, now) + self._interval


class SenderPool:
    def __init__(
        self,
        senders: Sequence[str],
        *,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not senders:
            raise ValueError("a sender pool needs at least one sender")
        self.senders = tuple(senders)
        self.rate = rate
        self._clock = clock
        # A burst of one second's sending per sender: a long code that sat idle does not send
        # a minute's worth at once.
        self._pace = [_Gcra(rate, max(1, int(rate))) for _ in self.senders]

    @property
    def total_rate(self) -> float:
        return self.rate * len(self.senders)

    def preferred(self, recipient: str) -> int:
        # A stable hash (not Python's salted one): the same person gets the same sender after
        # a restart too.
        return zlib.crc32(recipient.encode()) % len(self.senders)

    def take(self, recipient: str) -> str | None:
        """A sender with a token now, the recipient's own first; None when every one is spent."""
        first = self.preferred(recipient)
        n = len(self.senders)
        now = self._clock()
        for step in range(n):
            index = (first + step) % n
            pace = self._pace[index]
            if pace.wait(now) == 0.0:
                pace.take(now)
                return self.senders[index]
        return None

    def seconds_until_free(self) -> float:
        now = self._clock()
        return min(pace.wait(now) for pace in self._pace)


class CallSlots:
    """Calls in progress, by call SID. A slot is freed by the call's final status callback, or
    after ``timeout`` when that never arrives (a lost callback must not shrink the account's
    capacity for ever)."""

    def __init__(
        self, limit: int, *, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._timeout = timeout
        self._clock = clock
        self._held: dict[str, float] = {}
        self._reserved = 0

    def _expire(self) -> None:
        # Held in start order, so the expired ones are at the front: stop at the first live
        # one (constant time per call, not a scan of every call in progress).
        now = self._clock()
        expired = []
        for sid, at in self._held.items():
            if now - at <= self._timeout:
                break
            expired.append(sid)
        for sid in expired:
            del self._held[sid]

    @property
    def in_use(self) -> int:
        self._expire()
        return len(self._held) + self._reserved

    def free(self) -> int:
        return max(0, self.limit - self.in_use)

    def reserve(self) -> bool:
        """Hold a slot for a call about to be created."""
        if self.free() <= 0:
            return False
        self._reserved += 1
        return True

    def started(self, sid: str | None) -> None:
        """The reserved slot's call was created (``sid``) or not (None: the slot is free)."""
        self._reserved -= 1
        if sid is not None:
            self._held[sid] = self._clock()

    def ended(self, sid: str) -> None:
        self._held.pop(sid, None)
