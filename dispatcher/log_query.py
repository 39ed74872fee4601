"""The delivery log's vocabulary, shared by the store, the API and the CLI: what an operator
narrows the log by (:class:`LogFilter`, read from query parameters and written back to them),
and one event as the log shows it (:class:`LogEvent`).

A filter value that is malformed raises :class:`LogFilterError` naming the parameter, so the API
answers 400 with ``field`` set and the CLI refuses before asking the daemon. A well-formed value
that matches nothing (an unknown warning, person or device) is not an error: the log of an id
no longer in the directory is still the log."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from dispatcher.domain import Channel, DeliveryState, Level

E = TypeVar("E", Level, Channel)

#: The largest page the API serves (and the page the CSV export and the stream read in).
MAX_PAGE = 1000
DEFAULT_PAGE = 100
#: Cursors are event ids: positive 63-bit integers.
MAX_CURSOR = 2**62
MAX_ID_LENGTH = 200

#: States that only events record (``delivery_id`` NULL), never a delivery: the warning was
#: accepted, its deliveries were written, every delivery reached a terminal state, and a grid
#: member marked a household reached door to door, and a village whose devices did not play
#: fell back to people. A stopped warning's own event is
#: ``superseded``, ``cancelled`` or ``expired``, the names its deliveries take. The engine
#: adds a name here when it logs a new kind of event, so the ``state`` filter accepts it.
EVENT_ONLY_STATES: tuple[str, ...] = (
    "received",
    "planned",
    "completed",
    "household_reached",
    "village_fallback",
)
#: Every state an event can record; the ``state`` filter takes one of them.
LOG_STATES: tuple[str, ...] = (*EVENT_ONLY_STATES, *(s.value for s in DeliveryState))

#: How far an event's ``at`` may stray from the order events are written in. The store turns
#: ``since``/``until`` into id bounds widened by this much (then checks each row's time), so an
#: event stamped more than this earlier or later than the events written around it can be
#: missed by a window it falls in. The engine stamps events with its own clock when it records
#: them; a device's or provider's own time belongs in ``detail``.
TIME_SLACK = 300.0

#: The filter's parameters, in the order the API documents them.
FILTER_PARAMETERS: tuple[str, ...] = (
    "warning",
    "area",
    "level",
    "person",
    "device",
    "channel",
    "state",
    "since",
    "until",
)

_AREA_CODE = re.compile(r"[0-9]{6}(?:[0-9]{6})?")
# RFC 3339: a full date, a full time with seconds, and an offset (Z or ±hh:mm).
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


class LogFilterError(ValueError):
    """A filter parameter with a value that cannot be used."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True, slots=True)
class LogFilter:
    """What the log is narrowed to; every condition given must hold (they combine with AND)."""

    #: A warning's public id.
    warning: str | None = None
    #: A 12-digit area code: events whose target lies in this area or beneath it.
    area: str | None = None
    #: The warning's level.
    level: Level | None = None
    #: A person's id (the target of SMS, voice and visit deliveries).
    person: str | None = None
    #: A device's id (the target of loudspeaker, transmitter and modem deliveries).
    device: str | None = None
    channel: Channel | None = None
    state: str | None = None
    #: Unix seconds: events at or after this time.
    since: float | None = None
    #: Unix seconds: events before this time.
    until: float | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> LogFilter:
        """Read the filter from query parameters (or CLI options by the same names); other
        keys are ignored. Raises :class:`LogFilterError` for the first bad value."""
        values: dict[str, Any] = {}
        for name in ("warning", "person", "device"):
            if name in params:
                values[name] = _identifier(name, params[name])
        if "area" in params:
            values["area"] = parse_area_code("area", params["area"])
        if "level" in params:
            values["level"] = _choice("level", params["level"], Level)
        if "channel" in params:
            values["channel"] = _choice("channel", params["channel"], Channel)
        if "state" in params:
            raw = params["state"]
            if raw not in LOG_STATES:
                raise LogFilterError("state", f"must be one of {', '.join(LOG_STATES)}")
            values["state"] = raw
        for name in ("since", "until"):
            if name in params:
                values[name] = parse_time(name, params[name])
        since, until = values.get("since"), values.get("until")
        if since is not None and until is not None and until <= since:
            raise LogFilterError("until", "must be later than since")
        return cls(**values)

    def to_params(self) -> dict[str, str]:
        """The filter as query parameters (what :meth:`from_params` reads back)."""
        params: dict[str, str] = {}
        for name in FILTER_PARAMETERS:
            value = getattr(self, name)
            if value is None:
                continue
            if name in ("since", "until"):
                params[name] = format_time(value)
            else:
                params[name] = str(value)
        return params

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One row of the delivery log, with the level of its warning."""

    id: int
    #: Unix seconds.
    at: float
    warning_id: str
    #: None for an event about the whole warning (received, planned, cancelled …).
    delivery_id: int | None
    state: str
    attempt: int
    adapter: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    #: The person or device the delivery is for; None for whole-warning events.
    target_id: str | None = None
    channel: str | None = None
    #: The target's village (or where the device is installed).
    area_code: str | None = None
    level: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The event as the API shows it: times in RFC 3339 (UTC)."""
        return {
            "id": self.id,
            "at": format_time(self.at),
            "warning_id": self.warning_id,
            "delivery_id": self.delivery_id,
            "state": self.state,
            "attempt": self.attempt,
            "adapter": self.adapter,
            "reason": self.reason,
            "detail": self.detail,
            "target_id": self.target_id,
            "channel": self.channel,
            "area_code": self.area_code,
            "level": self.level,
        }


def parse_area_code(parameter: str, raw: str) -> str:
    """A 12-digit code, or a 6-digit GB2260 code (county and above) made 12 digits."""
    code = raw.strip()
    if not _AREA_CODE.fullmatch(code):
        raise LogFilterError(
            parameter,
            f"{_shown(raw)} is not an area code: use a 12-digit statistical code or a 6-digit "
            "GB2260 code (county and above)",
        )
    return code if len(code) == 12 else code + "000000"


def parse_time(parameter: str, raw: str) -> float:
    """An RFC 3339 time with its offset (``2026-07-12T03:00:00Z``, ``…+08:00``), as unix
    seconds."""
    problem = f"{_shown(raw)} is not an RFC 3339 time with an offset, e.g. 2026-07-12T03:00:00Z"
    if not _RFC3339.fullmatch(raw):
        raise LogFilterError(parameter, problem)
    try:
        moment = datetime.fromisoformat(raw.upper().replace(" ", "T"))
    except ValueError:
        raise LogFilterError(parameter, problem) from None
    return moment.timestamp()


def format_time(at: float) -> str:
    """Unix seconds as RFC 3339 in UTC, to the microsecond."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")


def _identifier(parameter: str, raw: str) -> str:
    if not 1 <= len(raw) <= MAX_ID_LENGTH or not raw.isprintable():
        raise LogFilterError(parameter, f"must be 1 to {MAX_ID_LENGTH} printable characters")
    try:
        raw.encode("utf-8")  # lone surrogates from a malformed percent-encoding
    except UnicodeEncodeError:
        raise LogFilterError(parameter, "must be text") from None
    return raw


def _choice(parameter: str, raw: str, kind: type[E]) -> E:
    for member in kind:
        if member.value == raw:
            return member
    raise LogFilterError(parameter, f"must be one of {', '.join(m.value for m in kind)}")


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "…")
