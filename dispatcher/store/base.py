"""The store interface: everything Tocsin keeps, behind one async protocol.

The SQLite implementation (:mod:`dispatcher.store.sqlite`) is the embedded default; a PostgreSQL
implementation satisfies the same protocol. Planning SQL is produced by
:mod:`dispatcher.planner` in portable SQL with ``?`` placeholders, so each store only executes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dispatcher.domain import WarningRecord, WarningState


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
class PlanResult:
    warning_id: str
    deliveries: int
    seconds: float
    #: Whether the warning was planned by this call (False: already planned or not active).
    planned: bool


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

    async def execute_plan(
        self, warning_id: str, statements: Sequence[SqlStatement], *, now: float
    ) -> PlanResult:
        """Run the planner's statements and record the plan, in one transaction, unless the
        warning is already planned or no longer active."""

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
