"""The domain vocabulary shared by every part of Tocsin (see DESIGN.md, "The domain")."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Level(enum.StrEnum):
    """Warning colour grade, most severe first."""

    RED = "red"
    ORANGE = "orange"
    YELLOW = "yellow"
    BLUE = "blue"

    @property
    def cap_severity(self) -> str:
        return _LEVEL_TO_SEVERITY[self]

    @classmethod
    def from_cap_severity(cls, severity: str) -> Level | None:
        return _SEVERITY_TO_LEVEL.get(severity)


_LEVEL_TO_SEVERITY = {
    Level.RED: "Extreme",
    Level.ORANGE: "Severe",
    Level.YELLOW: "Moderate",
    Level.BLUE: "Minor",
}
_SEVERITY_TO_LEVEL = {v: k for k, v in _LEVEL_TO_SEVERITY.items()}


class Status(enum.StrEnum):
    """CAP status. Test and Exercise must never be confused with Actual."""

    ACTUAL = "Actual"
    EXERCISE = "Exercise"
    TEST = "Test"
    DRAFT = "Draft"


class MsgType(enum.StrEnum):
    ALERT = "Alert"
    UPDATE = "Update"
    CANCEL = "Cancel"


class WarningState(enum.StrEnum):
    """Lifecycle of a stored warning (not a CAP field)."""

    ACTIVE = "active"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class DeliveryState(enum.StrEnum):
    """Where one delivery is (see docs/engine.md for the transitions).

    ``due_at`` on the row always says when the engine next looks at it: the send time for
    pending and retry_wait, the lease expiry for sending, the acknowledgement deadline for
    sent and delivered.
    """

    #: A later step of the person's escalation ladder, waiting for an earlier one to fail
    #: or go unacknowledged.
    HELD = "held"
    PENDING = "pending"
    #: Claimed by an engine under a lease; a crashed engine's rows are claimed again.
    SENDING = "sending"
    #: Accepted by the adapter; waiting for an acknowledgement until due_at.
    SENT = "sent"
    #: The provider or device confirmed receipt; still waiting for an acknowledgement.
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    RETRY_WAIT = "retry_wait"
    #: Sent, but no acknowledgement came before the deadline (the ladder moved on).
    UNACKNOWLEDGED = "unacknowledged"
    FAILED = "failed"
    #: Not needed any more: the person or household acknowledged through another step.
    SKIPPED = "skipped"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


#: States from which a delivery can still be sent; Update and Cancel stop these.
OPEN_DELIVERY_STATES: tuple[DeliveryState, ...] = (
    DeliveryState.PENDING,
    DeliveryState.RETRY_WAIT,
    DeliveryState.HELD,
)
#: Sent and waiting for an acknowledgement (or, for sending, for its lease to end).
IN_FLIGHT_DELIVERY_STATES: tuple[DeliveryState, ...] = (
    DeliveryState.SENDING,
    DeliveryState.SENT,
    DeliveryState.DELIVERED,
)
#: Nothing more will happen to a delivery in these states.
TERMINAL_DELIVERY_STATES: tuple[DeliveryState, ...] = (
    DeliveryState.ACKNOWLEDGED,
    DeliveryState.UNACKNOWLEDGED,
    DeliveryState.FAILED,
    DeliveryState.SKIPPED,
    DeliveryState.EXPIRED,
    DeliveryState.CANCELLED,
    DeliveryState.SUPERSEDED,
)


class Audience(enum.StrEnum):
    """Who a delivery is for, in priority order (devices reach most people soonest)."""

    DEVICE = "device"
    GRID_MEMBER = "grid_member"
    HOUSEHOLD = "household"
    PERSON = "person"
    #: A task for a grid member to visit the households in their grid not reached otherwise.
    VISIT = "visit"


class Channel(enum.StrEnum):
    SPEAKER = "speaker"
    TRANSMITTER = "transmitter"
    MODEM = "modem"
    SMS = "sms"
    VOICE = "voice"


class DeviceKind(enum.StrEnum):
    LOUDSPEAKER = "loudspeaker"
    TRANSMITTER = "transmitter"
    MODEM = "modem"

    @property
    def channel(self) -> Channel:
        return _DEVICE_CHANNEL[self]


_DEVICE_CHANNEL = {
    DeviceKind.LOUDSPEAKER: Channel.SPEAKER,
    DeviceKind.TRANSMITTER: Channel.TRANSMITTER,
    DeviceKind.MODEM: Channel.MODEM,
}

PERSON_CHANNELS: frozenset[Channel] = frozenset({Channel.SMS, Channel.VOICE})


class Role(enum.StrEnum):
    """Roles a person holds in the directory (not API roles)."""

    GRID_MEMBER = "grid_member"
    VILLAGE_CADRE = "village_cadre"
    RESCUE_TEAM = "rescue_team"
    HAZARD_MONITOR = "hazard_monitor"

    @property
    def bit(self) -> int:
        return 1 << list(Role).index(self)


def roles_to_mask(roles: set[Role] | frozenset[Role]) -> int:
    mask = 0
    for role in roles:
        mask |= role.bit
    return mask


def mask_to_roles(mask: int) -> list[Role]:
    return [role for role in Role if mask & role.bit]


class AreaLevel(enum.StrEnum):
    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"
    TOWN = "town"
    VILLAGE = "village"


@dataclass(frozen=True, slots=True)
class WarningRecord:
    """A warning as Tocsin stores it: CAP-shaped, one `<info>` block, targets by area code."""

    id: str
    identifier: str
    sender: str
    sent: datetime
    status: Status
    msg_type: MsgType
    level: Level
    event: str
    headline: str
    description: str
    instruction: str
    area_codes: tuple[str, ...]
    expires: datetime
    urgency: str = "Immediate"
    certainty: str = "Likely"
    category: str = "Met"
    language: str = "zh-CN"
    area_desc: str = ""
    references: tuple[str, ...] = ()
    note: str = ""
    audio_url: str | None = None
    audio_sha256: str | None = None
    state: WarningState = WarningState.ACTIVE
    created_by: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    #: Plan rules replacing the level policy's rules for this warning, as a JSON array in the
    #: policy's rule grammar (a scheduled test broadcast or drill; docs/schedules.md). None:
    #: the level policy. Only Test and Exercise warnings carry them.
    plan_rules: str | None = None
