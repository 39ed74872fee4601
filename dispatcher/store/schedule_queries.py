"""The store's schedules and schedule runs (:class:`ScheduleStore`), on either database.

Times are kept as UTC ISO 8601 text with microseconds, one format throughout, so text order
is time order. A fire time is claimed by inserting its run: the unique key (schedule_id,
fire_at) lets exactly one insert succeed, whichever node or task makes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from dispatcher.store.connections import Db, StoreConnections
from dispatcher.store.schedules_base import (
    ConfigSync,
    NewSchedule,
    RunClaim,
    RunKind,
    RunState,
    ScheduleExists,
    ScheduleRow,
    ScheduleRunRow,
    ScheduleSource,
)

_SCHEDULE_COLUMNS = (
    "id, source, spec, cron, enabled, active_since, created_by, created_at, updated_at"
)
_RUN_COLUMNS = (
    "id, schedule_id, fire_at, kind, state, started_at, warning_id, node, principal, note, "
    "report, reported_at"
)


def _text(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("schedule times must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _schedule(row: Sequence[Any]) -> ScheduleRow:
    return ScheduleRow(
        id=row[0],
        source=ScheduleSource(row[1]),
        spec=row[2],
        cron=row[3],
        enabled=bool(row[4]),
        active_since=_time(row[5]),
        created_by=row[6],
        created_at=_time(row[7]),
        updated_at=_time(row[8]),
    )


def _run(row: Sequence[Any]) -> ScheduleRunRow:
    return ScheduleRunRow(
        id=int(row[0]),
        schedule_id=row[1],
        fire_at=_time(row[2]),
        kind=RunKind(row[3]),
        state=RunState(row[4]),
        started_at=_time(row[5]),
        warning_id=row[6],
        node=row[7],
        principal=row[8],
        note=row[9],
        report=json.loads(row[10]) if row[10] is not None else None,
        reported_at=_time(row[11]) if row[11] is not None else None,
    )


class ScheduleQueries(StoreConnections):
    async def list_schedules(self) -> list[ScheduleRow]:
        def run(conn: Db) -> list[ScheduleRow]:
            rows = conn.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE deleted_at IS NULL ORDER BY id"
            )
            return [_schedule(r) for r in rows]

        return await self._read(run)

    async def get_schedule(self, schedule_id: str) -> ScheduleRow | None:
        def run(conn: Db) -> ScheduleRow | None:
            row = conn.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE id = ? AND deleted_at IS NULL",
                (schedule_id,),
            ).fetchone()
            return _schedule(row) if row is not None else None

        return await self._read(run)

    async def create_schedule(self, schedule: NewSchedule, *, now: datetime) -> ScheduleRow:
        at = _text(now)

        def run(conn: Db) -> ScheduleRow:
            row = conn.execute(
                "SELECT deleted_at FROM schedules WHERE id = ?", (schedule.id,)
            ).fetchone()
            if row is not None and row[0] is None:
                raise ScheduleExists(schedule.id)
            # A removed schedule's id starts afresh: active from now, so the fire times
            # between its removal and now are not recorded as missed.
            conn.execute(
                "INSERT INTO schedules (id, source, cron, spec, enabled, active_since, "
                "created_by, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET source = excluded.source, cron = excluded.cron, "
                "spec = excluded.spec, enabled = excluded.enabled, "
                "active_since = excluded.active_since, created_by = excluded.created_by, "
                "created_at = excluded.created_at, updated_at = excluded.updated_at, "
                "deleted_at = NULL",
                (
                    schedule.id,
                    ScheduleSource.API.value,
                    schedule.cron,
                    schedule.spec,
                    int(schedule.enabled),
                    at,
                    schedule.created_by,
                    at,
                    at,
                ),
            )
            return _schedule(
                conn.execute(
                    f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE id = ?", (schedule.id,)
                ).fetchone()
            )

        return await self._write_tx(run)

    async def sync_config_schedules(
        self, schedules: Sequence[NewSchedule], *, now: datetime
    ) -> ConfigSync:
        at = _text(now)

        def run(conn: Db) -> ConfigSync:
            existing = {
                r[0]: r[1:]
                for r in conn.execute(
                    "SELECT id, source, cron, spec, enabled, deleted_at FROM schedules"
                )
            }
            added: list[str] = []
            changed: list[str] = []
            taken_over: list[str] = []
            for schedule in schedules:
                old = existing.get(schedule.id)
                if old is None or old[4] is not None:
                    added.append(schedule.id)
                    conn.execute(
                        "INSERT INTO schedules (id, source, cron, spec, enabled, active_since, "
                        "created_by, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT (id) DO UPDATE SET source = excluded.source, "
                        "cron = excluded.cron, spec = excluded.spec, enabled = excluded.enabled, "
                        "active_since = excluded.active_since, created_by = excluded.created_by, "
                        "created_at = excluded.created_at, updated_at = excluded.updated_at, "
                        "deleted_at = NULL",
                        (
                            schedule.id,
                            ScheduleSource.CONFIG.value,
                            schedule.cron,
                            schedule.spec,
                            int(schedule.enabled),
                            at,
                            schedule.created_by,
                            at,
                            at,
                        ),
                    )
                    continue
                source, cron, spec, enabled, _ = old
                if source != ScheduleSource.CONFIG.value:
                    taken_over.append(schedule.id)
                elif (cron, spec, bool(enabled)) == (
                    schedule.cron,
                    schedule.spec,
                    schedule.enabled,
                ):
                    continue
                else:
                    changed.append(schedule.id)
                anew = cron != schedule.cron or (schedule.enabled and not enabled)
                conn.execute(
                    "UPDATE schedules SET source = ?, cron = ?, spec = ?, enabled = ?, "
                    "active_since = CASE WHEN ? = 1 THEN ? ELSE active_since END, updated_at = ? "
                    "WHERE id = ?",
                    (
                        ScheduleSource.CONFIG.value,
                        schedule.cron,
                        schedule.spec,
                        int(schedule.enabled),
                        int(anew),
                        at,
                        at,
                        schedule.id,
                    ),
                )
            wanted = {s.id for s in schedules}
            removed = sorted(
                sid
                for sid, (source, *_, deleted) in existing.items()
                if source == ScheduleSource.CONFIG.value and deleted is None and sid not in wanted
            )
            conn.executemany(
                "UPDATE schedules SET deleted_at = ?, updated_at = ? WHERE id = ?",
                [(at, at, sid) for sid in removed],
            )
            return ConfigSync(
                added=tuple(added),
                changed=tuple(changed),
                removed=tuple(removed),
                taken_over=tuple(taken_over),
            )

        return await self._write_tx(run)

    async def delete_schedule(self, schedule_id: str, *, now: datetime) -> bool:
        at = _text(now)

        def run(conn: Db) -> bool:
            cursor = conn.execute(
                "UPDATE schedules SET deleted_at = ?, updated_at = ? "
                "WHERE id = ? AND deleted_at IS NULL",
                (at, at, schedule_id),
            )
            return cursor.rowcount > 0

        return await self._write_tx(run)

    async def claim_schedule_run(self, claim: RunClaim, *, now: datetime) -> ScheduleRunRow | None:
        values = (
            claim.schedule_id,
            _text(claim.fire_at),
            claim.kind.value,
            claim.state.value,
            _text(now),
            claim.node,
            claim.principal,
            claim.note,
        )

        def run(conn: Db) -> ScheduleRunRow | None:
            # The unique key decides: a fire time already recorded (by this node or another)
            # inserts nothing.
            # fetchall: a RETURNING statement must run to its end before the commit.
            rows = conn.execute(
                "INSERT INTO schedule_runs (schedule_id, fire_at, kind, state, started_at, node, "
                "principal, note) VALUES (?,?,?,?,?,?,?,?) "
                f"ON CONFLICT (schedule_id, fire_at) DO NOTHING RETURNING {_RUN_COLUMNS}",
                values,
            ).fetchall()
            return _run(rows[0]) if rows else None

        # A claim is what a run waits for: ahead of a fan-out's bulk work.
        return await self._write_tx(run, urgent=True)

    async def record_missed_runs(
        self, schedule_id: str, fires: Sequence[tuple[datetime, str]], *, node: str, now: datetime
    ) -> int:
        rows = [
            (
                schedule_id,
                _text(fire),
                RunKind.CRON.value,
                RunState.MISSED.value,
                _text(now),
                node,
                note,
            )
            for fire, note in fires
        ]

        def run(conn: Db) -> int:
            return conn.executemany(
                "INSERT INTO schedule_runs (schedule_id, fire_at, kind, state, started_at, node, "
                "note) VALUES (?,?,?,?,?,?,?) ON CONFLICT (schedule_id, fire_at) DO NOTHING",
                rows,
            ).rowcount

        return await self._write_tx(run)

    async def finish_schedule_run(
        self, run_id: int, state: RunState, *, warning_id: str | None, note: str
    ) -> ScheduleRunRow:
        def run(conn: Db) -> ScheduleRunRow:
            rows = conn.execute(
                "UPDATE schedule_runs SET state = ?, warning_id = ?, note = ? WHERE id = ? "
                f"RETURNING {_RUN_COLUMNS}",
                (state.value, warning_id, note, run_id),
            ).fetchall()
            if not rows:
                raise LookupError(f"no schedule run {run_id}")
            return _run(rows[0])

        return await self._write_tx(run, urgent=True)

    async def drop_schedule_run(self, run_id: int) -> None:
        def run(conn: Db) -> None:
            conn.execute("DELETE FROM schedule_runs WHERE id = ?", (run_id,))

        await self._write_tx(run)

    async def last_cron_fire(self, schedule_id: str) -> datetime | None:
        def run(conn: Db) -> datetime | None:
            (newest,) = conn.execute(
                "SELECT max(fire_at) FROM schedule_runs WHERE schedule_id = ? AND kind = ?",
                (schedule_id, RunKind.CRON.value),
            ).fetchone()
            return _time(newest) if newest is not None else None

        return await self._read(run)

    async def list_schedule_runs(
        self, schedule_id: str, *, limit: int, before: datetime | None = None
    ) -> list[ScheduleRunRow]:
        def run(conn: Db) -> list[ScheduleRunRow]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM schedule_runs WHERE schedule_id = ? "
                "AND fire_at < ? ORDER BY fire_at DESC LIMIT ?",
                (schedule_id, _text(before) if before is not None else "9999", limit),
            )
            return [_run(r) for r in rows]

        return await self._read(run)

    async def get_schedule_run(self, run_id: int) -> ScheduleRunRow | None:
        def run(conn: Db) -> ScheduleRunRow | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM schedule_runs WHERE id = ?", (run_id,)
            ).fetchone()
            return _run(row) if row is not None else None

        return await self._read(run)

    async def schedule_run_for_warning(self, warning_id: str) -> ScheduleRunRow | None:
        def run(conn: Db) -> ScheduleRunRow | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM schedule_runs WHERE warning_id = ?", (warning_id,)
            ).fetchone()
            return _run(row) if row is not None else None

        return await self._read(run)

    async def stale_schedule_runs(self, *, started_before: datetime) -> list[ScheduleRunRow]:
        def run(conn: Db) -> list[ScheduleRunRow]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM schedule_runs WHERE state = ? AND started_at < ? "
                "ORDER BY id",
                (RunState.RUNNING.value, _text(started_before)),
            )
            return [_run(r) for r in rows]

        return await self._read(run)

    async def unreported_schedule_runs(self) -> list[ScheduleRunRow]:
        def run(conn: Db) -> list[ScheduleRunRow]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM schedule_runs "
                "WHERE state = 'ran' AND report IS NULL ORDER BY started_at"
            )
            return [_run(r) for r in rows]

        return await self._read(run)

    async def set_schedule_run_report(
        self, run_id: int, report: dict[str, Any], *, now: datetime
    ) -> None:
        payload = json.dumps(report, ensure_ascii=False, default=str)

        def run(conn: Db) -> None:
            conn.execute(
                "UPDATE schedule_runs SET report = ?, reported_at = ? WHERE id = ?",
                (payload, _text(now), run_id),
            )

        await self._write_tx(run)
