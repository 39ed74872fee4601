"""Devices' connection state: the newest status per device (``device_status``, written
in batches by the engine) and the directory's devices listed with it.

A directory device is matched to its status by ``(devices.adapter, COALESCE(NULLIF(
devices.address, ''), devices.id))`` — the adapter and the address the engine sends to — which
is ``device_status``' primary key, so each device on a page costs one key lookup. A page walks
``devices`` in id order from the cursor and stops when it is full; the counts by state read
every device the other filters match (a city has a few thousand). Statuses from addresses no
device has are found through the expression index ``devices_adapter_address`` (migration 7),
named to SQLite (``INDEXED BY``; PostgreSQL plans on its own, see
:func:`~dispatcher.store.connections.without_hints`). A page, its devices' areas and the counts
are read in one transaction (one snapshot).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

from dispatcher.store.base import (
    DevicePage,
    DeviceQuery,
    DeviceRow,
    DeviceState,
    DeviceStatusRecord,
    InvalidCursor,
)
from dispatcher.store.connections import Db, StoreConnections, without_hints

__all__ = [
    "DEVICE_STATUS_COLUMNS",
    "DEVICE_STATUS_JOIN",
    "DeviceQueries",
    "decode_cursor",
    "encode_cursor",
    "read_devices",
]

#: The address the engine sends a directory device's messages to (engine_ops reads it so).
_ADDRESS = "COALESCE(NULLIF(d.address, ''), d.id)"
_JOIN = f"LEFT JOIN device_status ds ON ds.adapter = d.adapter AND ds.address = {_ADDRESS}"
#: A status's state; ``:silent_before`` is now minus the heartbeat timeout.
_STATE = (
    "CASE WHEN ds.address IS NULL THEN 'unknown' WHEN ds.online = 0 THEN 'offline' "
    "WHEN ds.last_seen < :silent_before THEN 'silent' ELSE 'online' END"
)
_DEVICE_COLUMNS = (
    f"d.id, d.kind, d.name, d.adapter, {_ADDRESS}, d.area_code, ds.last_seen, ds.detail, {_STATE}"
)
#: For other reads of devices ``d`` with their status (dispatcher/store/report_queries.py):
#: the join, and the columns address, last seen and state (``:silent_before`` bound).
DEVICE_STATUS_JOIN = _JOIN
DEVICE_STATUS_COLUMNS = f"{_ADDRESS}, ds.last_seen, {_STATE}"
# ``ds.address || ''``: an expression without the column's affinity, so that SQLite compares
# it with the indexed expression (which has none) through the index.
_UNREGISTERED = (
    "NOT EXISTS (SELECT 1 FROM devices d INDEXED BY devices_adapter_address "
    f"WHERE d.adapter = ds.adapter AND {_ADDRESS} = ds.address || '')"
)

_CURSOR = re.compile(r"[A-Za-z0-9_-]+")

_UPSERT = (
    "INSERT INTO device_status (adapter, address, online, last_seen, detail, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (adapter, address) DO UPDATE SET online = excluded.online, "
    "last_seen = excluded.last_seen, detail = excluded.detail, updated_at = excluded.updated_at "
    "WHERE excluded.last_seen >= device_status.last_seen"
)


def encode_cursor(*key: str) -> str:
    """The cursor after a listed device: its key (a directory device's id; an unregistered
    status's adapter and address) as URL-safe text."""
    raw = json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, unregistered: bool) -> tuple[str, ...]:
    """The key in a cursor of a page of devices (or of unregistered statuses); InvalidCursor
    when it is not one."""
    parts = 2 if unregistered else 1
    value: object = None
    if _CURSOR.fullmatch(cursor):
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            value = json.loads(base64.urlsafe_b64decode(padded))
        except (UnicodeError, ValueError, binascii.Error):
            value = None
    if (
        isinstance(value, list)
        and len(value) == parts
        and all(isinstance(part, str) for part in value)
    ):
        return tuple(value)
    shown = cursor if len(cursor) <= 40 else cursor[:40] + "…"
    what = "unregistered devices" if unregistered else "devices"
    raise InvalidCursor(f"{shown!r} is not a cursor of a page of {what}")


def _detail(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


def _device(row: Sequence[Any], areas: dict[str, list[str]]) -> DeviceRow:
    device_id, kind, name, adapter, address, area_code, last_seen, detail, state = row
    return DeviceRow(
        id=device_id,
        kind=kind,
        name=name,
        adapter=adapter,
        address=address,
        area_code=area_code,
        areas=tuple(areas.get(device_id, ())),
        state=DeviceState(state),
        last_seen=float(last_seen) if last_seen is not None else None,
        detail=_detail(detail),
    )


def _areas_of(conn: Db, device_ids: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if not device_ids:
        return found
    marks = ",".join("?" * len(device_ids))
    rows = conn.execute(
        "SELECT device_id, area_code FROM device_areas "
        f"WHERE device_id IN ({marks}) ORDER BY device_id, area_code",
        list(device_ids),
    )
    for device_id, code in rows:
        found.setdefault(device_id, []).append(code)
    return found


def _counts(rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    counts = dict.fromkeys((s.value for s in DeviceState), 0)
    for state, n in rows:
        counts[state] = int(n)
    return counts


def read_devices(
    conn: Db,
    query: DeviceQuery,
    *,
    silent_before: float,
    after: str | None,
    limit: int,
    hints: bool,
) -> DevicePage:
    """One page of directory devices (or unregistered statuses) with the counts by state
    (``hints``: name the index, as SQLite needs)."""
    if query.unregistered:
        return _read_unregistered(
            conn, query, silent_before=silent_before, after=after, limit=limit, hints=hints
        )
    (after_id,) = decode_cursor(after, unregistered=False) if after is not None else ("",)
    where: list[str] = []
    params: dict[str, Any] = {"silent_before": silent_before}
    if query.area is not None:
        where.append("d.area_code IN (SELECT descendant FROM area_closure WHERE ancestor = :area)")
        params["area"] = query.area
    if query.kind is not None:
        where.append("d.kind = :kind")
        params["kind"] = query.kind
    if query.adapter is not None:
        where.append("d.adapter = :adapter")
        params["adapter"] = query.adapter
    page_where = [*where, "d.id > :after"]
    if query.state is not None:
        page_where.append(f"{_STATE} = :state")
        params["state"] = query.state.value
    filters = f"WHERE {' AND '.join(where)}" if where else ""
    conn.execute("BEGIN")
    try:
        rows = conn.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices d {_JOIN} "
            f"WHERE {' AND '.join(page_where)} ORDER BY d.id LIMIT :limit",
            {**params, "after": after_id, "limit": limit + 1},
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        areas = _areas_of(conn, [r[0] for r in rows])
        counts = conn.execute(
            f"SELECT {_STATE} AS state, count(*) FROM devices d {_JOIN} {filters} GROUP BY 1",
            params,
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    devices = [_device(row, areas) for row in rows]
    last = devices[-1].id if more and devices else None
    return DevicePage(devices, encode_cursor(last) if last is not None else None, _counts(counts))


def _read_unregistered(
    conn: Db,
    query: DeviceQuery,
    *,
    silent_before: float,
    after: str | None,
    limit: int,
    hints: bool,
) -> DevicePage:
    adapter, address = decode_cursor(after, unregistered=True) if after is not None else ("", "")
    where = [_UNREGISTERED]
    params: dict[str, Any] = {"silent_before": silent_before}
    if query.adapter is not None:
        where.append("ds.adapter = :adapter")
        params["adapter"] = query.adapter
    page_where = [*where, "(ds.adapter, ds.address) > (:after_adapter, :after_address)"]
    if query.state is not None:
        page_where.append(f"{_STATE} = :state")
        params["state"] = query.state.value
    page_sql = (
        f"SELECT ds.adapter, ds.address, ds.last_seen, ds.detail, {_STATE} "
        f"FROM device_status ds WHERE {' AND '.join(page_where)} "
        "ORDER BY ds.adapter, ds.address LIMIT :limit"
    )
    counts_sql = (
        f"SELECT {_STATE} AS state, count(*) FROM device_status ds "
        f"WHERE {' AND '.join(where)} GROUP BY 1"
    )
    if not hints:
        page_sql, counts_sql = without_hints(page_sql), without_hints(counts_sql)
    conn.execute("BEGIN")
    try:
        rows = conn.execute(
            page_sql,
            {
                **params,
                "after_adapter": adapter,
                "after_address": address,
                "limit": limit + 1,
            },
        ).fetchall()
        counts = conn.execute(counts_sql, params).fetchall()
    finally:
        conn.execute("COMMIT")
    more = len(rows) > limit
    devices = [
        DeviceRow(
            id=None,
            kind=None,
            name="",
            adapter=r[0],
            address=r[1],
            area_code=None,
            areas=(),
            state=DeviceState(r[4]),
            last_seen=float(r[2]),
            detail=_detail(r[3]),
        )
        for r in rows[:limit]
    ]
    cursor = encode_cursor(devices[-1].adapter, devices[-1].address) if more else None
    return DevicePage(devices, cursor, _counts(counts))


class DeviceQueries(StoreConnections):
    """The Store's device-state methods, mixed into :class:`dispatcher.store.sql_store.SqlStore`."""

    async def record_device_status(self, statuses: Sequence[DeviceStatusRecord]) -> int:
        rows = [
            (s.adapter, s.address, int(s.online), s.last_seen, s.detail_json, s.updated_at)
            for s in statuses
        ]
        if not rows:
            return 0

        def run(conn: Db) -> int:
            return conn.executemany(_UPSERT, rows).rowcount

        return await self._write_tx(run)

    async def list_devices(
        self,
        query: DeviceQuery,
        *,
        now: float,
        heartbeat_timeout: float,
        after: str | None = None,
        limit: int,
    ) -> DevicePage:
        if after is not None:
            decode_cursor(after, unregistered=query.unregistered)  # fails here, before a read
        silent_before = now - heartbeat_timeout
        hints = self._planner_hints

        def run(conn: Db) -> DevicePage:
            return read_devices(
                conn, query, silent_before=silent_before, after=after, limit=limit, hints=hints
            )

        return await self._read(run)

    async def get_device(
        self, device_id: str, *, now: float, heartbeat_timeout: float
    ) -> DeviceRow | None:
        params = {"id": device_id, "silent_before": now - heartbeat_timeout}

        def run(conn: Db) -> DeviceRow | None:
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    f"SELECT {_DEVICE_COLUMNS} FROM devices d {_JOIN} WHERE d.id = :id", params
                ).fetchone()
                areas = _areas_of(conn, [device_id]) if row is not None else {}
            finally:
                conn.execute("COMMIT")
            return _device(row, areas) if row is not None else None

        return await self._read(run)
