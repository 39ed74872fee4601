"""Exponential backoff with jitter, honouring a provider's Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the try after ``attempt`` (1 = the first try failed).

        ``base × 2^(attempt-1)`` capped at ``cap``, then jittered to between half and all of
        it so a burst of failures does not retry in lockstep; never sooner than
        ``retry_after`` (which may exceed the cap: the provider knows best).
        """
        exponent = min(max(attempt - 1, 0), 30)
        ceiling = min(self.cap, self.base * float(2**exponent))
        jittered: float = ceiling * (0.5 + 0.5 * self.rng.random())
        if retry_after is not None:
            return max(jittered, float(retry_after))
        return jittered
