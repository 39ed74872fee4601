"""Backoff, token bucket and circuit breaker, each with an injected clock or random source."""

from __future__ import annotations

import random

import pytest

from dispatcher.adapter import Accepted, Failed, Retry, check_outcomes
from dispatcher.engine.backoff import Backoff
from dispatcher.engine.breaker import BreakerState, CircuitBreaker
from dispatcher.engine.rate_limit import TokenBucket
from engine.harness import MaxRandom


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MinRandom(random.Random):
    def random(self) -> float:
        return 0.0


# -- backoff ----------------------------------------------------------------------------------
def test_backoff_doubles_from_the_base_until_the_cap() -> None:
    b = Backoff(base=1.0, cap=10.0, rng=MaxRandom())
    assert [b.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_never_overflows_on_huge_attempts() -> None:
    b = Backoff(base=1.0, cap=10.0, rng=MaxRandom())
    assert b.delay(10_000) == 10.0
    assert b.delay(0) == 1.0


def test_jitter_stays_between_half_and_all_of_the_delay() -> None:
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(5))
    for attempt in (1, 3, 5, 9):
        ceiling = min(60.0, 2.0 ** (attempt - 1))
        samples = [b.delay(attempt) for _ in range(500)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        # Really spread, not a constant.
        assert max(samples) - min(samples) > ceiling / 4
    assert Backoff(base=4.0, cap=60.0, rng=MinRandom()).delay(1) == 2.0


def test_retry_after_wins_over_a_shorter_backoff_and_even_over_the_cap() -> None:
    b = Backoff(base=1.0, cap=10.0, rng=MaxRandom())
    assert b.delay(1, 7.5) == 7.5
    assert b.delay(1, 120.0) == 120.0
    # A longer backoff is kept: retry-after is "not before".
    assert b.delay(4, 2.0) == 8.0


# -- token bucket -----------------------------------------------------------------------------
def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 4, clock=clock)

    assert bucket.available(10) == 4
    bucket.take(4)
    assert bucket.available(10) == 0
    assert bucket.seconds_until(1) == pytest.approx(0.5)
    assert bucket.seconds_until(3) == pytest.approx(1.5)

    clock.advance(0.5)
    assert bucket.available(10) == 1
    clock.advance(1.0)
    assert bucket.available(10) == 3
    clock.advance(100)
    assert bucket.available(10) == 4  # never more than the burst


def test_token_bucket_rate_over_time() -> None:
    clock = Clock()
    bucket = TokenBucket(5.0, 1, clock=clock)
    sent = 0
    for _ in range(1000):  # ten seconds in steps of 10 ms
        n = bucket.available(100)
        bucket.take(n)
        sent += n
        clock.advance(0.01)
    assert 49 <= sent <= 51


def test_token_bucket_gives_back_what_was_not_sent() -> None:
    clock = Clock()
    bucket = TokenBucket(1.0, 3, clock=clock)
    bucket.take(3)
    bucket.give_back(2)
    assert bucket.available(10) == 2
    bucket.give_back(10)
    assert bucket.available(10) == 3


def test_token_bucket_default_burst_is_one_second_of_rate() -> None:
    assert TokenBucket(5.0, None, clock=Clock()).available(100) == 5
    assert TokenBucket(0.2, None, clock=Clock()).available(100) == 1


def test_unlimited_bucket() -> None:
    bucket = TokenBucket(None, None, clock=Clock())
    bucket.take(10_000)
    assert bucket.available(10_000) == 10_000
    assert bucket.seconds_until(50) == 0.0


# -- circuit breaker --------------------------------------------------------------------------
def test_breaker_opens_after_n_consecutive_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, pause=10.0, clock=clock)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.failure() is False
    assert breaker.failure() is False
    breaker.success()  # a success in between starts the count again
    assert breaker.failure() is False
    assert breaker.failure() is False
    assert breaker.allow()
    assert breaker.failure() is True

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.seconds_until_probe == pytest.approx(10.0)
    clock.advance(4)
    assert not breaker.allow()
    assert breaker.seconds_until_probe == pytest.approx(6.0)


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, pause=5.0, clock=clock)
    breaker.failure()
    clock.advance(5.0)

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    breaker.started()
    assert not breaker.allow(), "only one probe at a time"
    breaker.success()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.started()
    assert breaker.allow(), "closed: no limit on batches"


def test_half_open_probe_failure_reopens_for_another_pause() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, pause=5.0, clock=clock)
    for _ in range(3):
        breaker.failure()
    clock.advance(6.0)
    assert breaker.allow()
    breaker.started()

    assert breaker.failure() is True  # one failure is enough when probing

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(4.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.2)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()


# -- outcome checking -------------------------------------------------------------------------
def test_check_outcomes_turns_garbage_into_retries() -> None:
    batch = [object(), object()]
    good = [Accepted("r"), Failed("x")]
    assert check_outcomes(batch, good) == good  # type: ignore[arg-type]
    for garbage in (None, "ok", [Accepted()], [Accepted(), True], [Accepted()] * 3):
        outcomes = check_outcomes(batch, garbage)  # type: ignore[arg-type]
        assert len(outcomes) == 2
        assert all(isinstance(o, Retry) and "adapter returned" in o.reason for o in outcomes)
