"""Reading operators' reports (:class:`dispatcher.store.reports_base.ReportStore`):
the door-to-door follow-up list and what a test broadcast's report is made of.

**Follow-up.** A page is whole villages. It walks the warning's covered villages in code order
from the cursor (``coverage_targets``' key) and reaches each one's households through the
directory's indexes (``grids_village``, ``households_grid``), keeping those with no in-time
``reached`` row (looked up by key), as the unreached lists do
(:mod:`dispatcher.store.coverage_queries`). It reads one household more than the page holds;
the village that one belongs to is left for the next page, unless it is the page's only
village, which is then read whole. The page's grids, grid members, village names and
unreached people are read by key, in one snapshot. The cursor is the page's last village.

**Test report.** A warning's deliveries are found through its plan's rowid ranges
(``delivery_ranges``), as the engine finds them: counted per channel and outcome for people
and read one by one for devices (a test broadcast has a few thousand). Each device that did
not acknowledge gets its delivery's events (``delivery_events_target``, from the warning's
first event on) and its status (``device_status`` by key, as GET /v1/devices reads it).

The indexes are named to SQLite (``INDEXED BY``, and a ``CROSS JOIN`` fixing the join order,
which PostgreSQL reads as a plain join); PostgreSQL plans the same statements on its own
(:func:`~dispatcher.store.connections.without_hints`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dispatcher.store.base import DeviceState, InvalidCursor
from dispatcher.store.connections import Db, StoreConnections, without_hints
from dispatcher.store.device_queries import DEVICE_STATUS_COLUMNS, DEVICE_STATUS_JOIN
from dispatcher.store.reports_base import (
    FollowupHousehold,
    FollowupMember,
    FollowupPage,
    FollowupPerson,
    SilentDevice,
    TestReportData,
    device_outcome,
    group_sheets,
    people_outcome,
)

__all__ = ["FOLLOWUP_HOUSEHOLDS", "ReportQueries"]

_VILLAGE_CODE = re.compile(r"[0-9]{12}")
_CHUNK = 500


def _reached(kind: str, target: str, *, in_time: int, seq: str = ":seq") -> str:
    return (
        f"EXISTS (SELECT 1 FROM reached r WHERE r.warning_seq = {seq} "
        f"AND r.kind = '{kind}' AND r.target_id = {target} AND r.in_time = {in_time})"
    )


#: Households of the warning not reached in time, village by village. ``{village}``: the
#: villages after the cursor (``> :after``) or one village (``= :village``); ``{area}``:
#: nothing, or the villages in an area; ``{limit}``: nothing, or ``LIMIT :limit``. Columns:
#: village, household, grid, address, reached late.
FOLLOWUP_HOUSEHOLDS = (
    "SELECT ct.village_code, h.id, h.grid_id, h.address, "
    f"{_reached('household', 'h.id', in_time=0)} "
    "FROM coverage_targets ct "
    "JOIN grids g INDEXED BY grids_village ON g.village_code = ct.village_code "
    "JOIN households h INDEXED BY households_grid ON h.grid_id = g.id "
    "WHERE ct.warning_seq = :seq AND ct.village_code {village}{area} "
    f"AND NOT {_reached('household', 'h.id', in_time=1)} "
    "ORDER BY ct.village_code{limit}"
)
_LIMIT = " LIMIT :limit"
_AREA = " AND ct.village_code IN (SELECT descendant FROM area_closure WHERE ancestor = :area)"
#: The grids' members (a grid without one: a row with NULLs), and whether each acknowledged.
_GRID_MEMBERS = (
    "SELECT g.id, g.name, gm.person_id, p.name, p.phone, "
    f"{_reached('grid_member', 'gm.person_id', in_time=1, seq='?')} "
    "FROM grids g LEFT JOIN grid_members gm ON gm.grid_id = g.id "
    "LEFT JOIN persons p ON p.id = gm.person_id "
    "WHERE g.id IN ({marks}) ORDER BY g.id, gm.person_id"
)
#: The households' people not reached in time (all of them, in an unreached household);
#: ``{marks}``: the households' placeholders, numbered from ``?2`` (``?1`` is the warning).
_PERSONS = (
    "SELECT p.household_id, p.id, p.name, p.phone, p.vulnerable, p.lives_alone, "
    f"{_reached('person', 'p.id', in_time=0, seq='?1')} "
    "FROM persons p INDEXED BY persons_household WHERE p.household_id IN ({marks}) "
    f"AND NOT {_reached('person', 'p.id', in_time=1, seq='?1')} "
    "ORDER BY p.household_id, p.id"
)

#: The warning's deliveries, through its plan's rowid ranges (CROSS JOIN: ranges first, so
#: SQLite never walks every warning's deliveries looking for the ranges they fall in).
_DELIVERIES = (
    "FROM delivery_ranges dr CROSS JOIN deliveries d "
    "WHERE dr.warning_seq = :seq AND d.id BETWEEN dr.first_id AND dr.last_id"
)
_PEOPLE = "d.audience NOT IN ('device', 'visit')"
_DEVICE_DELIVERIES = (
    f"SELECT d.id, d.target_id, d.state, d.attempts {_DELIVERIES} AND d.audience = 'device' "
    "ORDER BY d.id"
)
#: People's deliveries by channel, state and whether they were sent (any attempt: the
#: group's most attempts is more than none exactly when each of its deliveries' is).
_PEOPLE_BY_CHANNEL = (
    f"SELECT d.channel, d.state, max(d.attempts), count(*) {_DELIVERIES} AND {_PEOPLE} "
    "GROUP BY d.channel, d.state, d.attempts > 0"
)
_PEOPLE_TARGETED = f"SELECT count(DISTINCT d.target_id) {_DELIVERIES} AND {_PEOPLE}"
_DEVICES = (
    f"SELECT d.id, d.kind, d.name, d.adapter, d.area_code, a.name, {DEVICE_STATUS_COLUMNS} "
    f"FROM devices d LEFT JOIN areas a ON a.code = d.area_code {DEVICE_STATUS_JOIN} "
    "WHERE d.id IN ({marks})"
)
#: One delivery's events, newest first (from the warning's first event on).
_EVENTS = (
    "SELECT state, reason, at FROM delivery_events "
    "WHERE target_id = ? AND delivery_id = ? AND id >= ? ORDER BY id DESC"
)


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


def _numbered_marks(items: Sequence[Any], *, first: int) -> str:
    return ",".join(f"?{first + i}" for i in range(len(items)))


def _households(
    conn: Db,
    seq: int,
    *,
    area: str | None,
    after: str | None = None,
    village: str | None = None,
    limit: int | None = None,
    hints: bool,
) -> list[tuple[str, FollowupHousehold]]:
    params: dict[str, Any] = {"seq": seq}
    if village is not None:
        where, params["village"] = "= :village", village
    else:
        where, params["after"] = "> :after", after or ""
    if area is not None:
        params["area"] = area
    if limit is not None:
        params["limit"] = limit
    sql = FOLLOWUP_HOUSEHOLDS.format(
        village=where,
        area=_AREA if area is not None else "",
        limit=_LIMIT if limit is not None else "",
    )
    if not hints:
        sql = without_hints(sql)
    return [
        (
            code,
            FollowupHousehold(id=hid, grid_id=grid, address=address or "", reached_late=bool(late)),
        )
        for code, hid, grid, address, late in conn.execute(sql, params)
    ]


def _read_followup(
    conn: Db, seq: int, *, area: str | None, after: str | None, limit: int, hints: bool
) -> FollowupPage:
    rows = _households(conn, seq, area=area, after=after, limit=limit + 1, hints=hints)
    following: str | None = None
    if len(rows) > limit:
        # The village of the household past the page waits for the next page, unless it is
        # the only one: then it is read whole.
        boundary = rows[limit][0]
        rows = [r for r in rows if r[0] != boundary]
        if not rows:
            rows = _households(conn, seq, area=area, village=boundary, hints=hints)
            more = _households(conn, seq, area=area, after=boundary, limit=1, hints=hints)
            following = boundary if more else None
        else:
            following = rows[-1][0]
    villages = sorted({village for village, _ in rows})
    grid_ids = sorted({h.grid_id for _, h in rows})
    village_names: dict[str, str] = {}
    for chunk in _chunks(villages):
        village_names.update(
            conn.execute(f"SELECT code, name FROM areas WHERE code IN ({_marks(chunk)})", chunk)
        )
    grid_names: dict[str, str] = {}
    members: dict[str, list[FollowupMember]] = {}
    for chunk in _chunks(grid_ids):
        for grid_id, grid_name, person_id, name, phone, acked in conn.execute(
            _GRID_MEMBERS.format(marks=_marks(chunk)), (seq, *chunk)
        ):
            grid_names[grid_id] = grid_name or ""
            if person_id is not None:
                members.setdefault(grid_id, []).append(
                    FollowupMember(person_id, name or "", phone, bool(acked))
                )
    persons_sql = _PERSONS if hints else without_hints(_PERSONS)
    persons: dict[str, list[FollowupPerson]] = {}
    for chunk in _chunks([h.id for _, h in rows]):
        for household_id, pid, name, phone, vulnerable, alone, late in conn.execute(
            persons_sql.format(marks=_numbered_marks(chunk, first=2)), (seq, *chunk)
        ):
            persons.setdefault(household_id, []).append(
                FollowupPerson(pid, name or "", phone, bool(vulnerable), bool(alone), bool(late))
            )
    households = [(village, _with_persons(h, persons.get(h.id, []))) for village, h in rows]
    sheets = group_sheets(village_names, grid_names, members, households)
    return FollowupPage(sheets, len(households), following)


def _with_persons(household: FollowupHousehold, persons: list[FollowupPerson]) -> FollowupHousehold:
    return FollowupHousehold(
        household.id, household.grid_id, household.address, tuple(persons), household.reached_late
    )


def parse_village_cursor(after: str | None) -> str | None:
    """The village in a follow-up cursor (InvalidCursor when it is not one)."""
    if after is None or _VILLAGE_CODE.fullmatch(after):
        return after
    shown = after if len(after) <= 40 else after[:40] + "…"
    raise InvalidCursor(f"{shown!r} is not a cursor of the follow-up list (a village code)")


def _read_test_report(
    conn: Db, warning_id: str, seq: int, *, silent_before: float, now: float
) -> TestReportData:
    states = {
        state: int(n)
        for state, n in conn.execute(
            "SELECT state, n FROM delivery_state_counts WHERE warning_seq = ? AND n != 0 "
            "ORDER BY state",
            (seq,),
        )
    }
    # Each device's delivery: acknowledged if any was; else the newest.
    chosen: dict[str, tuple[int, str, int]] = {}
    acknowledged: set[str] = set()
    for delivery_id, device_id, state, attempts in conn.execute(_DEVICE_DELIVERIES, {"seq": seq}):
        if state == "acknowledged":
            acknowledged.add(device_id)
        chosen[device_id] = (int(delivery_id), str(state), int(attempts))
    (first_event,) = conn.execute(
        "SELECT coalesce(min(id), 0) FROM delivery_events WHERE warning_id = ?", (warning_id,)
    ).fetchone()
    pending: dict[str, tuple[int, str, int, str, str | None, float | None]] = {}
    for device_id, (delivery_id, state, attempts) in chosen.items():
        if device_id in acknowledged:
            continue
        events = conn.execute(_EVENTS, (device_id, delivery_id, first_event)).fetchall()
        if any(e[0] == "acknowledged" for e in events):
            # Acknowledged after the delivery was stopped (it keeps its state; the log says it).
            acknowledged.add(device_id)
            continue
        reason = next((str(e[1]) for e in events if e[1]), "")
        last_event = str(events[0][0]) if events else None
        last_at = float(events[0][2]) if events else None
        pending[device_id] = (delivery_id, state, attempts, reason, last_event, last_at)
    found: dict[str, tuple[Any, ...]] = {}
    ids = sorted(pending)
    for chunk in _chunks(ids):
        params = {"silent_before": silent_before, **{f"d{i}": d for i, d in enumerate(chunk)}}
        marks = ",".join(f":d{i}" for i in range(len(chunk)))
        for row in conn.execute(_DEVICES.format(marks=marks), params):
            found[row[0]] = row
    silent: list[SilentDevice] = []
    for device_id in ids:
        delivery_id, state, attempts, reason, last_event, last_at = pending[device_id]
        outcome = device_outcome(state, attempts)
        if outcome is None:  # acknowledged (not left in ``pending``)
            continue
        row = found.get(device_id)
        if row is None:  # no longer in the directory
            row = (device_id, "", "", "", "", "", device_id, None, DeviceState.UNKNOWN.value)
        _, kind, name, adapter, area_code, area_name, address, last_seen, device_state = row
        silent.append(
            SilentDevice(
                device_id=device_id,
                kind=kind or "",
                name=name or "",
                area_code=area_code or "",
                area_name=area_name or "",
                adapter=adapter or "",
                address=address or device_id,
                delivery_id=delivery_id,
                delivery_state=state,
                attempts=attempts,
                outcome=outcome,
                reason=reason,
                last_event=last_event,
                last_event_at=last_at,
                device_state=DeviceState(device_state),
                last_seen=float(last_seen) if last_seen is not None else None,
            )
        )
    silent.sort(key=lambda d: (d.area_code, d.device_id))
    by_channel: dict[str, dict[str, int]] = {}
    for channel, state, attempts, n in conn.execute(_PEOPLE_BY_CHANNEL, {"seq": seq}):
        outcome_name = people_outcome(str(state), int(attempts))
        counts = by_channel.setdefault(str(channel), {})
        counts[outcome_name] = counts.get(outcome_name, 0) + int(n)
    (people,) = conn.execute(_PEOPLE_TARGETED, {"seq": seq}).fetchone()
    (people_acked,) = conn.execute(
        "SELECT count(*) FROM reached WHERE warning_seq = ? AND kind = 'person'", (seq,)
    ).fetchone()
    return TestReportData(
        warning_id=warning_id,
        delivery_states=states,
        devices_targeted=len(chosen),
        devices_acknowledged=len(acknowledged),
        silent=tuple(silent),
        people_targeted=int(people),
        people_acknowledged=int(people_acked),
        people_by_channel=dict(sorted(by_channel.items())),
        as_of=now,
    )


class ReportQueries(StoreConnections):
    """The Store's report reads, mixed into :class:`dispatcher.store.sql_store.SqlStore`."""

    async def followup(
        self, warning_id: str, *, area: str | None = None, after: str | None = None, limit: int
    ) -> FollowupPage | None:
        parse_village_cursor(after)  # a bad cursor fails here, before any read
        if limit < 1:
            raise ValueError("limit must be at least 1")
        hints = self._planner_hints

        def run(conn: Db) -> FollowupPage | None:
            conn.execute("BEGIN")
            try:
                found = conn.execute(
                    "SELECT seq FROM warnings WHERE id = ?", (warning_id,)
                ).fetchone()
                if found is None:
                    return None
                return _read_followup(
                    conn, int(found[0]), area=area, after=after, limit=limit, hints=hints
                )
            finally:
                conn.execute("COMMIT")

        return await self._read(run)

    async def test_report_data(
        self, warning_id: str, *, now: float, heartbeat_timeout: float
    ) -> TestReportData | None:
        silent_before = now - heartbeat_timeout

        def run(conn: Db) -> TestReportData | None:
            conn.execute("BEGIN")
            try:
                found = conn.execute(
                    "SELECT seq FROM warnings WHERE id = ?", (warning_id,)
                ).fetchone()
                if found is None:
                    return None
                return _read_test_report(
                    conn, warning_id, int(found[0]), silent_before=silent_before, now=now
                )
            finally:
                conn.execute("COMMIT")

        return await self._read(run)
