"""What the engine and the store hand each other: claimed deliveries, decided transitions,
acknowledgements and their results. Plain data, no behaviour."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.adapter import Report
from dispatcher.domain import DeliveryState


@dataclass(frozen=True, slots=True)
class VillageFallback:
    """Whom a village falls back to when none of its devices played a warning (the devices
    rule's ``fallback`` in the policy)."""

    #: The policy's audience selector, e.g. "village_cadres" (for the log).
    selector: str
    #: The bit of ``persons.roles`` they hold; "grid_members" selects the village's grids'
    #: members instead.
    role_bit: int
    #: Their ladder: the first channel at once, the rest held behind it.
    channels: tuple[str, ...]
    #: ``deliveries.audience`` and ``priority`` of the deliveries added for them.
    audience: str
    priority: int


@dataclass(frozen=True, slots=True)
class LevelRules:
    """The parts of a level's policy the engine applies to each delivery."""

    ack_timeout: float
    device_ack_timeout: float
    max_attempts: int
    visit: bool
    fallback: VillageFallback | None = None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery leased to this engine for one send."""

    id: int
    warning_seq: int
    warning_id: str
    level: str
    audience: str
    target_id: str
    channel: str
    area_code: str
    #: This attempt's number (1 for the first).
    attempt: int
    #: Where to send; None when the directory no longer has an address for the target.
    address: str | None
    #: The adapter instance a device names in the directory ('' for people).
    adapter: str = ""
    #: Visit tasks: the households still to visit.
    households: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Transition:
    """The engine's decision about one claimed delivery after its send."""

    delivery_id: int
    state: DeliveryState
    #: The next time the engine looks at it (retry time or acknowledgement deadline).
    due_at: float | None
    attempt: int
    adapter: str
    reason: str = ""
    reference: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: Whether to try the next step of the ladder now (failed for good, or fell over).
    escalate: bool = False
    #: Whether this attempt should not count (the delivery was never handed to an adapter).
    uncount_attempt: bool = False


@dataclass(frozen=True, slots=True)
class AdapterAck:
    """A report from an adapter, through the intake."""

    adapter: str
    report: Report
    received_at: float


@dataclass(frozen=True, slots=True)
class HouseholdConfirmation:
    """A grid member marks a household reached door-to-door (checked by the API first)."""

    warning_id: str
    household_id: str
    person_id: str
    source: str
    received_at: float


Ack = AdapterAck | HouseholdConfirmation


class AckResult(enum.StrEnum):
    #: Changed something (a state, a coverage count).
    APPLIED = "applied"
    #: Already known: nothing changed (acknowledgements are idempotent).
    DUPLICATE = "duplicate"
    #: Recorded, but after the warning expired: not counted as in time.
    LATE = "late"
    #: No such delivery, or a delivery of another device/warning/sender: nothing changed.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class AckOutcome:
    result: AckResult
    reason: str = ""
    delivery_id: int | None = None


@dataclass(frozen=True, slots=True)
class SweepResult:
    leases_reclaimed: int = 0
    unacknowledged: int = 0
    device_resends: int = 0
    escalated: int = 0
    visits_created: int = 0
    warnings_expired: tuple[str, ...] = ()
    warnings_completed: tuple[str, ...] = ()

    @property
    def released(self) -> int:
        """Deliveries made due by this sweep (the engine should look for work)."""
        return self.leases_reclaimed + self.device_resends + self.escalated + self.visits_created


@dataclass(frozen=True, slots=True)
class RecordResult:
    recorded: int = 0
    #: Outcomes for deliveries no longer in flight (cancelled or superseded meanwhile).
    stale: int = 0
    escalated: int = 0
    visits_created: int = 0


#: States a delivery is in while an acknowledgement would still be in time for it.
ACKABLE_STATES: frozenset[DeliveryState] = frozenset(
    {
        DeliveryState.SENDING,
        DeliveryState.SENT,
        DeliveryState.DELIVERED,
        DeliveryState.RETRY_WAIT,
        DeliveryState.UNACKNOWLEDGED,
        DeliveryState.FAILED,
        DeliveryState.PENDING,
    }
)
