"""What the store reads for operators' reports: the door-to-door follow-up list of a warning
(the households not reached, grouped by grid member) and what a test broadcast's report is
made of (dispatcher/reports/test_report.py). Both stores implement it in
:mod:`dispatcher.store.report_queries`.

The grouping of a village's unreached households into grid members' sheets is here, as a pure
function, so every store groups them the same way."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from dispatcher.domain import WarningRecord
from dispatcher.store.base import DeviceState, InvalidCursor

__all__ = [
    "PEOPLE_OUTCOMES",
    "DeliveryOutcome",
    "FollowupGrid",
    "FollowupHousehold",
    "FollowupMember",
    "FollowupPage",
    "FollowupPerson",
    "FollowupSheet",
    "InvalidCursor",
    "ReportStore",
    "SilentDevice",
    "TestReportData",
    "device_outcome",
    "group_sheets",
    "people_outcome",
]


# -- the follow-up list ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FollowupPerson:
    """A member of an unreached household (none of them acknowledged in time)."""

    id: str
    name: str
    #: Primary number (E.164), or None without one.
    phone: str | None
    vulnerable: bool = False
    lives_alone: bool = False
    #: Acknowledged, but only after the warning expired.
    reached_late: bool = False


@dataclass(frozen=True, slots=True)
class FollowupHousehold:
    id: str
    grid_id: str
    address: str
    persons: tuple[FollowupPerson, ...] = ()
    #: Reached (a member answered, or a visit was confirmed) only after the warning expired.
    reached_late: bool = False


@dataclass(frozen=True, slots=True)
class FollowupGrid:
    id: str
    name: str
    households: tuple[FollowupHousehold, ...]


@dataclass(frozen=True, slots=True)
class FollowupMember:
    """A grid member (网格员) of the village's grids."""

    id: str
    name: str
    phone: str | None
    #: They acknowledged the warning themselves (in time).
    acknowledged: bool = False


@dataclass(frozen=True, slots=True)
class FollowupSheet:
    """One grid member's households to visit in one village: those of the member's grids
    there that the warning has not reached. ``grid_member`` is None for grids that have no
    grid member (someone must still go)."""

    village_code: str
    village_name: str
    grid_member: FollowupMember | None
    grids: tuple[FollowupGrid, ...]

    @property
    def households(self) -> int:
        return sum(len(g.households) for g in self.grids)


@dataclass(frozen=True, slots=True)
class FollowupPage:
    """Whole villages, in code order: their sheets, each village's by its grid members' first
    grid. A household of a grid with two members is on both their sheets."""

    sheets: list[FollowupSheet]
    #: Unreached households on the page, each counted once.
    households: int
    #: The last village on the page: pass as ``after`` for the next page (None: the last).
    next: str | None


def group_sheets(
    village_names: Mapping[str, str],
    grid_names: Mapping[str, str],
    members: Mapping[str, Sequence[FollowupMember]],
    households: Sequence[tuple[str, FollowupHousehold]],
) -> list[FollowupSheet]:
    """The sheets of whole villages: ``households`` are (village, household) in village
    order; ``members`` are each grid's grid members. Within a village the sheets go by their
    first grid, then the member's id (a sheet without a grid member last among equals); a
    sheet's grids and households by id."""
    by_village: dict[str, dict[str, list[FollowupHousehold]]] = {}
    for village, household in households:
        by_village.setdefault(village, {}).setdefault(household.grid_id, []).append(household)
    sheets: list[FollowupSheet] = []
    for village, grids in by_village.items():
        member_grids: dict[str | None, list[FollowupGrid]] = {}
        member_of: dict[str | None, FollowupMember | None] = {}
        for grid_id in sorted(grids):
            grid = FollowupGrid(
                grid_id,
                grid_names.get(grid_id, ""),
                tuple(sorted(grids[grid_id], key=lambda h: h.id)),
            )
            serving: Sequence[FollowupMember | None] = members.get(grid_id) or (None,)
            for member in serving:
                key = member.id if member is not None else None
                member_of[key] = member
                member_grids.setdefault(key, []).append(grid)
        order = sorted(member_grids, key=lambda k: (member_grids[k][0].id, k is None, k or ""))
        sheets.extend(
            FollowupSheet(
                village, village_names.get(village, ""), member_of[key], tuple(member_grids[key])
            )
            for key in order
        )
    return sheets


# -- the test broadcast's report -------------------------------------------------------------
class DeliveryOutcome(enum.StrEnum):
    """How a delivery that was not acknowledged ended (or where it is)."""

    #: Failed for good: the adapter or device refused it, or it ran out of attempts.
    FAILED = "failed"
    #: Sent (at least once), but no acknowledgement came.
    NO_ACK = "no_ack"
    #: Never sent: still queued or held, or the warning ended first.
    NOT_SENT = "not_sent"
    #: Sent or being retried, and still waiting: the report was made too soon.
    WAITING = "waiting"


_OPEN = frozenset({"held", "pending", "retry_wait", "sending", "sent", "delivered"})

#: What :func:`people_outcome` answers, in the order reports show them.
PEOPLE_OUTCOMES = ("acknowledged", "unacknowledged", "failed", "skipped", "waiting", "not_sent")


def device_outcome(state: str, attempts: int) -> DeliveryOutcome | None:
    """How a device's delivery in ``state`` after ``attempts`` sends stands; None when it was
    acknowledged."""
    if state == "acknowledged":
        return None
    if state == "failed":
        return DeliveryOutcome.FAILED
    if state == "unacknowledged":
        return DeliveryOutcome.NO_ACK
    if state in _OPEN:
        return DeliveryOutcome.WAITING if attempts > 0 else DeliveryOutcome.NOT_SENT
    # Stopped (the warning expired, was cancelled or superseded) before an acknowledgement.
    return DeliveryOutcome.NO_ACK if attempts > 0 else DeliveryOutcome.NOT_SENT


def people_outcome(state: str, attempts: int) -> str:
    """A person's delivery as the test report counts it (one of :data:`PEOPLE_OUTCOMES`):
    its state, except that a delivery still open is ``waiting`` once sent and ``not_sent``
    before, and one stopped by the warning's end is ``unacknowledged`` when it was sent and
    ``not_sent`` when not (a ``skipped`` one: the person answered another way)."""
    if state in ("acknowledged", "unacknowledged", "failed", "skipped"):
        return state
    if state in _OPEN:
        return "waiting" if attempts > 0 else "not_sent"
    return "unacknowledged" if attempts > 0 else "not_sent"


@dataclass(frozen=True, slots=True)
class SilentDevice:
    """A device the warning targeted that did not acknowledge it, with its delivery, the
    newest word of the delivery log about it, and its connection state."""

    device_id: str
    kind: str
    name: str
    #: Where it is installed (a loudspeaker's village), and that area's name.
    area_code: str
    area_name: str
    adapter: str
    #: The address the engine sends to (the device's address, or its id).
    address: str
    delivery_id: int
    delivery_state: str
    attempts: int
    outcome: DeliveryOutcome
    #: The newest reason the delivery log gives for it ('' when none), and its newest event.
    reason: str
    last_event: str | None
    last_event_at: float | None
    device_state: DeviceState
    #: Unix seconds; None when never heard from.
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class TestReportData:
    """What a warning's test report is made of, read in one snapshot."""

    __test__ = False  # not a pytest test class

    warning_id: str
    #: Every delivery of the warning, by state.
    delivery_states: Mapping[str, int]
    #: Devices with a delivery of the warning, and those that acknowledged it.
    devices_targeted: int
    devices_acknowledged: int
    #: The devices that did not, by area then id.
    silent: tuple[SilentDevice, ...]
    #: People with a delivery of the warning (visit tasks left out), and those who
    #: acknowledged it (in time or late).
    people_targeted: int
    people_acknowledged: int
    #: People's deliveries (visit tasks left out) by channel, then by
    #: :func:`people_outcome`.
    people_by_channel: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: When it was read (unix seconds).
    as_of: float = 0.0


@runtime_checkable
class ReportStore(Protocol):
    """The reads the reports need (both stores have them all)."""

    async def get_warning(self, warning_id: str) -> WarningRecord | None: ...

    async def followup(
        self, warning_id: str, *, area: str | None = None, after: str | None = None, limit: int
    ) -> FollowupPage | None:
        """The next whole villages (after the village ``after``; in ``area`` or beneath it)
        with households not reached in time, as grid members' sheets: as many villages as fit
        in ``limit`` households, at least one. InvalidCursor when ``after`` is not a village
        code; None when there is no such warning."""
        ...

    async def test_report_data(
        self, warning_id: str, *, now: float, heartbeat_timeout: float
    ) -> TestReportData | None:
        """The warning's deliveries and acknowledgements as a test report counts them, and
        its silent devices with their state (silent: online but not heard from for more than
        ``heartbeat_timeout`` seconds before ``now``). None when there is no such warning."""
        ...
