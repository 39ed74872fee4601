"""The keys already seen in one CSV file, to report duplicates with the line of the first.

Kept in a private in-memory SQLite table rather than a Python set: two million person ids as
Python strings in a set take about 180 MB, the B-tree a fraction of that. This is the importer's
scratch space, not the directory store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

_CHUNK = 500


class SeenKeys:
    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", isolation_level=None)
        self._db.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")
        # Never committed: one open transaction saves a commit per batch.
        self._db.execute("BEGIN")

    def add(self, items: Sequence[tuple[str, int]]) -> dict[int, int]:
        """Record (key, line) pairs, in line order. Return {line: first line} for each pair
        whose key came before, earlier in ``items`` or in an earlier call."""
        inserted = self._db.executemany(
            "INSERT OR IGNORE INTO seen (key, line) VALUES (?, ?)", items
        ).rowcount
        if inserted == len(items):  # the usual case: no duplicates, no second query
            return {}
        first: dict[str, int] = {}
        for start in range(0, len(items), _CHUNK):
            chunk = [key for key, _ in items[start : start + _CHUNK]]
            marks = ",".join("?" * len(chunk))
            first.update(
                self._db.execute(f"SELECT key, line FROM seen WHERE key IN ({marks})", chunk)
            )
        return {line: first[key] for key, line in items if first[key] != line}

    def close(self) -> None:
        self._db.close()
