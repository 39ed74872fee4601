"""The delivery log: pages of ``delivery_events``, newest or oldest first, narrowed by
a :class:`~dispatcher.log_query.LogFilter`, that stay quick with millions of events.

Each page is one statement that walks an index in id order and stops at the page's end, never
a sort of everything that matches:

- a person or device: ``delivery_events_target`` (target_id, id);
- a warning: ``delivery_events_warning`` (warning_id, id);
- a level (and no warning, person or device): the warnings of that level are few, so each
  warning's events are read through ``delivery_events_warning`` and the pages merged, newest
  warnings first, stopping as soon as an older warning cannot reach into the page;
- otherwise: the primary key, from the cursor.

Area, channel, state and time narrow the walk (they are checked on each row it passes), so on
their own they read the log from the cursor until the page is full: quick when the matches
are recent, a longer walk when they are rare. ``since`` and ``until`` also bound the walk
itself: events are appended in time order, so a binary search over the primary key turns a
time into an id (allowing :data:`~dispatcher.log_query.TIME_SLACK` for events stamped a little
out of that order). ``tests/test_log_store.py`` checks the query plans.

The indexes are named to SQLite (``INDEXED BY``): with some statistics it would rather walk the
primary key than a warning's or a target's index. PostgreSQL, which has no such hints, plans
the same statements on its own (:func:`~dispatcher.store.connections.without_hints`). Ids are
commit order on both (every write transaction holds the writer lock), so a cursor never skips
an event committed after the page was read.

A whole-warning event (received, planned, cancelled …) has no target, channel or area, so
those filters leave it out."""

from __future__ import annotations

import json
from typing import Any

from dispatcher.log_query import MAX_CURSOR, TIME_SLACK, LogEvent, LogFilter
from dispatcher.store.connections import Db, StoreConnections, without_hints

_COLUMNS = (
    "e.id, e.at, e.warning_id, e.delivery_id, e.state, e.attempt, e.adapter, e.reason, "
    "e.detail, e.target_id, e.channel, e.area_code, w.level"
)
#: The index each way in (``None``: the primary key), as SQLite hints (dropped elsewhere).
_INDEX = {
    "target": "INDEXED BY delivery_events_target",
    "warning": "INDEXED BY delivery_events_warning",
    None: "NOT INDEXED",
}
_KEY_COLUMN = {"target": "e.target_id", "warning": "e.warning_id"}

#: How a page is read: by target, by warning (with its id), or along the primary key (None).
Key = tuple[str, str] | None


def page_statement(
    query: LogFilter,
    *,
    key: Key,
    lo: int,
    hi: int,
    ascending: bool,
    limit: int,
    hints: bool,
) -> tuple[str, tuple[Any, ...]]:
    """One page of events with ``lo < id < hi`` through ``key``'s index, in id order
    (``hints``: name the index, as SQLite needs)."""
    kind = key[0] if key is not None else None
    where: list[str] = []
    params: list[Any] = []
    if key is not None:
        where.append(f"{_KEY_COLUMN[key[0]]} = ?")
        params.append(key[1])
    where.append("e.id > ? AND e.id < ?")
    params += [lo, hi]
    if query.warning is not None and kind != "warning":
        where.append("e.warning_id = ?")
        params.append(query.warning)
    if query.level is not None and kind != "warning":
        where.append("e.warning_id IN (SELECT id FROM warnings WHERE level = ?)")
        params.append(query.level.value)
    if query.area is not None:
        where.append("e.area_code IN (SELECT descendant FROM area_closure WHERE ancestor = ?)")
        params.append(query.area)
    if query.channel is not None:
        where.append("e.channel = ?")
        params.append(query.channel.value)
    if query.state is not None:
        where.append("e.state = ?")
        params.append(query.state)
    if query.since is not None:
        where.append("e.at >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("e.at < ?")
        params.append(query.until)
    sql = (
        f"SELECT {_COLUMNS} FROM delivery_events e {_INDEX[kind]} "
        "LEFT JOIN warnings w ON w.id = e.warning_id "
        f"WHERE {' AND '.join(where)} "
        f"ORDER BY e.id {'ASC' if ascending else 'DESC'} LIMIT ?"
    )
    params.append(limit)
    return (sql if hints else without_hints(sql)), tuple(params)


def read_log(
    conn: Db,
    query: LogFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int,
    hints: bool,
) -> list[LogEvent]:
    """Up to ``limit`` events matching ``query`` with ``after < id < before``: oldest first
    when ``after`` is given, else newest first (``hints``: name indexes, as SQLite needs)."""
    ascending = after is not None
    lo = after if after is not None else 0
    hi = before if before is not None else MAX_CURSOR
    if limit <= 0 or (query.person and query.device and query.person != query.device):
        return []
    # One snapshot for the several statements a page may take.
    conn.execute("BEGIN")
    try:
        lo, hi = _time_bounds(conn, query, lo, hi)
        if hi - lo <= 1:
            return []
        target = query.person or query.device
        if target is not None:
            return _page(conn, query, ("target", target), lo, hi, ascending, limit, hints)
        if query.warning is not None:
            if query.level is not None and _level_of(conn, query.warning) != query.level.value:
                return []
            return _page(conn, query, ("warning", query.warning), lo, hi, ascending, limit, hints)
        if query.level is not None:
            return _merged(conn, query, query.level.value, lo, hi, ascending, limit, hints)
        return _page(conn, query, None, lo, hi, ascending, limit, hints)
    finally:
        conn.execute("COMMIT")


def last_event_id(conn: Db) -> int:
    (top,) = conn.execute("SELECT max(id) FROM delivery_events").fetchone()
    return int(top) if top is not None else 0


def _page(
    conn: Db,
    query: LogFilter,
    key: Key,
    lo: int,
    hi: int,
    ascending: bool,
    limit: int,
    hints: bool,
) -> list[LogEvent]:
    sql, params = page_statement(
        query, key=key, lo=lo, hi=hi, ascending=ascending, limit=limit, hints=hints
    )
    return [_event(row) for row in conn.execute(sql, params)]


def _merged(
    conn: Db,
    query: LogFilter,
    level: str,
    lo: int,
    hi: int,
    ascending: bool,
    limit: int,
    hints: bool,
) -> list[LogEvent]:
    """The level's warnings read one by one through the warning index, merged. Each warning's
    first event in the page's direction is one index seek; warnings are visited from the one
    whose events come first, and the walk stops when the next one's first event falls past
    the end of a full page."""
    warning_ids = [
        wid for (wid,) in conn.execute("SELECT id FROM warnings WHERE level = ?", (level,))
    ]
    direction = "ASC" if ascending else "DESC"
    seek = (
        f"SELECT id FROM delivery_events {_INDEX['warning']} "
        f"WHERE warning_id = ? AND id > ? AND id < ? ORDER BY id {direction} LIMIT 1"
    )
    if not hints:
        seek = without_hints(seek)
    starts: list[tuple[int, str]] = []
    for wid in warning_ids:
        row = conn.execute(seek, (wid, lo, hi)).fetchone()
        if row is not None:
            starts.append((int(row[0]), wid))
    starts.sort(reverse=not ascending)
    merged: list[LogEvent] = []
    for start, wid in starts:
        if len(merged) >= limit:
            edge = merged[limit - 1].id
            if (start > edge) if ascending else (start < edge):
                break
        merged += _page(conn, query, ("warning", wid), lo, hi, ascending, limit, hints)
        merged.sort(key=lambda e: e.id, reverse=not ascending)
        del merged[limit:]
    return merged


def _time_bounds(conn: Db, query: LogFilter, lo: int, hi: int) -> tuple[int, int]:
    """Narrow the exclusive id bounds to the events that can lie in [since, until)."""
    if query.since is not None:
        lo = max(lo, _first_id_at_or_after(conn, query.since - TIME_SLACK) - 1)
    if query.until is not None:
        hi = min(hi, _first_id_at_or_after(conn, query.until + TIME_SLACK))
    return lo, hi


def _first_id_at_or_after(conn: Db, moment: float) -> int:
    """The first event id stamped at or after ``moment`` (one past the last id when none is),
    by a binary search over the primary key: about 25 seeks for 10 million events."""
    (low,) = conn.execute("SELECT min(id) FROM delivery_events").fetchone()
    (high,) = conn.execute("SELECT max(id) FROM delivery_events").fetchone()
    if low is None:
        return 1
    lo, hi = int(low), int(high) + 1
    while lo < hi:
        row = conn.execute(
            "SELECT id, at FROM delivery_events WHERE id >= ? ORDER BY id LIMIT 1",
            ((lo + hi) // 2,),
        ).fetchone()
        event_id, at = int(row[0]), float(row[1])
        if at >= moment:
            hi = event_id
        else:
            lo = event_id + 1
    return lo


def _level_of(conn: Db, warning_id: str) -> str | None:
    row = conn.execute("SELECT level FROM warnings WHERE id = ?", (warning_id,)).fetchone()
    return str(row[0]) if row is not None else None


def _event(row: tuple[Any, ...]) -> LogEvent:
    return LogEvent(
        id=int(row[0]),
        at=float(row[1]),
        warning_id=row[2],
        delivery_id=row[3],
        state=row[4],
        attempt=int(row[5]),
        adapter=row[6],
        reason=row[7],
        detail=_detail(row[8]),
        target_id=row[9],
        channel=row[10],
        area_code=row[11],
        level=row[12],
    )


def _detail(text: str | None) -> dict[str, Any]:
    """The event's JSON detail; anything else the engine might have written is kept, wrapped."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


class LogQueries(StoreConnections):
    """The Store's delivery-log methods, mixed into :class:`dispatcher.store.sql_store.SqlStore`."""

    async def log_events(
        self,
        query: LogFilter,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int,
    ) -> list[LogEvent]:
        hints = self._planner_hints

        def run(conn: Db) -> list[LogEvent]:
            return read_log(conn, query, before=before, after=after, limit=limit, hints=hints)

        return await self._read(run)

    async def log_last_id(self) -> int:
        return await self._read(last_event_id)
