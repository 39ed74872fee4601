"""Per-warning delivery counts by state, kept by every transition in the same transaction."""

from __future__ import annotations

from collections.abc import Mapping

from dispatcher.store.connections import Db


def bump_state_counts(conn: Db, warning_seq: int, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` (state → change) to the warning's counts."""
    rows = [(warning_seq, state, n) for state, n in deltas.items() if n]
    if rows:
        conn.executemany(
            "INSERT INTO delivery_state_counts (warning_seq, state, n) VALUES (?, ?, ?) "
            "ON CONFLICT (warning_seq, state) "
            "DO UPDATE SET n = delivery_state_counts.n + excluded.n",
            rows,
        )
