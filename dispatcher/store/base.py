"""The store interface: everything Tocsin keeps, behind one async protocol.

The SQLite implementation (:mod:`dispatcher.store.sqlite`) is the embedded default; a PostgreSQL
implementation satisfies the same protocol. Planning SQL is produced by
:mod:`dispatcher.planner` in portable SQL with ``?`` placeholders, so each store only executes it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dispatcher.domain import WarningRecord, WarningState
from dispatcher.log_query import LogEvent, LogFilter
from dispatcher.store.node_queries import NodeRow


@dataclass(frozen=True, slots=True)
class AreaRow:
    code: str
    name: str
    level: str
    parent_code: str | None


@dataclass(frozen=True, slots=True)
class AreaCounts:
    """What lies beneath an area, the area itself included (a village counts as one village)."""

    villages: int = 0
    grids: int = 0
    households: int = 0
    persons: int = 0
    persons_with_phone: int = 0
    #: Devices installed in the area or beneath it, by kind; every kind is present.
    devices: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlanCountRow:
    area_code: str
    audience: str
    channel: str
    count: int


@dataclass(frozen=True, slots=True)
class SqlStatement:
    sql: str
    params: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key as sent by one principal, with a hash of the request body."""

    principal: str
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class CreateResult:
    warning_id: str
    #: False when the Idempotency-Key was seen before with the same body: nothing was created.
    created: bool


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, warning_id: str) -> None:
        super().__init__(warning_id)
        self.warning_id = warning_id


class DuplicateWarning(Exception):
    """A warning with this sender and identifier already exists."""

    def __init__(self, warning_id: str) -> None:
        super().__init__(warning_id)
        self.warning_id = warning_id


@dataclass(frozen=True, slots=True)
class VillageRange:
    """Covered villages whose code is in ``(after, upto]``; None leaves that end open."""

    after: str | None = None
    upto: str | None = None


@dataclass(frozen=True, slots=True)
class PlanStage:
    """One stage of a warning's plan, committed by the store in its own write transaction
    (:mod:`dispatcher.planner` builds them; :meth:`Store.execute_plan` runs one)."""

    #: 1, 2, …; ``warnings.plan_stage`` is the last one committed.
    number: int
    #: ``INSERT … SELECT`` statements into ``deliveries``.
    statements: tuple[SqlStatement, ...]
    #: Write ``coverage_targets`` for the covered villages in this range (None: none).
    coverage: VillageRange | None = None
    #: The plan's last stage: it sets ``planned_at`` and logs the "planned" event.
    last: bool = False
    #: What the stage plans, for logs.
    label: str = ""


@dataclass(frozen=True, slots=True)
class PlanResult:
    """What planning did: one stage (:meth:`Store.execute_plan`) or a whole warning
    (:meth:`dispatcher.planning_worker.PlanningWorker.plan_now`)."""

    warning_id: str
    #: Delivery rows written by this call (one stage's, or every stage's of this plan run).
    deliveries: int
    #: One stage: how long its write transaction held the writer. A whole plan: wall time
    #: from its start to its last stage committed.
    seconds: float
    #: Whether the warning is planned completely now: this call committed its last stage.
    planned: bool
    #: ``warnings.plan_stage`` after the call: the last stage committed (0: none yet).
    stage: int = 0
    #: Whether this call committed a stage (False: the stage was committed before, or the
    #: warning is stopped).
    committed: bool = False
    #: Planning must stop: the warning is not active (cancelled, superseded, expired),
    #: already planned, or unknown.
    stopped: bool = False
    #: Delivery rows of the warning's whole plan, every stage counted (set by the last stage).
    total_deliveries: int = 0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: str
    principal: str
    role: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    id: int
    at: float
    warning_id: str
    delivery_id: int | None
    state: str
    attempt: int
    adapter: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


# -- coverage ------------------------------------------------------------------------------
class CoverageKind(enum.StrEnum):
    """What coverage counts (DESIGN.md, "Coverage roll-up"), in the order reports show them."""

    VILLAGE = "village"
    GRID_MEMBER = "grid_member"
    HOUSEHOLD = "household"
    PERSON = "person"


@dataclass(frozen=True, slots=True)
class Tally:
    """How many there are (the plan's denominators) and how many were reached in time."""

    total: int = 0
    reached: int = 0


@dataclass(frozen=True, slots=True)
class CoverageCounts:
    villages: Tally = Tally()
    grid_members: Tally = Tally()
    households: Tally = Tally()
    persons: Tally = Tally()

    def by_kind(self) -> dict[CoverageKind, Tally]:
        return {
            CoverageKind.VILLAGE: self.villages,
            CoverageKind.GRID_MEMBER: self.grid_members,
            CoverageKind.HOUSEHOLD: self.households,
            CoverageKind.PERSON: self.persons,
        }


@dataclass(frozen=True, slots=True)
class AreaCoverage:
    area: AreaRow
    counts: CoverageCounts


@dataclass(frozen=True, slots=True)
class WarningCoverage:
    """A warning's coverage: the whole warning, one row per area at ``depth`` (beneath
    ``under`` when given, ``under`` itself included when it is at that depth), and ``under``'s
    own counts."""

    warning_id: str
    #: None: the totals only (``areas`` is empty).
    depth: str | None
    totals: CoverageCounts
    areas: list[AreaCoverage]
    under: AreaCoverage | None
    #: Acknowledgements recorded after the warning expired, by kind: not counted above.
    late: dict[CoverageKind, int]
    #: When it was read (unix seconds).
    as_of: float
    #: The plan is complete; while it is being made, the totals grow as its stages commit.
    planned: bool = True


@dataclass(frozen=True, slots=True)
class UnreachedItem:
    """One village, grid member, household or person of the warning not reached (in time)."""

    kind: CoverageKind
    id: str
    village_code: str
    #: A village's, grid member's or person's name ('' for a household).
    name: str = ""
    #: A grid member's (first) grid, or a household's grid.
    grid_id: str | None = None
    #: A person's household.
    household_id: str | None = None
    #: A household's address.
    address: str | None = None
    #: A grid member's or person's primary number, masked (+86138****0001).
    phone_masked: str | None = None
    #: Reached, but only after the warning expired (so not counted as reached).
    reached_late: bool = False


@dataclass(frozen=True, slots=True)
class UnreachedPage:
    items: list[UnreachedItem]
    #: Pass as ``after`` for the next page; None on the last page.
    next: str | None


class InvalidCursor(ValueError):
    """An ``after`` cursor that no unreached page handed out."""


@dataclass(frozen=True, slots=True)
class WarningProgress:
    """How far a warning's deliveries have got (``delivery_state_counts``) and its plan."""

    warning_id: str
    #: Deliveries by state (states with none left out).
    states: dict[str, int]
    total: int
    #: Deliveries in a terminal state (dispatcher.domain.TERMINAL_DELIVERY_STATES).
    terminal: int
    #: Every delivery is in a terminal state (``warnings.completed_at`` is set).
    complete: bool
    completed_at: str | None
    #: The last plan stage committed, and when the last one was (None: still planning).
    plan_stage: int
    planned_at: str | None


@dataclass(frozen=True, slots=True)
class ConfirmationCheck:
    """Whether a grid member may mark a household of a warning reached (read before the
    confirmation goes to the engine, which checks again)."""

    warning_known: bool
    household_known: bool
    #: The person is a grid member of the household's grid.
    member: bool
    #: The household lies in the warning's areas.
    covered: bool
    grid_id: str | None = None
    village_code: str | None = None


def mask_phone(phone: str | None) -> str | None:
    """A number as lists of unreached people show it: +8613800000001 → +86138****0001."""
    if not phone:
        return None
    if len(phone) < 9:
        return "****" + phone[-2:]
    return phone[:6] + "****" + phone[-4:]


# -- devices -------------------------------------------------------------------------------
class DeviceState(enum.StrEnum):
    """A device's connection state as its adapter last reported it (GET /v1/devices)."""

    ONLINE = "online"
    OFFLINE = "offline"
    #: It said it was online, but nothing was heard from it for longer than the heartbeat
    #: timeout: its heartbeats stopped without a last will (a broker restart, a power cut).
    SILENT = "silent"
    #: Never heard from.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeviceStatusRecord:
    """One device's newest state, as the engine stores it (``device_status``)."""

    adapter: str
    #: The address the adapter knows it by (for a directory device: ``devices.address``, or
    #: its id when it has none).
    address: str
    online: bool
    #: When it was last heard from (unix seconds, the adapter's clock).
    last_seen: float
    #: What it says of itself, as JSON text (an object).
    detail_json: str
    #: When the daemon recorded it (unix seconds).
    updated_at: float


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Which devices to list; the filters combine with AND."""

    #: Installed in this area or beneath it (12-digit code).
    area: str | None = None
    kind: str | None = None
    adapter: str | None = None
    state: DeviceState | None = None
    #: List the statuses heard from addresses no directory device has, instead of the
    #: directory's devices (``area`` and ``kind`` do not apply to them).
    unregistered: bool = False


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A directory device with its state, or a status heard from an unregistered address."""

    #: None: the address is in no directory device (nor are kind, name and area_code known).
    id: str | None
    kind: str | None
    name: str
    adapter: str
    address: str
    #: Where it is installed.
    area_code: str | None
    #: The areas its broadcast reaches (device_areas), by code.
    areas: tuple[str, ...]
    state: DeviceState
    #: Unix seconds; None when never heard from.
    last_seen: float | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DevicePage:
    devices: list[DeviceRow]
    #: Pass as ``after`` for the next page; None on the last page.
    next: str | None
    #: Every device the query's filters other than ``state`` match, by state (each state
    #: present): what an installer reads as "4,812 online, 150 offline, 38 silent".
    counts: dict[str, int]


class Store(Protocol):
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the store cannot answer a trivial query."""

    # -- directory ---------------------------------------------------------------------------
    async def directory_counts(self) -> dict[str, int]:
        """Rows per directory table: areas, grids, households, persons, devices."""

    async def unknown_area_codes(self, codes: Sequence[str]) -> list[str]: ...

    async def areas_with_ancestors(self, codes: Sequence[str]) -> list[AreaRow]:
        """The given areas and every ancestor of them."""

    async def child_areas(
        self, parent: str | None, *, after: str | None = None, limit: int
    ) -> list[AreaRow]:
        """The direct children of ``parent`` (None: the areas without a parent), by code;
        ``after`` is a code to page after."""

    async def search_areas(
        self,
        *,
        under: str | None = None,
        name: str | None = None,
        level: str | None = None,
        after: str | None = None,
        limit: int,
    ) -> list[AreaRow]:
        """Areas at any depth beneath ``under`` (None: the whole directory; never ``under``
        itself) whose name contains ``name`` and whose level is ``level``, by code; ``after``
        is a code to page after."""

    async def area_counts(self, codes: Sequence[str]) -> dict[str, AreaCounts]:
        """Villages, grids, households, persons (and those with a phone) and devices by kind
        beneath each of the given areas (at most a page of them: each is counted on its own,
        through area_closure). Unknown codes count zero."""

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
        """Store a new warning (and its idempotency key) in one transaction. Warnings named in
        ``supersedes`` / ``cancels`` change state and their open deliveries stop at once."""

    async def expire_warning(self, warning_id: str, *, now: float) -> bool:
        """Mark an active warning expired and its open deliveries expired; False when it was
        not active."""

    async def idempotent_warning_id(self, claim: IdempotencyClaim) -> str | None:
        """The warning stored under this principal's key, or None when the key is new. Raises
        IdempotencyConflict when the key was used with a different request hash."""

    async def get_warning(self, warning_id: str) -> WarningRecord | None: ...

    async def find_warning(self, sender: str, identifier: str) -> WarningRecord | None: ...

    async def list_warnings(
        self,
        *,
        limit: int,
        before: str | None = None,
        status: str | None = None,
        state: WarningState | None = None,
    ) -> list[WarningRecord]:
        """Newest first; ``before`` is a warning id to page after."""

    async def unplanned_warning_ids(self) -> list[str]: ...

    async def execute_plan(self, warning_id: str, stage: PlanStage, *, now: float) -> PlanResult:
        """Commit one stage of the warning's plan in one write transaction: its deliveries,
        their rowid range, increments of ``plan_counts`` and ``delivery_state_counts``, its
        ``coverage_targets`` and ``warnings.plan_stage``; the last stage also ``planned_at``
        and the "planned" event. Stages run in order: a stage already committed is skipped
        (``committed`` False), one out of order raises ValueError. Nothing is written when
        the warning is no longer active or already planned (``stopped``): a Cancel or Update
        between two stages ends the plan."""

    async def plan_counts(self, warning_id: str) -> list[PlanCountRow]: ...

    async def delivery_state_counts(self, warning_id: str) -> dict[str, int]: ...

    async def warning_events(
        self, warning_id: str, *, after_id: int = 0, limit: int = 100
    ) -> list[DeliveryEvent]: ...

    # -- audit -------------------------------------------------------------------------------
    async def append_audit(
        self, *, principal: str, role: str, action: str, target: str, detail: dict[str, Any]
    ) -> None: ...

    async def list_audit(self, *, limit: int, before_id: int | None = None) -> list[AuditEntry]: ...

    # -- delivery log ------------------------------------------------------------------------
    async def log_events(
        self,
        query: LogFilter,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int,
    ) -> list[LogEvent]:
        """Up to ``limit`` delivery events matching ``query`` with ``after < id < before``:
        oldest first when ``after`` is given, else newest first. Reads through an index in
        id order, never sorting everything that matches (dispatcher/store/log_queries.py)."""

    async def log_last_id(self) -> int:
        """The id of the newest delivery event (0 when there is none)."""

    # -- nodes -------------------------------------------------------------------------------
    async def list_nodes(self) -> list[NodeRow]:
        """The dispatcher nodes that have run on this store, with the leases each holds."""

    # -- coverage ----------------------------------------------------------------------------
    async def coverage(
        self,
        warning_id: str,
        *,
        depth: str | None,
        under: str | None = None,
        tree: bool = False,
    ) -> WarningCoverage | None:
        """The warning's coverage per area at ``depth`` (county, town or village; None: no
        areas) — with ``tree``, at every level from the county down to ``depth``, each area
        followed by those beneath it — beneath ``under`` when given, with totals and late
        acknowledgements, all read in one snapshot. Summed from
        ``coverage_targets`` and ``coverage_counts`` (one row per village and kind), never from
        deliveries or ``reached``: the cost is the number of villages, not of people. None
        when there is no such warning."""

    async def unreached(
        self,
        warning_id: str,
        kind: CoverageKind,
        *,
        area: str | None = None,
        after: str | None = None,
        limit: int,
    ) -> UnreachedPage | None:
        """Up to ``limit`` of the warning's ``kind`` not reached in time, in (village, id)
        order, in ``area`` or beneath it when given; ``after`` is the ``next`` of the previous
        page (InvalidCursor when it is not one). None when there is no such warning."""

    async def progress(self, warning_id: str) -> WarningProgress | None:
        """Deliveries by state, how many are terminal, completion and plan stage."""

    async def check_household_confirmation(
        self, warning_id: str, household_id: str, person_id: str
    ) -> ConfirmationCheck: ...

    # -- devices -----------------------------------------------------------------------------
    async def record_device_status(self, statuses: Sequence[DeviceStatusRecord]) -> int:
        """Upsert devices' newest states in one write transaction; a status older (by
        ``last_seen``) than the one stored for its device is skipped. Returns the rows
        written."""

    async def list_devices(
        self,
        query: DeviceQuery,
        *,
        now: float,
        heartbeat_timeout: float,
        after: str | None = None,
        limit: int,
    ) -> DevicePage:
        """A page of devices with their state, by id (unregistered ones by adapter and
        address), and the counts by state; a device online but not heard from for more than
        ``heartbeat_timeout`` seconds before ``now`` is silent. ``after`` is the ``next`` of
        the previous page (InvalidCursor when it is not one)."""

    async def get_device(
        self, device_id: str, *, now: float, heartbeat_timeout: float
    ) -> DeviceRow | None:
        """One directory device with its state; None when there is no such device."""
