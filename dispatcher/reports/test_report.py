"""The report of a test broadcast or drill (a warning with status Test or Exercise): which
devices and people acknowledged it, and the **maintenance list** — every device it targeted
that did not acknowledge, why (the delivery log's newest reason) and what the device says of
its connection (online, offline, silent, never heard from).

The schedule runner calls :func:`build_test_report` after a run and writes one log line with
:func:`format_test_report_log`; GET /v1/warnings/{id}/test-report serves it as JSON
(:func:`report_json`) or the maintenance list as CSV (:func:`maintenance_csv_rows`);
``tocsin report test`` prints it (:func:`format_test_report`). docs/reports.md."""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from dispatcher.domain import Level, Status, WarningState
from dispatcher.reports.text import china_time, table
from dispatcher.store.base import DeviceState
from dispatcher.store.reports_base import (
    PEOPLE_OUTCOMES,
    DeliveryOutcome,
    ReportStore,
    SilentDevice,
)

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "LOG_DEVICE_IDS",
    "MAINTENANCE_CSV_COLUMNS",
    "TEST_STATUSES",
    "ChannelTally",
    "DeviceProblem",
    "MaintenanceItem",
    "NoSuchWarning",
    "NotATestBroadcast",
    "TestReport",
    "build_test_report",
    "format_test_report",
    "format_test_report_log",
    "maintenance_csv_rows",
    "report_json",
]

#: The warnings a test report is made for.
TEST_STATUSES = frozenset({Status.TEST, Status.EXERCISE})
#: ``[engine] device_heartbeat_timeout``'s default: online but not heard from for longer is
#: silent.
DEFAULT_HEARTBEAT_TIMEOUT = 300.0
#: How many silent devices' ids the log line names (the rest are counted).
LOG_DEVICE_IDS = 50


class DeviceProblem(enum.StrEnum):
    """What the maintenance list says is wrong with a device, the first that applies."""

    #: Its adapter last said it is offline, or it went silent (its heartbeats stopped).
    OFFLINE = "offline"
    #: The send failed for good: the adapter or the device refused it (``reason`` says why).
    FAILING = "failing"
    #: Sent, but it never reported playing (no acknowledgement).
    NO_ACK = "no_ack"
    #: Never sent: still queued, or the warning ended first.
    NOT_SENT = "not_sent"
    #: Sent and still within its acknowledgement deadline: the report was made too soon.
    WAITING = "waiting"


_PROBLEM_OF_OUTCOME = {
    DeliveryOutcome.FAILED: DeviceProblem.FAILING,
    DeliveryOutcome.NO_ACK: DeviceProblem.NO_ACK,
    DeliveryOutcome.NOT_SENT: DeviceProblem.NOT_SENT,
    DeliveryOutcome.WAITING: DeviceProblem.WAITING,
}


def problem_of(outcome: DeliveryOutcome, state: DeviceState) -> DeviceProblem:
    """Offline (or silent) first: that is what to fix; else how the delivery ended."""
    if state in (DeviceState.OFFLINE, DeviceState.SILENT):
        return DeviceProblem.OFFLINE
    return _PROBLEM_OF_OUTCOME[outcome]


@dataclass(frozen=True, slots=True)
class MaintenanceItem:
    """A device the test targeted that did not acknowledge it."""

    device_id: str
    kind: str
    name: str
    #: Where it is installed (a loudspeaker's village), and the area's name.
    area_code: str
    area_name: str
    adapter: str
    address: str
    problem: DeviceProblem
    #: Its delivery: state, sends, and how it stands.
    delivery_state: str
    attempts: int
    outcome: DeliveryOutcome
    #: The delivery log's newest reason for it ('' when none), and its newest event.
    reason: str
    last_event: str | None
    last_event_at: float | None
    #: Its connection state, and when it was last heard from (unix seconds; None: never).
    device_state: DeviceState
    last_seen: float | None

    @classmethod
    def of(cls, device: SilentDevice) -> MaintenanceItem:
        return cls(
            device_id=device.device_id,
            kind=device.kind,
            name=device.name,
            area_code=device.area_code,
            area_name=device.area_name,
            adapter=device.adapter,
            address=device.address,
            problem=problem_of(device.outcome, device.device_state),
            delivery_state=device.delivery_state,
            attempts=device.attempts,
            outcome=device.outcome,
            reason=device.reason,
            last_event=device.last_event,
            last_event_at=device.last_event_at,
            device_state=device.device_state,
            last_seen=device.last_seen,
        )


@dataclass(frozen=True, slots=True)
class ChannelTally:
    """People's deliveries on one channel (one per person), by how they ended."""

    deliveries: int = 0
    acknowledged: int = 0
    #: Sent, no answer before the deadline (or before the warning ended).
    unacknowledged: int = 0
    failed: int = 0
    #: Not needed: the person answered on another channel first.
    skipped: int = 0
    #: Sent, still within the deadline.
    waiting: int = 0
    #: Never sent (a later step not needed yet, or the warning ended first).
    not_sent: int = 0

    @property
    def not_confirmed(self) -> int:
        """Asked on this channel and did not confirm: unacknowledged or failed."""
        return self.unacknowledged + self.failed

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> ChannelTally:
        known = {name: int(counts.get(name, 0)) for name in PEOPLE_OUTCOMES}
        return cls(deliveries=sum(int(n) for n in counts.values()), **known)


@dataclass(frozen=True, slots=True)
class TestReport:
    """A test broadcast's (or drill's) report."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    warning_id: str
    status: Status
    level: Level
    event: str
    headline: str
    sent: datetime
    expires: datetime
    state: WarningState
    #: When it was made (unix seconds).
    as_of: float
    #: Every delivery is in a final state (nothing more will change).
    complete: bool
    #: Every delivery of the warning, by state.
    delivery_counts: Mapping[str, int]
    #: Devices the warning was sent to (or was to be), and those that acknowledged it.
    devices_targeted: int
    acknowledged_devices: int
    #: The devices that did not, by area then id.
    maintenance: tuple[MaintenanceItem, ...]
    #: People with a delivery (visit tasks left out), and those who acknowledged (in time
    #: or after the warning expired).
    people_targeted: int
    acknowledged_people: int
    #: People's deliveries by channel.
    people_by_channel: Mapping[str, ChannelTally]

    @property
    def silent_devices(self) -> int:
        return len(self.maintenance)

    @property
    def problems(self) -> dict[str, int]:
        """Silent devices by problem, every problem present."""
        counts = dict.fromkeys((p.value for p in DeviceProblem), 0)
        for item in self.maintenance:
            counts[item.problem.value] += 1
        return counts

    @property
    def people_not_acknowledged(self) -> int:
        return max(0, self.people_targeted - self.acknowledged_people)


class NoSuchWarning(LookupError):
    """No warning has this id."""


class NotATestBroadcast(ValueError):
    """The warning is not a Test or an Exercise: a test report would confuse it with one."""

    def __init__(self, warning_id: str, status: Status) -> None:
        super().__init__(
            f"warning {warning_id} has status {status.value}: test reports are only for "
            "Test and Exercise warnings (test broadcasts and drills); read an actual warning's "
            "coverage instead"
        )
        self.warning_id = warning_id
        self.status = status


_TERMINAL = frozenset(
    {"acknowledged", "unacknowledged", "failed", "skipped", "expired", "cancelled", "superseded"}
)


async def build_test_report(
    store: ReportStore,
    warning_id: str,
    *,
    now: float | None = None,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
) -> TestReport:
    """The report of the Test or Exercise warning ``warning_id`` as the store has it now.
    Raises :class:`NoSuchWarning`, or :class:`NotATestBroadcast` for any other status.
    ``heartbeat_timeout`` is ``[engine] device_heartbeat_timeout`` (a device online but not
    heard from for longer is silent)."""
    warning = await store.get_warning(warning_id)
    if warning is None:
        raise NoSuchWarning(warning_id)
    if warning.status not in TEST_STATUSES:
        raise NotATestBroadcast(warning_id, warning.status)
    at = time.time() if now is None else now
    data = await store.test_report_data(warning_id, now=at, heartbeat_timeout=heartbeat_timeout)
    if data is None:
        raise NoSuchWarning(warning_id)
    return TestReport(
        warning_id=warning.id,
        status=warning.status,
        level=warning.level,
        event=warning.event,
        headline=warning.headline,
        sent=warning.sent,
        expires=warning.expires,
        state=warning.state,
        as_of=data.as_of,
        complete=bool(data.delivery_states)
        and all(state in _TERMINAL for state in data.delivery_states),
        delivery_counts=dict(data.delivery_states),
        devices_targeted=data.devices_targeted,
        acknowledged_devices=data.devices_acknowledged,
        maintenance=tuple(MaintenanceItem.of(d) for d in data.silent),
        people_targeted=data.people_targeted,
        acknowledged_people=data.people_acknowledged,
        people_by_channel={
            channel: ChannelTally.of(counts) for channel, counts in data.people_by_channel.items()
        },
    )


# -- JSON --------------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def maintenance_json(item: MaintenanceItem) -> dict[str, Any]:
    return {
        "device_id": item.device_id,
        "kind": item.kind,
        "name": item.name,
        "area_code": item.area_code,
        "area_name": item.area_name,
        "adapter": item.adapter,
        "address": item.address,
        "problem": item.problem.value,
        "delivery_state": item.delivery_state,
        "attempts": item.attempts,
        "outcome": item.outcome.value,
        "reason": item.reason,
        "last_event": item.last_event,
        "last_event_at": _iso(item.last_event_at),
        "device_state": item.device_state.value,
        "last_seen": _iso(item.last_seen),
    }


def _tally_json(tally: ChannelTally) -> dict[str, int]:
    return {
        "deliveries": tally.deliveries,
        "acknowledged": tally.acknowledged,
        "not_confirmed": tally.not_confirmed,
        "unacknowledged": tally.unacknowledged,
        "failed": tally.failed,
        "skipped": tally.skipped,
        "waiting": tally.waiting,
        "not_sent": tally.not_sent,
    }


def report_json(report: TestReport) -> dict[str, Any]:
    """GET /v1/warnings/{id}/test-report."""
    return {
        "warning_id": report.warning_id,
        "status": report.status.value,
        "level": report.level.value,
        "event": report.event,
        "headline": report.headline,
        "sent": report.sent.isoformat(),
        "expires": report.expires.isoformat(),
        "state": report.state.value,
        "as_of": _iso(report.as_of),
        "complete": report.complete,
        "delivery_counts": dict(sorted(report.delivery_counts.items())),
        "devices": {
            "targeted": report.devices_targeted,
            "acknowledged": report.acknowledged_devices,
            "silent": report.silent_devices,
            "problems": report.problems,
        },
        "maintenance": [maintenance_json(item) for item in report.maintenance],
        "people": {
            "targeted": report.people_targeted,
            "acknowledged": report.acknowledged_people,
            "not_acknowledged": report.people_not_acknowledged,
            "by_channel": {
                channel: _tally_json(tally)
                for channel, tally in sorted(report.people_by_channel.items())
            },
        },
    }


# -- CSV: the maintenance list -----------------------------------------------------------------

MAINTENANCE_CSV_COLUMNS: tuple[str, ...] = (
    "device_id",
    "kind",
    "name",
    "area_code",
    "area_name",
    "adapter",
    "address",
    "problem",
    "delivery_state",
    "attempts",
    "reason",
    "last_event",
    "last_event_at",
    "device_state",
    "last_seen",
)


def maintenance_csv_rows(report: TestReport) -> Iterator[list[Any]]:
    """One row per silent device (after the header :data:`MAINTENANCE_CSV_COLUMNS`)."""
    for item in report.maintenance:
        shown = maintenance_json(item)
        yield [shown[column] for column in MAINTENANCE_CSV_COLUMNS]


# -- the log line ------------------------------------------------------------------------------


def format_test_report_log(report: TestReport) -> dict[str, Any]:
    """The fields of the one structured log line a test run ends with, e.g.
    ``log.info("test broadcast report", **format_test_report_log(report))`` — flat keys (no
    ``event``), the silent devices' ids (the first :data:`LOG_DEVICE_IDS`) and counts."""
    silent = [item.device_id for item in report.maintenance]
    by_problem: dict[str, list[str]] = {}
    for item in report.maintenance:
        by_problem.setdefault(item.problem.value, []).append(item.device_id)
    fields: dict[str, Any] = {
        "warning_id": report.warning_id,
        "status": report.status.value,
        "complete": report.complete,
        "devices_targeted": report.devices_targeted,
        "devices_acknowledged": report.acknowledged_devices,
        "devices_silent": len(silent),
        **{f"devices_{problem}": n for problem, n in report.problems.items()},
        "silent_devices": silent[:LOG_DEVICE_IDS],
        "silent_devices_by_problem": {
            problem: ids[:LOG_DEVICE_IDS] for problem, ids in sorted(by_problem.items())
        },
        "people_targeted": report.people_targeted,
        "people_acknowledged": report.acknowledged_people,
        "people_not_confirmed": {
            channel: tally.not_confirmed
            for channel, tally in sorted(report.people_by_channel.items())
        },
    }
    if len(silent) > LOG_DEVICE_IDS:
        fields["silent_devices_more"] = len(silent) - LOG_DEVICE_IDS
    return fields


# -- text (tocsin report test) -----------------------------------------------------------------


def format_test_report(report: Mapping[str, Any]) -> str:
    """The report as ``tocsin report test`` prints it, from its JSON (:func:`report_json`)."""
    devices = report.get("devices") or {}
    people = report.get("people") or {}
    problems = {k: n for k, n in (devices.get("problems") or {}).items() if n}
    state = "complete" if report.get("complete") else "still running: deliveries are open"
    lines = [
        f"{report.get('status')} broadcast {report.get('warning_id')}  level "
        f"{report.get('level')}  {report.get('event')}: {report.get('headline')}",
        f"  sent {china_time(report.get('sent'))}, expires {china_time(report.get('expires'))} "
        f"(China time), state {report.get('state')}; {state}",
        f"  report as of {china_time(report.get('as_of'), seconds=True)}",
        f"  devices: {devices.get('targeted', 0)} targeted, {devices.get('acknowledged', 0)} "
        f"acknowledged, {devices.get('silent', 0)} silent"
        + (" (" + ", ".join(f"{k} {n}" for k, n in problems.items()) + ")" if problems else ""),
        f"  people: {people.get('targeted', 0)} targeted, {people.get('acknowledged', 0)} "
        f"acknowledged, {people.get('not_acknowledged', 0)} did not",
    ]
    for channel, tally in (people.get("by_channel") or {}).items():
        parts = [
            f"{name} {tally[name]}"
            for name in ("acknowledged", "unacknowledged", "failed", "skipped", "waiting")
            if tally.get(name)
        ]
        lines.append(
            f"    {channel}: {tally.get('deliveries', 0)} deliveries, "
            f"{tally.get('not_confirmed', 0)} not confirmed"
            + (f" ({', '.join(parts)})" if parts else "")
        )
    items = report.get("maintenance") or []
    if not items:
        lines.append("  maintenance list: empty — every device targeted acknowledged")
        return "\n".join(lines) + "\n"
    lines.append(f"  maintenance list ({len(items)}):")
    heading = ["device", "kind", "problem", "state", "last seen", "area", "adapter", "reason"]
    rows = [
        [
            str(item.get("device_id")),
            str(item.get("kind") or ""),
            str(item.get("problem") or ""),
            str(item.get("device_state") or ""),
            china_time(item.get("last_seen")) if item.get("last_seen") else "never",
            f"{item.get('area_name') or ''} {item.get('area_code') or ''}".strip(),
            str(item.get("adapter") or ""),
            " ".join(str(item.get("reason") or item.get("delivery_state") or "").split()),
        ]
        for item in items
    ]
    lines += ["    " + line for line in table([heading, *rows], right=(False,) * 8)]
    return "\n".join(lines) + "\n"
