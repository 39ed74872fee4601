"""Schedules in the store, and one run of a schedule.

A run claims its fire time (the run row's unique key: exactly one node or task gets it), makes
a Test or Exercise warning through the :class:`WarningService` — with the schedule's rules in
place of the level policy's — and records the outcome on the run. Claim first, warning second:
a node that stops in between leaves the claim, so a fire time never makes two warnings; the
next start settles the claim (:meth:`ScheduleService.settle_stale_runs`). The warning's CAP
identifier is made from the schedule and the fire time, so the store's unique (sender,
identifier) is a second guard and lets a settled claim find its warning.

Used by the API (create, list, remove, run now) and by the runner (config sync, cron runs).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter

from dispatcher.config import ApiRole
from dispatcher.domain import WarningRecord
from dispatcher.schedules.spec import ScheduleInput, ScheduleSpec
from dispatcher.schedules.timing import SHANGHAI
from dispatcher.store.base import IdempotencyClaim, IdempotencyConflict
from dispatcher.store.schedules_base import (
    NewSchedule,
    RunClaim,
    RunKind,
    RunState,
    ScheduleExists,
    ScheduleRow,
    ScheduleRunRow,
    ScheduleSource,
    ScheduleStore,
)
from dispatcher.warning_input import WarningInput
from dispatcher.warning_service import Principal, WarningRejected, WarningService

log = structlog.get_logger(__name__)

#: Who makes the warnings of cron runs (in the audit log and the warnings' created_by).
SCHEDULER = Principal("scheduler", ApiRole.ADMIN)
#: A run later than this after its fire time says so in its note.
_LATE_NOTE_AFTER = timedelta(minutes=1)
#: A warning refusal names the warning's field; the schedule's is called otherwise.
_FIELDS = {"area_codes": "areas", "description": "message", "expires": "expires_after"}


class SchedulesStore(ScheduleStore, Protocol):
    """The store as schedules use it: their own tables and a few of the warnings'."""

    async def unknown_area_codes(self, codes: Sequence[str]) -> list[str]: ...

    async def find_warning(self, sender: str, identifier: str) -> WarningRecord | None: ...

    async def idempotent_warning_id(self, claim: IdempotencyClaim) -> str | None: ...

    async def append_audit(
        self, *, principal: str, role: str, action: str, target: str, detail: dict[str, Any]
    ) -> None: ...


class ScheduleRejected(WarningRejected):
    """A schedule request that is understood but refused (the API answers it like a refused
    warning: status, code, message, field)."""


class ScheduleListener(Protocol):
    """Told about changes (the runner: to install or remove the schedule's cron job, and to
    make the report after a run)."""

    def schedule_changed(self, schedule_id: str) -> None: ...

    def run_recorded(self, schedule: Schedule, run: ScheduleRunRow) -> None: ...


@dataclass(frozen=True, slots=True)
class Schedule:
    row: ScheduleRow
    spec: ScheduleSpec

    @property
    def id(self) -> str:
        return self.row.id


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What handling one fire time did. ``run`` is None when it was claimed elsewhere."""

    run: ScheduleRunRow | None
    #: Why the warning was refused (the run is recorded failed).
    rejection: WarningRejected | None = None
    #: A run-now repeated with the same Idempotency-Key: the earlier run, nothing new.
    replayed: bool = False


def node_name() -> str:
    """host:pid, recorded on the runs a node claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def warning_identifier(schedule_id: str, fire_at: datetime, kind: RunKind) -> str:
    """The CAP identifier of a run's warning: one per schedule and fire time."""
    stamp = fire_at.astimezone(UTC)
    if kind is RunKind.CRON:
        return f"tocsin-schedule-{schedule_id}-{stamp:%Y%m%dT%H%M%SZ}"
    return f"tocsin-schedule-{schedule_id}-run-{stamp:%Y%m%dT%H%M%S%fZ}"


class ScheduleService:
    def __init__(
        self,
        store: SchedulesStore,
        warnings: WarningService,
        *,
        sender: str,
        clock: Callable[[], float] = time.time,
        node: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``sender``: the CAP sender the warning service gives the warnings (cap.sender)."""
        self.store = store
        self._warnings = warnings
        self._sender = sender
        self._clock = clock
        self.node = node or node_name()
        self.listener: ScheduleListener | None = None
        self._runs = Counter(
            "tocsin_schedule_runs",
            "Fire times of schedules handled by this node, by outcome.",
            ["state"],
            registry=registry or CollectorRegistry(),
        )

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # -- schedules ------------------------------------------------------------------------------
    async def schedules(self) -> list[Schedule]:
        return [_schedule(row) for row in await self.store.list_schedules()]

    async def find(self, schedule_id: str) -> Schedule | None:
        row = await self.store.get_schedule(schedule_id)
        return _schedule(row) if row is not None else None

    async def get(self, schedule_id: str) -> Schedule:
        found = await self.find(schedule_id)
        if found is None:
            raise ScheduleRejected("not_found", f"no schedule {schedule_id}", http_status=404)
        return found

    async def create(self, data: ScheduleInput, *, principal: Principal) -> Schedule:
        spec = data.with_id(data.id or f"s-{uuid.uuid4().hex[:10]}")
        unknown = await self.store.unknown_area_codes(spec.areas)
        if unknown:
            shown = ", ".join(unknown[:20]) + (" …" if len(unknown) > 20 else "")
            raise ScheduleRejected("unknown_area", f"unknown area code(s): {shown}", field="areas")
        try:
            row = await self.store.create_schedule(
                NewSchedule(spec.id, spec.stored(), spec.cron, spec.enabled, principal.name),
                now=self.now(),
            )
        except ScheduleExists:
            raise ScheduleRejected(
                "schedule_exists",
                f"a schedule {spec.id} exists: remove it first, or choose another id",
                http_status=409,
                field="id",
            ) from None
        await self._audit(principal, "schedule.create", spec.id, spec.model_dump(mode="json"))
        log.info("schedule added", schedule_id=spec.id, cron=spec.cron, principal=principal.name)
        self._changed(spec.id)
        return Schedule(row, spec)

    async def delete(self, schedule_id: str, *, principal: Principal) -> Schedule:
        schedule = await self.get(schedule_id)
        if schedule.row.source is ScheduleSource.CONFIG:
            raise ScheduleRejected(
                "config_schedule",
                f"schedule {schedule_id} comes from the config file: edit the config (remove "
                "its [[schedules]] block) to remove it",
                http_status=409,
            )
        if not await self.store.delete_schedule(schedule_id, now=self.now()):
            raise ScheduleRejected("not_found", f"no schedule {schedule_id}", http_status=404)
        await self._audit(principal, "schedule.delete", schedule_id, {"cron": schedule.spec.cron})
        log.info("schedule removed", schedule_id=schedule_id, principal=principal.name)
        self._changed(schedule_id)
        return schedule

    async def sync_config(self, specs: Sequence[ScheduleSpec]) -> None:
        """Make the config's ``[[schedules]]`` what the store holds as config schedules."""
        result = await self.store.sync_config_schedules(
            [NewSchedule(s.id, s.stored(), s.cron, s.enabled, "config") for s in specs],
            now=self.now(),
        )
        config = Principal("config", ApiRole.ADMIN)
        for action, ids in (
            ("schedule.create", result.added),
            ("schedule.change", result.changed + result.taken_over),
            ("schedule.delete", result.removed),
        ):
            for schedule_id in ids:
                await self._audit(config, action, schedule_id, {"source": "config"})
        for schedule_id in result.taken_over:
            log.warning(
                "the config defines a schedule the API had added; the config's wins",
                schedule_id=schedule_id,
            )
        if result.added or result.changed or result.removed or result.taken_over:
            log.info(
                "config schedules",
                added=list(result.added),
                changed=list(result.changed + result.taken_over),
                removed=list(result.removed),
            )
        unknown = await self.store.unknown_area_codes(sorted({a for s in specs for a in s.areas}))
        for spec in specs:
            missing = [code for code in spec.areas if code in unknown]
            if missing:
                # Its runs will be refused and recorded failed: say so now, not at 10:00 Monday.
                log.error("schedule targets unknown area codes", schedule_id=spec.id, areas=missing)

    async def runs(
        self, schedule_id: str, *, limit: int, before: datetime | None = None
    ) -> list[ScheduleRunRow]:
        await self.get(schedule_id)
        return await self.store.list_schedule_runs(schedule_id, limit=limit, before=before)

    # -- runs -----------------------------------------------------------------------------------
    async def run_now(
        self,
        schedule_id: str,
        *,
        principal: Principal,
        force: bool = False,
        idempotency: IdempotencyClaim | None = None,
    ) -> RunOutcome:
        """Run the schedule once now, whether or not it is enabled. Refused inside its quiet
        hours unless ``force``."""
        schedule = await self.get(schedule_id)
        if idempotency is not None:
            replay = await self._replayed(idempotency)
            if replay is not None:
                return replay
        now = self.now()
        quiet = schedule.spec.quiet
        if quiet is not None and quiet.contains(now) and not force:
            local = now.astimezone(SHANGHAI).strftime("%H:%M")
            raise ScheduleRejected(
                "quiet_hours",
                f"it is {local} in Asia/Shanghai, inside the schedule's quiet hours ({quiet}): "
                "pass force=true to run it anyway",
                http_status=409,
                field="force",
            )
        outcome = await self.fire(
            schedule, now, kind=RunKind.MANUAL, principal=principal, idempotency=idempotency
        )
        if outcome.run is not None and not outcome.replayed:
            await self._audit(
                principal,
                "schedule.run",
                schedule_id,
                {
                    "run_id": outcome.run.id,
                    "state": outcome.run.state.value,
                    "warning_id": outcome.run.warning_id,
                    "force": force,
                },
            )
        return outcome

    async def fire(
        self,
        schedule: Schedule,
        fire_at: datetime,
        *,
        kind: RunKind,
        principal: Principal = SCHEDULER,
        idempotency: IdempotencyClaim | None = None,
    ) -> RunOutcome:
        """Handle one fire time: claim it, then make its warning — or, for a cron run inside
        the quiet hours, record it skipped. ``run`` is None when it was claimed already."""
        now = self.now()
        spec = schedule.spec
        quiet = spec.quiet
        if kind is RunKind.CRON and quiet is not None and quiet.contains(now):
            skipped = await self.store.claim_schedule_run(
                RunClaim(
                    schedule.id,
                    fire_at,
                    kind,
                    RunState.SKIPPED_QUIET,
                    self.node,
                    principal.name,
                    f"inside the quiet hours {quiet} (Asia/Shanghai): nothing was sent",
                ),
                now=now,
            )
            if skipped is not None:
                self._runs.labels(state=skipped.state.value).inc()
                log.warning(
                    "scheduled run skipped: quiet hours",
                    schedule_id=schedule.id,
                    fire_at=fire_at.isoformat(),
                    quiet_hours=str(quiet),
                )
            return RunOutcome(skipped)
        late = now - fire_at
        note = (
            f"ran {_span(late)} late: the daemon was not running at the fire time"
            if kind is RunKind.CRON and late > _LATE_NOTE_AFTER
            else ""
        )
        run = await self.store.claim_schedule_run(
            RunClaim(schedule.id, fire_at, kind, RunState.RUNNING, self.node, principal.name, note),
            now=now,
        )
        if run is None:
            log.info(
                "fire time claimed elsewhere", schedule_id=schedule.id, fire_at=fire_at.isoformat()
            )
            return RunOutcome(None)
        identifier = warning_identifier(schedule.id, fire_at, kind)
        data = WarningInput(
            level=spec.level,
            event=spec.event,
            headline=spec.headline,
            description=spec.message,
            area_codes=list(spec.areas),
            expires=(now + timedelta(seconds=spec.expires_after)).replace(microsecond=0),
            status=spec.status.status,
            identifier=identifier,
            sender=self._sender,
            note=f"schedule {schedule.id}, {kind.value} run for "
            f"{fire_at.astimezone(SHANGHAI):%Y-%m-%d %H:%M} Asia/Shanghai",
        )
        try:
            submission = await self._warnings.submit(
                data, principal=principal, idempotency=idempotency, plan_rules=spec.rules
            )
        except WarningRejected as exc:
            if exc.code == "duplicate_identifier":
                existing = await self.store.find_warning(self._sender, identifier)
                if existing is not None:
                    return await self._finish(schedule, run, RunState.RAN, existing.id, note)
            rejection = WarningRejected(
                exc.code,
                exc.message,
                http_status=exc.http_status,
                field=_FIELDS.get(exc.field or "", exc.field),
            )
            failed = await self._finish(
                schedule, run, RunState.FAILED, None, f"{exc.code}: {exc.message}"
            )
            return RunOutcome(failed.run, rejection=rejection)
        except Exception:
            # The claim stays ``running``; the next start settles it.
            log.exception("scheduled run failed", schedule_id=schedule.id, run_id=run.id)
            raise
        if not submission.created:
            # The same Idempotency-Key raced this request: that request's run stands.
            await self.store.drop_schedule_run(run.id)
            earlier = await self.store.schedule_run_for_warning(submission.warning.id)
            return RunOutcome(earlier, replayed=True)
        return await self._finish(schedule, run, RunState.RAN, submission.warning.id, note)

    async def settle_stale_runs(self, *, older_than: float = 60.0) -> list[ScheduleRunRow]:
        """Claims left ``running`` by a node that stopped while making the warning (a claim
        takes well under a second): ran, when the warning was stored after all (found by its
        identifier), otherwise failed."""
        cutoff = self.now() - timedelta(seconds=older_than)
        settled = []
        for run in await self.store.stale_schedule_runs(started_before=cutoff):
            warning = await self.store.find_warning(
                self._sender, warning_identifier(run.schedule_id, run.fire_at, run.kind)
            )
            if warning is not None:
                row = await self.store.finish_schedule_run(
                    run.id, RunState.RAN, warning_id=warning.id, note=run.note
                )
            else:
                row = await self.store.finish_schedule_run(
                    run.id,
                    RunState.FAILED,
                    warning_id=None,
                    note="the daemon stopped while making this run's warning; nothing was sent",
                )
            log.warning(
                "settled an interrupted scheduled run",
                schedule_id=run.schedule_id,
                run_id=run.id,
                state=row.state.value,
            )
            settled.append(row)
        return settled

    async def record_missed(self, schedule: Schedule, fires: Sequence[tuple[datetime, str]]) -> int:
        count = await self.store.record_missed_runs(
            schedule.id, fires, node=self.node, now=self.now()
        )
        if count:
            self._runs.labels(state=RunState.MISSED.value).inc(count)
        return count

    async def _finish(
        self,
        schedule: Schedule,
        run: ScheduleRunRow,
        state: RunState,
        warning_id: str | None,
        note: str,
    ) -> RunOutcome:
        done = await self.store.finish_schedule_run(run.id, state, warning_id=warning_id, note=note)
        self._runs.labels(state=state.value).inc()
        fields = {
            "schedule_id": schedule.id,
            "run_id": done.id,
            "fire_at": done.fire_at.isoformat(),
            "kind": done.kind.value,
            "warning_id": warning_id,
            "note": note,
        }
        if state is RunState.RAN:
            log.info("scheduled run", status=schedule.spec.status.value, **fields)
            if self.listener is not None:
                self.listener.run_recorded(schedule, done)
        else:
            log.error("scheduled run failed", **fields)
        return RunOutcome(done)

    async def _replayed(self, idempotency: IdempotencyClaim) -> RunOutcome | None:
        try:
            warning_id = await self.store.idempotent_warning_id(idempotency)
        except IdempotencyConflict as exc:
            raise ScheduleRejected(
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request "
                f"(warning {exc.warning_id})",
                http_status=409,
            ) from None
        if warning_id is None:
            return None
        earlier = await self.store.schedule_run_for_warning(warning_id)
        if earlier is None:
            raise ScheduleRejected(
                "idempotency_key_reused",
                f"this Idempotency-Key was already used for warning {warning_id}",
                http_status=409,
            )
        return RunOutcome(earlier, replayed=True)

    async def _audit(
        self, principal: Principal, action: str, target: str, detail: dict[str, Any]
    ) -> None:
        await self.store.append_audit(
            principal=principal.name,
            role=principal.role.value,
            action=action,
            target=target,
            detail=detail,
        )

    def _changed(self, schedule_id: str) -> None:
        if self.listener is not None:
            self.listener.schedule_changed(schedule_id)


def _schedule(row: ScheduleRow) -> Schedule:
    return Schedule(row, ScheduleSpec.from_stored(row.spec))


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
