"""Per-warning delivery counts by state, kept by every transition in the same transaction."""

from __future__ import annotations

from collections.abc import Mapping

from dispatcher.store.connections import Db


def bump_state_counts(conn: Db, warning_seq: int, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` (state → change) to the warning's counts.

    The rows are updated in state order: claims on several nodes run side by side (on
    PostgreSQL) and update the same rows, and in one order they wait for each other rather
    than deadlock. Callers bumping several warnings do so in ascending ``warning_seq``."""
    rows = [(warning_seq, state, n) for state, n in sorted(deltas.items()) if n]
    if rows:
        conn.executemany(
            "INSERT INTO delivery_state_counts (warning_seq, state, n) VALUES (?, ?, ?) "
            "ON CONFLICT (warning_seq, state) "
            "DO UPDATE SET n = delivery_state_counts.n + excluded.n",
            rows,
        )
