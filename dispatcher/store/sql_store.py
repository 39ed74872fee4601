"""The store's queries for warnings, plans and the directory's counts, and the class that
gathers every part of the store; written once for SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from dispatcher.domain import (
    DeviceKind,
    Level,
    MsgType,
    Status,
    WarningRecord,
    WarningState,
)
from dispatcher.store.base import (
    AreaCounts,
    AreaRow,
    AuditEntry,
    CreateResult,
    DeliveryEvent,
    DuplicateWarning,
    IdempotencyClaim,
    IdempotencyConflict,
    PlanCountRow,
    PlanResult,
    PlanStage,
)
from dispatcher.store.connections import Db, StoreConnections
from dispatcher.store.coverage_queries import CoverageQueries
from dispatcher.store.device_queries import DeviceQueries
from dispatcher.store.engine_ops import EngineOps
from dispatcher.store.log_queries import LogQueries
from dispatcher.store.node_queries import NodeQueries
from dispatcher.store.report_queries import ReportQueries
from dispatcher.store.schedule_queries import ScheduleQueries
from dispatcher.store.stop import log_warning_event as _log_warning_event
from dispatcher.store.stop import stop_warning as _stop_warning

T = TypeVar("T")

_SEQ_OF = "(SELECT seq FROM warnings WHERE id = ?)"

_AREA_COLUMNS = "a.code, a.name, a.level, a.parent_code"


def _beneath(count: str, join: str, where: str = "") -> str:
    """A count per listed area (``{codes}``: its placeholders) over what lies beneath it."""
    return (
        f"SELECT c.ancestor, {count} FROM area_closure c {join} "
        f"WHERE c.ancestor IN ({{codes}}){where} GROUP BY c.ancestor"
    )


_GRIDS_BENEATH = "JOIN grids g ON g.village_code = c.descendant"
_PERSONS_BENEATH = "JOIN persons p ON p.village_code = c.descendant"
#: The counts beneath areas, each grouped by the area. Each starts from the areas' own closure
#: rows (by primary key) and reaches the directory through an index (grids_village,
#: households_grid, persons_village, persons_village_no_phone, devices_area) without reading
#: table rows, so the work is the size of the areas asked about, not of the whole directory.
#: tests/api/test_areas.py checks the query plans.
AREA_COUNT_QUERIES: dict[str, str] = {
    "villages": _beneath(
        "count(*)", "JOIN areas a ON a.code = c.descendant", " AND a.level = 'village'"
    ),
    "grids": _beneath("count(*)", _GRIDS_BENEATH),
    "households": _beneath("count(*)", f"{_GRIDS_BENEATH} JOIN households h ON h.grid_id = g.id"),
    "persons": _beneath("count(*)", _PERSONS_BENEATH),
    # The few without a phone (a small partial index); the API reports everyone else.
    "persons_without_phone": _beneath("count(*)", _PERSONS_BENEATH, " AND p.phone IS NULL"),
    # Where a device is installed, as the plan counts it; one row per area and kind.
    "devices": _beneath("d.kind, count(*)", "JOIN devices d ON d.area_code = c.descendant")
    + ", d.kind",
}


class SqlStore(
    EngineOps,
    NodeQueries,
    LogQueries,
    CoverageQueries,
    DeviceQueries,
    ReportQueries,
    ScheduleQueries,
    StoreConnections,
):
    """The :class:`dispatcher.store.base.Store`'s queries, on either database; the store
    kinds (:mod:`dispatcher.store.sqlite`, :mod:`dispatcher.store.postgres`) add how they
    connect."""

    # -- health ------------------------------------------------------------------------------
    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # -- directory ---------------------------------------------------------------------------
    async def directory_counts(self) -> dict[str, int]:
        def run(conn: Db) -> dict[str, int]:
            counts = {}
            for table in ("areas", "grids", "households", "persons", "devices"):
                (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                counts[table] = int(n)
            return counts

        return await self._read(run)

    async def unknown_area_codes(self, codes: Sequence[str]) -> list[str]:
        wanted = list(dict.fromkeys(codes))

        def run(conn: Db) -> list[str]:
            known: set[str] = set()
            for chunk in _chunks(wanted, 500):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT code FROM areas WHERE code IN ({marks})", chunk)
                known.update(r[0] for r in rows)
            return [c for c in wanted if c not in known]

        return await self._read(run)

    async def areas_with_ancestors(self, codes: Sequence[str]) -> list[AreaRow]:
        wanted = list(dict.fromkeys(codes))

        def run(conn: Db) -> list[AreaRow]:
            out: dict[str, AreaRow] = {}
            for chunk in _chunks(wanted, 500):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    "SELECT a.code, a.name, a.level, a.parent_code FROM areas a "
                    "WHERE a.code IN (SELECT ancestor FROM area_closure "
                    f"WHERE descendant IN ({marks}))",
                    chunk,
                )
                for code, name, level, parent in rows:
                    out[code] = AreaRow(code, name, level, parent)
            return list(out.values())

        return await self._read(run)

    async def child_areas(
        self, parent: str | None, *, after: str | None = None, limit: int
    ) -> list[AreaRow]:
        # areas_parent holds (parent_code, code): the page is a range of the index, in order.
        where = "a.parent_code IS NULL" if parent is None else "a.parent_code = ?"
        params: list[Any] = [] if parent is None else [parent]

        def run(conn: Db) -> list[AreaRow]:
            rows = conn.execute(
                f"SELECT {_AREA_COLUMNS} FROM areas a WHERE {where} AND a.code > ? "
                "ORDER BY a.code LIMIT ?",
                [*params, after or "", limit],
            )
            return [AreaRow(*r) for r in rows]

        return await self._read(run)

    async def search_areas(
        self,
        *,
        under: str | None = None,
        name: str | None = None,
        level: str | None = None,
        after: str | None = None,
        limit: int,
    ) -> list[AreaRow]:
        # Beneath an area: its closure rows, a range of the primary key in code order. The whole
        # directory: the areas table in code order (a few thousand rows for a city). Either way
        # the page is read in order from the cursor on, without a sort.
        key = "a.code" if under is None else "c.descendant"
        where = [f"{key} > ?"]
        params: list[Any] = [after or ""]
        if name:
            # Contains the text, literally: '%' and '_' are just characters (not LIKE), and
            # case counts, on both databases (SQLite's instr is PostgreSQL's strpos: neither
            # has the other's). Replacing a non-empty text changes the name iff it occurs.
            where.append("replace(a.name, ?, '') <> a.name")
            params.append(name)
        if level is not None:
            where.append("a.level = ?")
            params.append(level)
        if under is None:
            source = "areas a"
        else:
            source = "area_closure c JOIN areas a ON a.code = c.descendant"
            where[:0] = ["c.ancestor = ?", "c.depth > 0"]
            params.insert(0, under)

        def run(conn: Db) -> list[AreaRow]:
            rows = conn.execute(
                f"SELECT {_AREA_COLUMNS} FROM {source} WHERE {' AND '.join(where)} "
                f"ORDER BY {key} LIMIT ?",
                [*params, limit],
            )
            return [AreaRow(*r) for r in rows]

        return await self._read(run)

    async def area_counts(self, codes: Sequence[str]) -> dict[str, AreaCounts]:
        wanted = list(dict.fromkeys(codes))

        def run(conn: Db) -> dict[str, AreaCounts]:
            totals: dict[str, dict[str, int]] = {code: {} for code in wanted}
            devices: dict[str, dict[str, int]] = {
                code: dict.fromkeys((k.value for k in DeviceKind), 0) for code in wanted
            }
            # One read transaction: every count from the same snapshot, even during an import
            # (persons_with_phone is the difference of two of them).
            conn.execute("BEGIN")
            try:
                for chunk in _chunks(wanted, 500):
                    marks = ",".join("?" * len(chunk))
                    for name, sql in AREA_COUNT_QUERIES.items():
                        rows = conn.execute(sql.format(codes=marks), chunk)
                        if name == "devices":
                            for code, kind, n in rows:
                                devices[code][kind] = int(n)
                        else:
                            for code, n in rows:
                                totals[code][name] = int(n)
            finally:
                conn.execute("COMMIT")
            result: dict[str, AreaCounts] = {}
            for code in wanted:
                persons = totals[code].get("persons", 0)
                result[code] = AreaCounts(
                    villages=totals[code].get("villages", 0),
                    grids=totals[code].get("grids", 0),
                    households=totals[code].get("households", 0),
                    persons=persons,
                    persons_with_phone=persons - totals[code].get("persons_without_phone", 0),
                    devices=devices[code],
                )
            return result

        return await self._read(run)

    # -- warnings ----------------------------------------------------------------------------
    async def create_warning(
        self,
        warning: WarningRecord,
        *,
        idempotency: IdempotencyClaim | None,
        supersedes: Sequence[str] = (),
        cancels: Sequence[str] = (),
        now: float,
    ) -> CreateResult:
        def run(conn: Db) -> CreateResult:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = self._create_warning_tx(
                    conn, warning, idempotency, supersedes, cancels, now
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if result.created:
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
            return result

        # A duty officer is waiting for the 202: ahead of any fan-out's bulk work.
        return await self._write(run, urgent=True)

    @staticmethod
    def _create_warning_tx(
        conn: Db,
        warning: WarningRecord,
        idempotency: IdempotencyClaim | None,
        supersedes: Sequence[str],
        cancels: Sequence[str],
        now: float,
    ) -> CreateResult:
        if idempotency is not None:
            row = conn.execute(
                "SELECT request_hash, warning_id FROM idempotency_keys "
                "WHERE principal = ? AND key = ?",
                (idempotency.principal, idempotency.key),
            ).fetchone()
            if row is not None:
                if row[0] != idempotency.request_hash:
                    raise IdempotencyConflict(row[1])
                return CreateResult(row[1], created=False)
        dup = conn.execute(
            "SELECT id FROM warnings WHERE sender = ? AND identifier = ?",
            (warning.sender, warning.identifier),
        ).fetchone()
        if dup is not None:
            raise DuplicateWarning(dup[0])
        created_at = _iso(now)
        conn.execute(
            "INSERT INTO warnings (id, identifier, sender, sent, status, msg_type, level, event, "
            "headline, description, instruction, area_codes, area_desc, expires, urgency, "
            "certainty, category, language, refs, note, audio_url, audio_sha256, state, "
            "created_by, created_at, plan_rules) VALUES "
            "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                warning.id,
                warning.identifier,
                warning.sender,
                warning.sent.isoformat(),
                warning.status.value,
                warning.msg_type.value,
                warning.level.value,
                warning.event,
                warning.headline,
                warning.description,
                warning.instruction,
                json.dumps(list(warning.area_codes)),
                warning.area_desc,
                warning.expires.isoformat(),
                warning.urgency,
                warning.certainty,
                warning.category,
                warning.language,
                json.dumps(list(warning.references)),
                warning.note,
                warning.audio_url,
                warning.audio_sha256,
                warning.state.value,
                warning.created_by,
                created_at,
                warning.plan_rules,
            ),
        )
        conn.executemany(
            "INSERT INTO warning_areas (warning_id, area_code) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING",
            [(warning.id, code) for code in warning.area_codes],
        )
        if idempotency is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (principal, key, request_hash, warning_id, "
                "created_at) VALUES (?,?,?,?,?)",
                (
                    idempotency.principal,
                    idempotency.key,
                    idempotency.request_hash,
                    warning.id,
                    created_at,
                ),
            )
        _log_warning_event(conn, warning.id, "received", now, {"msg_type": warning.msg_type})
        for old_id in supersedes:
            _stop_warning(conn, old_id, WarningState.SUPERSEDED, warning.id, now)
        for old_id in cancels:
            _stop_warning(conn, old_id, WarningState.CANCELLED, warning.id, now)
        return CreateResult(warning.id, created=True)

    async def expire_warning(self, warning_id: str, *, now: float) -> bool:
        def run(conn: Db) -> bool:
            return _stop_warning(conn, warning_id, WarningState.EXPIRED, None, now)

        return await self._write_tx(run)

    async def idempotent_warning_id(self, claim: IdempotencyClaim) -> str | None:
        def run(conn: Db) -> str | None:
            row = conn.execute(
                "SELECT request_hash, warning_id FROM idempotency_keys "
                "WHERE principal = ? AND key = ?",
                (claim.principal, claim.key),
            ).fetchone()
            if row is None:
                return None
            if row[0] != claim.request_hash:
                raise IdempotencyConflict(row[1])
            return str(row[1])

        return await self._read(run)

    async def get_warning(self, warning_id: str) -> WarningRecord | None:
        def run(conn: Db) -> WarningRecord | None:
            row = conn.execute(
                f"SELECT {_WARNING_COLUMNS} FROM warnings WHERE id = ?", (warning_id,)
            )
            found = row.fetchone()
            return _warning_from_row(found) if found else None

        return await self._read(run)

    async def find_warning(self, sender: str, identifier: str) -> WarningRecord | None:
        def run(conn: Db) -> WarningRecord | None:
            row = conn.execute(
                f"SELECT {_WARNING_COLUMNS} FROM warnings WHERE sender = ? AND identifier = ?",
                (sender, identifier),
            ).fetchone()
            return _warning_from_row(row) if row else None

        return await self._read(run)

    async def list_warnings(
        self,
        *,
        limit: int,
        before: str | None = None,
        status: str | None = None,
        state: WarningState | None = None,
    ) -> list[WarningRecord]:
        def run(conn: Db) -> list[WarningRecord]:
            where = []
            params: list[Any] = []
            if before is not None:
                cursor = conn.execute(
                    "SELECT created_at, id FROM warnings WHERE id = ?", (before,)
                ).fetchone()
                if cursor is None:
                    return []
                where.append("(created_at < ? OR (created_at = ? AND id < ?))")
                params += [cursor[0], cursor[0], cursor[1]]
            if status is not None:
                where.append("status = ?")
                params.append(status)
            if state is not None:
                where.append("state = ?")
                params.append(state.value)
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            rows = conn.execute(
                f"SELECT {_WARNING_COLUMNS} FROM warnings {clause} "
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                [*params, limit],
            )
            return [_warning_from_row(r) for r in rows]

        return await self._read(run)

    async def unplanned_warning_ids(self) -> list[str]:
        def run(conn: Db) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM warnings WHERE planned_at IS NULL AND state = 'active' "
                "ORDER BY created_at"
            )
            return [r[0] for r in rows]

        return await self._read(run)

    async def execute_plan(self, warning_id: str, stage: PlanStage, *, now: float) -> PlanResult:
        from dataclasses import replace

        def run(conn: Db) -> PlanResult:
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _plan_stage_tx(conn, warning_id, stage, now, started)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT" if result.committed else "ROLLBACK")
            if result.committed:
                return replace(result, seconds=time.perf_counter() - started)
            return result

        # The devices stage is small and what the first loudspeaker command waits for.
        return await self._write(run, urgent=stage.number == 1)

    async def plan_counts(self, warning_id: str) -> list[PlanCountRow]:
        def run(conn: Db) -> list[PlanCountRow]:
            rows = conn.execute(
                "SELECT area_code, audience, channel, count FROM plan_counts WHERE warning_id = ?",
                (warning_id,),
            )
            return [PlanCountRow(*r) for r in rows]

        return await self._read(run)

    async def delivery_state_counts(self, warning_id: str) -> dict[str, int]:
        def run(conn: Db) -> dict[str, int]:
            rows = conn.execute(
                "SELECT state, n FROM delivery_state_counts "
                f"WHERE warning_seq = {_SEQ_OF} AND n != 0",
                (warning_id,),
            )
            return {state: int(n) for state, n in rows}

        return await self._read(run)

    async def warning_events(
        self, warning_id: str, *, after_id: int = 0, limit: int = 100
    ) -> list[DeliveryEvent]:
        def run(conn: Db) -> list[DeliveryEvent]:
            rows = conn.execute(
                "SELECT id, at, warning_id, delivery_id, state, attempt, adapter, reason, detail "
                "FROM delivery_events WHERE warning_id = ? AND id > ? ORDER BY id LIMIT ?",
                (warning_id, after_id, limit),
            )
            return [
                DeliveryEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]))
                for r in rows
            ]

        return await self._read(run)

    # -- audit -------------------------------------------------------------------------------
    async def append_audit(
        self, *, principal: str, role: str, action: str, target: str, detail: dict[str, Any]
    ) -> None:
        at = _iso(time.time())
        payload = json.dumps(detail, ensure_ascii=False, default=str)

        def run(conn: Db) -> None:
            conn.execute(
                "INSERT INTO audit_log (at, principal, role, action, target, detail) "
                "VALUES (?,?,?,?,?,?)",
                (at, principal, role, action, target, payload),
            )

        # In a write transaction: on PostgreSQL that takes the writer lock, so the audit log's
        # id order is its commit order on every node (its pages are read by id).
        await self._write_tx(run)

    async def list_audit(self, *, limit: int, before_id: int | None = None) -> list[AuditEntry]:
        def run(conn: Db) -> list[AuditEntry]:
            rows = conn.execute(
                "SELECT id, at, principal, role, action, target, detail FROM audit_log "
                "WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before_id if before_id is not None else 2**62, limit),
            )
            return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

        return await self._read(run)


_WARNING_COLUMNS = (
    "id, identifier, sender, sent, status, msg_type, level, event, headline, description, "
    "instruction, area_codes, area_desc, expires, urgency, certainty, category, language, refs, "
    "note, audio_url, audio_sha256, state, created_by, plan_rules"
)


def _warning_from_row(row: Sequence[Any]) -> WarningRecord:
    return WarningRecord(
        id=row[0],
        identifier=row[1],
        sender=row[2],
        sent=datetime.fromisoformat(row[3]),
        status=Status(row[4]),
        msg_type=MsgType(row[5]),
        level=Level(row[6]),
        event=row[7],
        headline=row[8],
        description=row[9],
        instruction=row[10],
        area_codes=tuple(json.loads(row[11])),
        area_desc=row[12],
        expires=datetime.fromisoformat(row[13]),
        urgency=row[14],
        certainty=row[15],
        category=row[16],
        language=row[17],
        references=tuple(json.loads(row[18])),
        note=row[19],
        audio_url=row[20],
        audio_sha256=row[21],
        state=WarningState(row[22]),
        created_by=row[23],
        plan_rules=row[24],
    )


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


# -- planning ---------------------------------------------------------------------------------
# The warning's covered villages: areas of level village under any of its target codes.
_COVERED_VILLAGES = (
    "SELECT DISTINCT c.descendant AS code FROM area_closure c "
    "JOIN areas a ON a.code = c.descendant "
    "WHERE c.ancestor IN (SELECT wa.area_code FROM warning_areas wa WHERE wa.warning_id = ?) "
    "AND a.level = 'village'"
)
# Coverage denominators per covered village, each counted through an index without reading
# table rows (grids_village, grid_members' key, households_grid, persons_village). The
# ``WHERE true`` is SQLite's: an upsert's SELECT needs a WHERE to tell its ON from a join's.
_COVERAGE_TARGETS = (
    "INSERT INTO coverage_targets (warning_seq, village_code, grid_members, households, "
    "persons) SELECT ?, v.code, "
    "(SELECT count(DISTINCT gm.person_id) FROM grids g "
    "JOIN grid_members gm ON gm.grid_id = g.id WHERE g.village_code = v.code), "
    "(SELECT count(*) FROM grids g JOIN households h ON h.grid_id = g.id "
    "WHERE g.village_code = v.code), "
    "(SELECT count(*) FROM persons p WHERE p.village_code = v.code) "
    "FROM ({villages}) v WHERE true "
    "ON CONFLICT (warning_seq, village_code) DO NOTHING"
)


def _plan_stage_tx(
    conn: Db, warning_id: str, stage: PlanStage, now: float, started: float
) -> PlanResult:
    """One stage of a plan inside the caller's write transaction; ``committed`` says whether
    the caller should commit."""
    row = conn.execute(
        "SELECT seq, state, planned_at, plan_stage FROM warnings WHERE id = ?", (warning_id,)
    ).fetchone()
    if row is None or row[1] != WarningState.ACTIVE or row[2] is not None:
        stage_now = 0 if row is None else int(row[3])
        return PlanResult(
            warning_id, 0, time.perf_counter() - started, False, stage=stage_now, stopped=True
        )
    seq, done = int(row[0]), int(row[3])
    if stage.number <= done:
        return PlanResult(warning_id, 0, time.perf_counter() - started, False, stage=done)
    if stage.number != done + 1:
        raise ValueError(
            f"plan stage {stage.number} of warning {warning_id} after stage {done}: "
            "stages run in order"
        )
    count = 0
    if stage.statements:
        (before,) = conn.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()
        for statement in stage.statements:
            count += conn.execute(statement.sql, statement.params).rowcount
    if count:
        # The stage's rows are one contiguous id range: every insert into deliveries holds the
        # writer lock, and this stage's ran in one transaction. The range need not start at
        # ``before + 1``: a PostgreSQL sequence skips the ids of rolled-back inserts.
        (first_id,) = conn.execute(
            "SELECT id FROM deliveries WHERE id > ? ORDER BY id LIMIT 1", (before,)
        ).fetchone()
        (last_id,) = conn.execute("SELECT max(id) FROM deliveries").fetchone()
        first_id, last_id = int(first_id), int(last_id)
        if last_id - first_id + 1 != count:
            raise RuntimeError(
                f"plan stage {stage.number} of warning {warning_id} wrote {count} deliveries "
                f"with ids {first_id}..{last_id}: not one range (another writer?)"
            )
        # Counting them is a sequential scan of pages still in cache.
        conn.execute(
            "INSERT INTO plan_counts (warning_id, area_code, audience, channel, count) "
            "SELECT ?, area_code, audience, channel, count(*) FROM deliveries "
            "WHERE id BETWEEN ? AND ? GROUP BY area_code, audience, channel "
            "ON CONFLICT (warning_id, area_code, audience, channel) "
            "DO UPDATE SET count = plan_counts.count + excluded.count",
            (warning_id, first_id, last_id),
        )
        conn.execute(
            "INSERT INTO delivery_state_counts (warning_seq, state, n) "
            "SELECT ?, state, count(*) FROM deliveries WHERE id BETWEEN ? AND ? GROUP BY state "
            "ON CONFLICT (warning_seq, state) "
            "DO UPDATE SET n = delivery_state_counts.n + excluded.n",
            (seq, first_id, last_id),
        )
        conn.execute(
            "INSERT INTO delivery_ranges (warning_seq, first_id, last_id) VALUES (?, ?, ?)",
            (seq, first_id, last_id),
        )
    if stage.coverage is not None:
        villages = _COVERED_VILLAGES
        params: list[Any] = [seq, warning_id]
        if stage.coverage.after is not None:
            villages += " AND c.descendant > ?"
            params.append(stage.coverage.after)
        if stage.coverage.upto is not None:
            villages += " AND c.descendant <= ?"
            params.append(stage.coverage.upto)
        conn.execute(_COVERAGE_TARGETS.format(villages=villages), params)
    total = 0
    if stage.last:
        # The plan's own rows: the engine's visit tasks (added to the same warning while it
        # is planned) are not part of it.
        (total,) = conn.execute(
            "SELECT coalesce(sum(count), 0) FROM plan_counts "
            "WHERE warning_id = ? AND audience != 'visit'",
            (warning_id,),
        ).fetchone()
        conn.execute(
            "UPDATE warnings SET plan_stage = ?, planned_at = ? WHERE seq = ?",
            (stage.number, _iso(now), seq),
        )
        _log_warning_event(
            conn,
            warning_id,
            "planned",
            now,
            {"deliveries": int(total), "plan_stage": stage.number},
        )
    else:
        conn.execute("UPDATE warnings SET plan_stage = ? WHERE seq = ?", (stage.number, seq))
    return PlanResult(
        warning_id,
        count,
        time.perf_counter() - started,
        stage.last,
        stage=stage.number,
        committed=True,
        total_deliveries=int(total),
    )
