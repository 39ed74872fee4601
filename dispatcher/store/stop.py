"""Whole-warning state changes shared by the store's parts: stopping a warning (superseded,
cancelled, expired) with every delivery not yet terminal, and whole-warning log events."""

from __future__ import annotations

import json
from typing import Any

from dispatcher.domain import (
    IN_FLIGHT_DELIVERY_STATES,
    OPEN_DELIVERY_STATES,
    DeliveryState,
    WarningState,
)
from dispatcher.store.connections import Db
from dispatcher.store.state_counts import bump_state_counts

_STOPPABLE_SQL = ", ".join(
    f"'{s.value}'" for s in (*OPEN_DELIVERY_STATES, *IN_FLIGHT_DELIVERY_STATES)
)

_DELIVERY_STATE_WHEN_STOPPED = {
    WarningState.SUPERSEDED: DeliveryState.SUPERSEDED,
    WarningState.CANCELLED: DeliveryState.CANCELLED,
    WarningState.EXPIRED: DeliveryState.EXPIRED,
}


def stop_warning(
    conn: Db, warning_id: str, state: WarningState, by: str | None, now: float
) -> bool:
    """Mark an active warning superseded, cancelled or expired and stop every delivery not yet
    in a terminal state (held, pending, waiting, in flight or awaiting an acknowledgement: no
    retry or escalation follows), logging each; False when the warning was not active."""
    changed = conn.execute(
        "UPDATE warnings SET state = ?, superseded_by = ? WHERE id = ? AND state = 'active'",
        (state.value, by, warning_id),
    ).rowcount
    if not changed:
        return False
    (seq,) = conn.execute("SELECT seq FROM warnings WHERE id = ?", (warning_id,)).fetchone()
    delivery_state = _DELIVERY_STATE_WHEN_STOPPED[state]
    reason = f"{state.value} by {by}" if by else state.value
    ranges = conn.execute(
        "SELECT first_id, last_id FROM delivery_ranges WHERE warning_seq = ?", (seq,)
    ).fetchall()
    deltas: dict[str, int] = {}
    for first_id, last_id in ranges:
        for old_state, n in conn.execute(
            "SELECT state, count(*) FROM deliveries "
            f"WHERE id BETWEEN ? AND ? AND state IN ({_STOPPABLE_SQL}) GROUP BY state",
            (first_id, last_id),
        ).fetchall():
            deltas[old_state] = deltas.get(old_state, 0) - int(n)
            deltas[delivery_state.value] = deltas.get(delivery_state.value, 0) + int(n)
        conn.execute(
            "INSERT INTO delivery_events (at, warning_id, delivery_id, state, attempt, reason, "
            "target_id, channel, area_code) "
            "SELECT ?, ?, id, ?, attempts, ?, target_id, channel, area_code FROM deliveries "
            f"WHERE id BETWEEN ? AND ? AND state IN ({_STOPPABLE_SQL})",
            (now, warning_id, delivery_state.value, reason, first_id, last_id),
        )
        conn.execute(
            "UPDATE deliveries SET state = ?, updated_at = ?, leased_by = NULL "
            f"WHERE id BETWEEN ? AND ? AND state IN ({_STOPPABLE_SQL})",
            (delivery_state.value, now, first_id, last_id),
        )
    bump_state_counts(conn, seq, deltas)
    log_warning_event(conn, warning_id, state.value, now, {"by": by} if by else {})
    return True


def log_warning_event(
    conn: Db, warning_id: str, state: str, now: float, detail: dict[str, Any]
) -> None:
    conn.execute(
        "INSERT INTO delivery_events (at, warning_id, delivery_id, state, detail) "
        "VALUES (?, ?, NULL, ?, ?)",
        (now, warning_id, state, json.dumps(detail, default=str)),
    )
