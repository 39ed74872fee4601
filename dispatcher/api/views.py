"""How stored things look in API responses (JSON-ready dicts). Times are ISO 8601 with offset."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dispatcher.domain import WarningRecord
from dispatcher.store.base import AreaCounts, AreaRow, AuditEntry, DeliveryEvent


def warning_path(warning_id: str) -> str:
    return f"/v1/warnings/{warning_id}"


def warning_links(warning_id: str) -> dict[str, str]:
    base = warning_path(warning_id)
    return {
        "self": base,
        "cap": f"{base}/cap",
        "plan": f"{base}/plan",
        "events": f"{base}/events",
        "update": f"{base}/update",
        "cancel": f"{base}/cancel",
    }


def warning_summary(warning: WarningRecord) -> dict[str, Any]:
    """The short form: what a 202 answers and what a list shows."""
    return {
        "id": warning.id,
        "identifier": warning.identifier,
        "sender": warning.sender,
        "sent": warning.sent.isoformat(),
        "status": warning.status.value,
        "msg_type": warning.msg_type.value,
        "level": warning.level.value,
        "event": warning.event,
        "headline": warning.headline,
        "area_codes": list(warning.area_codes),
        "expires": warning.expires.isoformat(),
        "state": warning.state.value,
        "links": warning_links(warning.id),
    }


def warning_detail(
    warning: WarningRecord, *, plan_status: str, delivery_counts: dict[str, int]
) -> dict[str, Any]:
    """The full record, with the plan's status and deliveries counted by state."""
    return {
        **warning_summary(warning),
        "description": warning.description,
        "instruction": warning.instruction,
        "area_desc": warning.area_desc,
        "urgency": warning.urgency,
        "certainty": warning.certainty,
        "category": warning.category,
        "language": warning.language,
        "references": list(warning.references),
        "note": warning.note,
        "audio_url": warning.audio_url,
        "audio_sha256": warning.audio_sha256,
        "created_by": warning.created_by,
        "plan_status": plan_status,
        "delivery_counts": dict(sorted(delivery_counts.items())),
    }


def event_view(event: DeliveryEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": datetime.fromtimestamp(event.at, UTC).isoformat(),
        "delivery_id": event.delivery_id,
        "state": event.state,
        "attempt": event.attempt,
        "adapter": event.adapter,
        "reason": event.reason,
        "detail": event.detail,
    }


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at,
        "principal": entry.principal,
        "role": entry.role,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
    }


def area_view(area: AreaRow) -> dict[str, Any]:
    return {
        "code": area.code,
        "name": area.name,
        "level": area.level,
        "parent_code": area.parent_code,
    }


def area_counts_view(counts: AreaCounts) -> dict[str, Any]:
    return {
        "villages": counts.villages,
        "grids": counts.grids,
        "households": counts.households,
        "persons": counts.persons,
        "persons_with_phone": counts.persons_with_phone,
        "devices": dict(sorted(counts.devices.items())),
    }
