"""What the store keeps of scheduled test broadcasts and drills: schedules and their runs.

The schedule itself travels as the JSON of :class:`dispatcher.schedules.spec.ScheduleSpec`;
the store only looks at the columns it needs (source, enabled, when it became active). Times
are aware UTC datetimes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class ScheduleSource(enum.StrEnum):
    #: ``[[schedules]]`` in the config: upserted at start, changed only by editing the config.
    CONFIG = "config"
    API = "api"


class RunKind(enum.StrEnum):
    #: A fire time of the schedule's cron expression.
    CRON = "cron"
    #: Run now, asked for over the API (its fire time is the request's time).
    MANUAL = "manual"


class RunState(enum.StrEnum):
    #: Claimed; its warning is being made (a node that stops here leaves it for the next start).
    RUNNING = "running"
    #: A warning was made.
    RAN = "ran"
    #: The daemon was not running at the fire time and it is older than the grace window.
    MISSED = "missed"
    #: The run would have fallen inside the schedule's quiet hours.
    SKIPPED_QUIET = "skipped_quiet"
    #: The warning could not be made (an unknown area, an expiry too far …): ``note`` says why.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    id: str
    source: ScheduleSource
    #: The ScheduleSpec as JSON.
    spec: str
    #: Its cron expression (also in ``spec``): a changed cron makes the schedule active anew.
    cron: str
    enabled: bool
    active_since: datetime
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ScheduleRunRow:
    id: int
    schedule_id: str
    fire_at: datetime
    kind: RunKind
    state: RunState
    started_at: datetime
    warning_id: str | None
    node: str
    principal: str
    note: str
    #: The test report's summary, once it was made.
    report: dict[str, Any] | None = None
    reported_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RunClaim:
    """A fire time a node wants to handle, and in which state it records it."""

    schedule_id: str
    fire_at: datetime
    kind: RunKind
    state: RunState
    node: str
    principal: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """A schedule to store: from the API (``create_schedule``) or the config
    (``sync_config_schedules``)."""

    id: str
    #: The ScheduleSpec as JSON.
    spec: str
    cron: str
    enabled: bool
    created_by: str


@dataclass(frozen=True, slots=True)
class ConfigSync:
    """What upserting the config's schedules changed, by schedule id."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: API schedules the config now defines (the config wins).
    taken_over: tuple[str, ...] = ()


class ScheduleExists(Exception):
    """A schedule with this id exists (and is not removed)."""


class ScheduleStore(Protocol):
    async def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule that is not removed, by id."""
        ...

    async def get_schedule(self, schedule_id: str) -> ScheduleRow | None:
        """The schedule, unless it is removed."""
        ...

    async def create_schedule(self, schedule: NewSchedule, *, now: datetime) -> ScheduleRow:
        """Add an API schedule; raise ScheduleExists when the id is taken. A removed
        schedule's id is used again (its runs stay with it)."""
        ...

    async def sync_config_schedules(
        self, schedules: Sequence[NewSchedule], *, now: datetime
    ) -> ConfigSync:
        """Make the config's schedules what the store holds with source config: add them,
        change them (active again from ``now`` when the cron changes or it is enabled again),
        take over API schedules of the same id, and remove the config schedules no longer in
        it."""
        ...

    async def delete_schedule(self, schedule_id: str, *, now: datetime) -> bool:
        """Remove a schedule (its runs are kept); False when there is none."""
        ...

    async def claim_schedule_run(self, claim: RunClaim, *, now: datetime) -> ScheduleRunRow | None:
        """Record a fire time; None when it is recorded already (another node claimed it)."""
        ...

    async def record_missed_runs(
        self, schedule_id: str, fires: Sequence[tuple[datetime, str]], *, node: str, now: datetime
    ) -> int:
        """Record fire times as missed, each with its note, skipping those already recorded;
        how many were recorded."""
        ...

    async def finish_schedule_run(
        self, run_id: int, state: RunState, *, warning_id: str | None, note: str
    ) -> ScheduleRunRow:
        """Set a claimed run's outcome."""
        ...

    async def drop_schedule_run(self, run_id: int) -> None:
        """Forget a claim that made nothing (a replayed run-now)."""
        ...

    async def last_cron_fire(self, schedule_id: str) -> datetime | None:
        """The newest fire time of the schedule's cron recorded in any state."""
        ...

    async def list_schedule_runs(
        self, schedule_id: str, *, limit: int, before: datetime | None = None
    ) -> list[ScheduleRunRow]:
        """The schedule's runs, newest fire time first, fired before ``before`` if given."""
        ...

    async def get_schedule_run(self, run_id: int) -> ScheduleRunRow | None: ...

    async def schedule_run_for_warning(self, warning_id: str) -> ScheduleRunRow | None: ...

    async def stale_schedule_runs(self, *, started_before: datetime) -> list[ScheduleRunRow]:
        """Runs still ``running`` that were claimed before the given time."""
        ...

    async def unreported_schedule_runs(self) -> list[ScheduleRunRow]:
        """Runs that made a warning and have no report yet, oldest first."""
        ...

    async def set_schedule_run_report(
        self, run_id: int, report: dict[str, Any], *, now: datetime
    ) -> None: ...
