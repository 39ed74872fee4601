"""What an adapter's outcome means for a delivery: its next state, when it is next looked at,
and whether the ladder moves on. Pure: no I/O, so every rule is tested alone."""

from __future__ import annotations

from collections.abc import Callable

from dispatcher.adapter import Accepted, Failed, Outcome, Retry
from dispatcher.domain import Audience, DeliveryState
from dispatcher.engine.types import ClaimedDelivery, LevelRules, Transition


def ack_deadline(delivery: ClaimedDelivery, rules: LevelRules, now: float) -> float:
    if delivery.audience == Audience.DEVICE.value:
        return now + rules.device_ack_timeout
    return now + rules.ack_timeout


def decide(
    delivery: ClaimedDelivery,
    outcome: Outcome,
    *,
    rules: LevelRules,
    now: float,
    adapter: str,
    retry_delay: Callable[[int, float | None], float],
) -> Transition:
    if isinstance(outcome, Accepted):
        return Transition(
            delivery.id,
            DeliveryState.DELIVERED if outcome.delivered else DeliveryState.SENT,
            ack_deadline(delivery, rules, now),
            delivery.attempt,
            adapter,
            reference=outcome.reference,
            detail=outcome.detail,
        )
    if isinstance(outcome, Retry):
        if delivery.attempt >= rules.max_attempts:
            return Transition(
                delivery.id,
                DeliveryState.FAILED,
                None,
                delivery.attempt,
                adapter,
                reason=f"gave up after {delivery.attempt} attempts: {outcome.reason}",
                detail=outcome.detail,
                escalate=True,
            )
        return Transition(
            delivery.id,
            DeliveryState.RETRY_WAIT,
            now + retry_delay(delivery.attempt, outcome.after),
            delivery.attempt,
            adapter,
            reason=outcome.reason,
            detail=(
                {**outcome.detail, "retry_after": outcome.after}
                if outcome.after is not None
                else outcome.detail
            ),
        )
    if isinstance(outcome, Failed):
        return Transition(
            delivery.id,
            DeliveryState.FAILED,
            None,
            delivery.attempt,
            adapter,
            reason=outcome.reason,
            detail=outcome.detail,
            escalate=True,
        )
    raise TypeError(f"not an outcome: {outcome!r}")


def put_back(delivery: ClaimedDelivery, *, due_at: float, reason: str) -> Transition:
    """Return a claimed delivery unsent, without counting the attempt (no adapter could take
    it: paused, rate-limited, not started)."""
    return Transition(
        delivery.id,
        DeliveryState.RETRY_WAIT,
        due_at,
        delivery.attempt - 1,
        "",
        reason=reason,
        uncount_attempt=True,
    )
