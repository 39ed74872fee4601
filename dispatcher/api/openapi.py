"""The OpenAPI 3.1 document served at /v1/openapi.json.

Request bodies come from the pydantic models (their ``$defs`` become components); response
schemas are written here to match :mod:`dispatcher.api.views`. Security and the 401/403
responses follow each endpoint's roles in the route table, and building the document fails if
an endpoint is not described here, so the document cannot fall behind the routes."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from dispatcher.api.request_input import CAP_MEDIA_TYPES, IDEMPOTENCY_HEADER, JSON_MEDIA_TYPE
from dispatcher.api.routing import Endpoint
from dispatcher.domain import AreaLevel, Channel, DeviceKind, Status, WarningState
from dispatcher.log_query import DEFAULT_PAGE, LOG_STATES, MAX_ID_LENGTH, MAX_PAGE
from dispatcher.schedules.spec import ScheduleInput
from dispatcher.store.base import DeviceState
from dispatcher.warning_input import CancelRequest, WarningChange, WarningInput

OPENAPI_KEY = web.AppKey("tocsin_openapi", dict[str, Any])

Schema = dict[str, Any]

_REF = "#/components/schemas/{model}"
CSV_MEDIA_TYPE = "text/csv"
EVENT_STREAM_MEDIA_TYPE = "text/event-stream"
_MAX_CURSOR = 2**62


def _ref(name: str) -> Schema:
    return {"$ref": _REF.format(model=name)}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], *, optional: Sequence[str] = ()) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


_STRING: Schema = {"type": "string"}
_DATETIME: Schema = {"type": "string", "format": "date-time"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_COUNTS_BY_NAME: Schema = {"type": "object", "additionalProperties": _COUNT}
_AREA_CODE_ITEM: Schema = {
    "type": "string",
    "pattern": r"^\d{6}(\d{6})?$",
    "description": "12-digit statistical code, or a 6-digit GB2260 code (county and above)",
}

_AREA_CODE_PATTERN = r"^[0-9]{6}([0-9]{6})?$"
_AREA_PROPERTIES: dict[str, Schema] = {
    "code": {"type": "string", "pattern": r"^[0-9]{12}$"},
    "name": _STRING,
    "level": _ref("AreaLevel"),
    "parent_code": _nullable(_STRING),
}

_LINKS = _object({name: _STRING for name in ("self", "cap", "plan", "events", "update", "cancel")})
_SUMMARY_PROPERTIES: dict[str, Schema] = {
    "id": _STRING,
    "identifier": _STRING,
    "sender": _STRING,
    "sent": _DATETIME,
    "status": _ref("Status"),
    "msg_type": _ref("MsgType"),
    "level": _ref("Level"),
    "event": _STRING,
    "headline": _STRING,
    "area_codes": {"type": "array", "items": _STRING},
    "expires": _DATETIME,
    "state": _ref("WarningState"),
    "links": _ref("WarningLinks"),
}
_DETAIL_PROPERTIES: dict[str, Schema] = {
    **_SUMMARY_PROPERTIES,
    "description": _STRING,
    "instruction": _STRING,
    "area_desc": _STRING,
    "urgency": _STRING,
    "certainty": _STRING,
    "category": _STRING,
    "language": _STRING,
    "references": {"type": "array", "items": _STRING},
    "note": _STRING,
    "audio_url": _nullable(_STRING),
    "audio_sha256": _nullable(_STRING),
    "created_by": _STRING,
    "plan_status": _ref("PlanStatus"),
    "delivery_counts": _COUNTS_BY_NAME,
    "progress": _ref("WarningProgress"),
    "coverage": _ref("CoverageTotals"),
}
_BY_AUDIENCE: Schema = {
    "type": "object",
    "description": "deliveries by audience, then by channel",
    "additionalProperties": _COUNTS_BY_NAME,
}

_MEASURE_NAMES = ("villages", "grid_members", "households", "persons")
_UNREACHED_KINDS = ("village", "grid_member", "household", "person")
_MEASURES: dict[str, Schema] = {name: _ref("CoverageMeasure") for name in _MEASURE_NAMES}
_PERCENT: Schema = _nullable({"type": "number", "minimum": 0})
#: Coverage (dispatcher/coverage_view.py; docs/coverage.md).
_COVERAGE_SCHEMAS: dict[str, Schema] = {
    "CoverageMeasure": {
        **_object({"total": _COUNT, "reached": _COUNT, "percent": _PERCENT}),
        "description": "How many the plan covers, how many were reached in time (grid members "
        "and persons: acknowledged), and the share in percent with one decimal (null when "
        "there are none)",
    },
    "CoverageCounts": _object(_MEASURES),
    "LateCounts": {
        **_object({name: _COUNT for name in _MEASURE_NAMES}),
        "description": "Reached only after the warning expired: recorded, not counted",
    },
    "AreaCoverage": _object({**_AREA_PROPERTIES, **_MEASURES}),
    "Coverage": _object(
        {
            "warning_id": _STRING,
            "depth": {"type": "string", "enum": ["county", "town", "village"]},
            "under": _nullable(_ref("AreaCoverage")),
            "planned": {
                "type": "boolean",
                "description": "false while the plan is being made: the totals grow as its "
                "stages commit",
            },
            "as_of": _DATETIME,
            "totals": _ref("CoverageCounts"),
            "late": _ref("LateCounts"),
            "areas": {"type": "array", "items": _ref("AreaCoverage")},
        }
    ),
    "CoverageTotals": _object({**_MEASURES, "late": _ref("LateCounts"), "as_of": _DATETIME}),
    "WarningProgress": _object(
        {
            "total": _COUNT,
            "terminal": {**_COUNT, "description": "deliveries in a terminal state"},
            "percent_terminal": _PERCENT,
            "complete": {
                "type": "boolean",
                "description": "every delivery is in a terminal state",
            },
            "completed_at": _nullable(_STRING),
            "plan_stage": {**_COUNT, "description": "the last plan stage committed"},
            "planned_at": _nullable(_STRING),
            "states": _COUNTS_BY_NAME,
        }
    ),
    "UnreachedItem": {
        **_object(
            {
                "id": _STRING,
                "village_code": _STRING,
                "name": _STRING,
                "grid_id": _nullable(_STRING),
                "household_id": _nullable(_STRING),
                "address": _nullable(_STRING),
                "phone_masked": _nullable(_STRING),
                "reached_late": {"type": "boolean"},
            }
        ),
        "description": "A village (id = its code), grid member, household or person not reached "
        "in time; phone numbers are masked",
    },
    "UnreachedPage": _object(
        {
            "warning_id": _STRING,
            "kind": {"type": "string", "enum": list(_UNREACHED_KINDS)},
            "area": _nullable(_STRING),
            "items": {"type": "array", "items": _ref("UnreachedItem")},
            "next": _nullable(
                {"type": "string", "description": "pass as `after` for the following page"}
            ),
        }
    ),
    "HouseholdReachedResult": _object(
        {
            "result": {
                "type": "string",
                "enum": ["applied", "duplicate", "late"],
                "description": "applied: counted now; duplicate: already reached, nothing "
                "changed; late: recorded after the warning expired, not counted",
            },
            "reason": _STRING,
            "warning_id": _STRING,
            "household_id": _STRING,
        }
    ),
}

#: Operators' reports (dispatcher/reports/; docs/reports.md).
_PROBLEMS = ("offline", "failing", "no_ack", "not_sent", "waiting")
_REPORT_SCHEMAS: dict[str, Schema] = {
    "FollowupPerson": _object(
        {
            "id": _STRING,
            "name": _STRING,
            "phone": _nullable(_STRING),
            "vulnerable": {"type": "boolean"},
            "lives_alone": {"type": "boolean"},
            "reached_late": {"type": "boolean"},
        }
    ),
    "FollowupHousehold": _object(
        {
            "id": _STRING,
            "address": _STRING,
            "reached_late": {"type": "boolean"},
            "persons": {"type": "array", "items": _ref("FollowupPerson")},
        }
    ),
    "FollowupGrid": _object(
        {
            "id": _STRING,
            "name": _STRING,
            "households": {"type": "array", "items": _ref("FollowupHousehold")},
        }
    ),
    "FollowupMember": _object(
        {
            "id": _STRING,
            "name": _STRING,
            "phone": _nullable(_STRING),
            "acknowledged": {
                "type": "boolean",
                "description": "the grid member acknowledged the warning (in time)",
            },
        }
    ),
    "FollowupSheet": {
        **_object(
            {
                "village_code": _STRING,
                "village_name": _STRING,
                "grid_member": _nullable(_ref("FollowupMember")),
                "households": _COUNT,
                "grids": {"type": "array", "items": _ref("FollowupGrid")},
            }
        ),
        "description": "One grid member's households to visit in one village: those of the "
        "member's grids there not reached in time (grid_member null: grids without one)",
    },
    "Followup": _object(
        {
            "warning_id": _STRING,
            "area": _nullable(_STRING),
            "masked": {"type": "boolean"},
            "sheets": {"type": "array", "items": _ref("FollowupSheet")},
            "households": {**_COUNT, "description": "unreached households on this page"},
            "next": _nullable(
                {"type": "string", "description": "pass as `after` for the following page"}
            ),
        }
    ),
    "MaintenanceItem": {
        **_object(
            {
                "device_id": _STRING,
                "kind": _STRING,
                "name": _STRING,
                "area_code": _STRING,
                "area_name": _STRING,
                "adapter": _STRING,
                "address": _STRING,
                "problem": {"type": "string", "enum": list(_PROBLEMS)},
                "delivery_state": _STRING,
                "attempts": _COUNT,
                "outcome": {"type": "string", "enum": ["failed", "no_ack", "not_sent", "waiting"]},
                "reason": _STRING,
                "last_event": _nullable(_STRING),
                "last_event_at": _nullable(_DATETIME),
                "device_state": _ref("DeviceState"),
                "last_seen": _nullable(_DATETIME),
            }
        ),
        "description": "A device the test targeted that did not acknowledge it. problem: "
        "offline (offline or silent), failing (the send failed for good), no_ack (sent, never "
        "played), not_sent, waiting (still within its deadline)",
    },
    "ChannelTally": _object(
        {
            name: _COUNT
            for name in (
                "deliveries",
                "acknowledged",
                "not_confirmed",
                "unacknowledged",
                "failed",
                "skipped",
                "waiting",
                "not_sent",
            )
        }
    ),
    "TestReport": _object(
        {
            "warning_id": _STRING,
            "status": {"type": "string", "enum": ["Test", "Exercise"]},
            "level": _ref("Level"),
            "event": _STRING,
            "headline": _STRING,
            "sent": _DATETIME,
            "expires": _DATETIME,
            "state": _ref("WarningState"),
            "as_of": _DATETIME,
            "complete": {"type": "boolean"},
            "delivery_counts": _COUNTS_BY_NAME,
            "devices": _object(
                {
                    "targeted": _COUNT,
                    "acknowledged": _COUNT,
                    "silent": _COUNT,
                    "problems": _object({name: _COUNT for name in _PROBLEMS}),
                }
            ),
            "maintenance": {"type": "array", "items": _ref("MaintenanceItem")},
            "people": _object(
                {
                    "targeted": _COUNT,
                    "acknowledged": _COUNT,
                    "not_acknowledged": _COUNT,
                    "by_channel": {"type": "object", "additionalProperties": _ref("ChannelTally")},
                }
            ),
        }
    ),
}

#: Devices and their connection state (dispatcher/api/routes_devices.py).
_DEVICE_SCHEMAS: dict[str, Schema] = {
    "DeviceState": {
        "type": "string",
        "enum": [s.value for s in DeviceState],
        "description": "online / offline as the device's adapter last reported it; silent: "
        "online, but not heard from for longer than the heartbeat timeout; unknown: never "
        "heard from",
    },
    "Device": {
        **_object(
            {
                "id": _nullable(_STRING),
                "registered": {"type": "boolean"},
                "kind": _nullable({"type": "string", "enum": [k.value for k in DeviceKind]}),
                "name": _STRING,
                "adapter": _STRING,
                "address": _STRING,
                "area_code": _nullable(_STRING),
                "areas": {"type": "array", "items": _STRING},
                "state": _ref("DeviceState"),
                "last_seen": _nullable(_DATETIME),
                "detail": {"type": "object"},
            }
        ),
        "description": "A directory device with its state (area_code: where it is installed; "
        "areas: what its broadcast reaches), or, with registered false, a status heard from an "
        "address no directory device has (id, kind and area_code null). detail: what the "
        "device says of itself (firmware, volume, signal …)",
    },
    "DeviceList": _object(
        {
            "devices": {"type": "array", "items": _ref("Device")},
            "counts": {
                **_object({s.value: _COUNT for s in DeviceState}),
                "description": "every device the filters other than `state` match, by state",
            },
            "heartbeat_timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "seconds; [engine] device_heartbeat_timeout",
            },
            "as_of": _DATETIME,
            "next": _nullable(
                {"type": "string", "description": "pass as `after` for the following page"}
            ),
        }
    ),
}

_RESPONSE_SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "code": {
                        "type": "string",
                        "pattern": "^[a-z][a-z0-9_]*$",
                        "description": "stable snake_case code; see docs/api.md",
                    },
                    "message": _STRING,
                    "field": _STRING,
                    "line": {"type": "integer"},
                    "limit": {"type": "integer"},
                    "result": {
                        "type": "string",
                        "enum": ["rejected"],
                        "description": "a refused household confirmation",
                    },
                    "errors": {"type": "array", "items": _ref("FieldError")},
                },
                optional=("field", "line", "limit", "errors", "result"),
            )
        }
    ),
    "FieldError": _object({"field": _STRING, "message": _STRING, "type": _STRING}),
    "WarningState": {"type": "string", "enum": [s.value for s in WarningState]},
    "PlanStatus": {"type": "string", "enum": ["planned", "pending", "not_planned"]},
    "WarningLinks": _LINKS,
    "WarningSummary": _object(_SUMMARY_PROPERTIES),
    "AcceptedWarning": _object(
        {
            **_SUMMARY_PROPERTIES,
            "ignored": {
                "type": "array",
                "items": _STRING,
                "description": "CAP only: parts of the message Tocsin read past",
            },
        },
        optional=("ignored",),
    ),
    "WarningDetail": _object(_DETAIL_PROPERTIES),
    "WarningList": _object(
        {"warnings": {"type": "array", "items": _ref("WarningSummary")}, "next": _nullable(_STRING)}
    ),
    "AreaPlan": _object(
        {
            "code": _STRING,
            "name": _STRING,
            "level": _STRING,
            "parent_code": _nullable(_STRING),
            "total": _COUNT,
            "by_audience": _BY_AUDIENCE,
        }
    ),
    "PlanView": _object(
        {
            "warning_id": _STRING,
            "planned": {"type": "boolean"},
            "plan_status": _ref("PlanStatus"),
            "depth": {"type": "string", "enum": ["county", "town", "village"]},
            "total": _COUNT,
            "by_audience": _BY_AUDIENCE,
            "areas": {"type": "array", "items": _ref("AreaPlan")},
        }
    ),
    "DeliveryEvent": _object(
        {
            "id": {"type": "integer"},
            "at": _DATETIME,
            "delivery_id": _nullable({"type": "integer"}),
            "state": _STRING,
            "attempt": {"type": "integer"},
            "adapter": _STRING,
            "reason": _STRING,
            "detail": {"type": "object"},
        }
    ),
    "EventList": _object(
        {
            "warning_id": _STRING,
            "events": {"type": "array", "items": _ref("DeliveryEvent")},
            "last_id": {"type": "integer", "description": "pass as `after` to read on"},
            "more": {"type": "boolean"},
        }
    ),
    "AuditEntry": _object(
        {
            "id": {"type": "integer"},
            "at": _STRING,
            "principal": _STRING,
            "role": _STRING,
            "action": _STRING,
            "target": _STRING,
            "detail": {"type": "object"},
        }
    ),
    "AuditList": _object(
        {
            "entries": {"type": "array", "items": _ref("AuditEntry")},
            "next": _nullable({"type": "integer"}),
        }
    ),
    "DirectorySummary": _object({"counts": _COUNTS_BY_NAME}),
    "AreaLevel": {"type": "string", "enum": [level.value for level in AreaLevel]},
    "AreaCounts": {
        **_object(
            {
                "villages": _COUNT,
                "grids": _COUNT,
                "households": _COUNT,
                "persons": _COUNT,
                "persons_with_phone": _COUNT,
                "devices": _object({kind.value: _COUNT for kind in DeviceKind}),
            }
        ),
        "description": "What lies in the area and beneath it (a village counts as one village); "
        "devices by kind, counted where they are installed",
    },
    "AreaRef": _object(_AREA_PROPERTIES),
    "Area": _object(
        {**_AREA_PROPERTIES, "counts": _ref("AreaCounts")},
        optional=("counts",),
    ),
    "AreaList": _object(
        {
            "areas": {"type": "array", "items": _ref("Area")},
            "next": _nullable(
                {"type": "string", "description": "pass as `after` for the following page"}
            ),
        }
    ),
    "AreaDetail": _object(
        {
            **_AREA_PROPERTIES,
            "ancestors": {
                "type": "array",
                "items": _ref("AreaRef"),
                "description": "the areas above it, from the top down to its parent",
            },
            "counts": _ref("AreaCounts"),
        }
    ),
    "ServiceStatus": _object({"status": _STRING}),
    "AdapterStatus": _object(
        {
            "name": _STRING,
            "kind": _STRING,
            "channels": {"type": "array", "items": _STRING},
            "state": {"type": "string", "enum": ["starting", "ready", "not_ready", "paused"]},
            "breaker": {"type": "string", "enum": ["closed", "open", "half_open"]},
            "start_failures": _COUNT,
            "batches_in_flight": _COUNT,
            "rate_per_second": _nullable({"type": "number"}),
        }
    ),
    "AdapterList": _object({"adapters": {"type": "array", "items": _ref("AdapterStatus")}}),
    "Node": {
        **_object(
            {
                "name": _STRING,
                "state": {"type": "string", "enum": ["alive", "gone", "stopped"]},
                "host": _STRING,
                "pid": {"type": "integer"},
                "version": _STRING,
                "api_url": _nullable(_STRING),
                "started_at": _DATETIME,
                "seen_at": _DATETIME,
                "seen_seconds_ago": {"type": "number", "minimum": 0},
                "stopped_at": _nullable(_DATETIME),
                "leases": {"type": "integer", "minimum": 0},
                "lease_expires_at": _nullable(_DATETIME),
                "scheduler_leader": {"type": "boolean"},
                "leader_since": _nullable(_DATETIME),
            }
        ),
        "description": "A dispatcher node on this database. leases: deliveries it is sending "
        "now; lease_expires_at: when the first of them runs out (a gone node's leases are "
        "taken over then).",
    },
    "NodeList": _object(
        {
            "this_node": _nullable(_STRING),
            "scheduler_leader": _nullable(_STRING),
            "nodes": {"type": "array", "items": _ref("Node")},
        }
    ),
    **_DEVICE_SCHEMAS,
    **_COVERAGE_SCHEMAS,
    **_REPORT_SCHEMAS,
    "LogEvent": {
        **_object(
            {
                "id": {"type": "integer", "minimum": 1},
                "at": _DATETIME,
                "warning_id": _STRING,
                "delivery_id": _nullable({"type": "integer"}),
                "state": _STRING,
                "attempt": {"type": "integer"},
                "adapter": _STRING,
                "reason": _STRING,
                "detail": {"type": "object"},
                "target_id": _nullable(_STRING),
                "channel": _nullable(_STRING),
                "area_code": _nullable(_STRING),
                "level": _nullable(_ref("Level")),
            }
        ),
        "description": "One delivery-log event. delivery_id, target_id, channel and area_code "
        "are null for an event about the whole warning (received, planned, cancelled …).",
    },
    "LogPage": _object(
        {
            "events": {"type": "array", "items": _ref("LogEvent")},
            "order": {"type": "string", "enum": ["newest_first", "oldest_first"]},
            "next": _nullable(
                {
                    "type": "integer",
                    "description": "pass as `before` (newest first) or `after` (oldest first) "
                    "for the following page",
                }
            ),
        }
    ),
}

_ERROR_DESCRIPTIONS = {
    400: "Malformed request: not JSON / not well-formed XML, or a bad parameter or header",
    401: "Missing or invalid bearer token",
    403: "The token's role may not call this endpoint",
    404: "No such warning",
    409: "Conflict: the warning is not active, the identifier was used, or the "
    "Idempotency-Key was used with a different request",
    413: "The body is larger than server.max_body_bytes",
    415: "Unsupported Content-Type",
    422: "Understood but not acceptable (validation, unknown area, expiry, references)",
    503: "Not ready",
}


def _error(status: int, description: str | None = None) -> Schema:
    return {
        "description": description or _ERROR_DESCRIPTIONS[status],
        "content": {JSON_MEDIA_TYPE: {"schema": _ref("Error")}},
    }


def _json(description: str, schema: str, headers: Schema | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {JSON_MEDIA_TYPE: {"schema": _ref(schema)}},
    }
    if headers:
        response["headers"] = headers
    return response


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_ID_PARAMETER: Schema = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    "description": "the warning's id (the `id` of a 202 answer or a list entry)",
}
_IDEMPOTENCY_PARAMETER: Schema = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"},
    "description": "repeat the same request with the same key to get the same warning back, "
    "never a second one",
}
_ACCEPTED: Schema = _json(
    "Accepted; the plan is made in the background",
    "AcceptedWarning",
    headers={
        "Location": {"schema": _STRING, "required": True, "description": "the new message's URL"},
        "Idempotent-Replayed": {
            "schema": {"type": "string", "enum": ["true"]},
            "description": "present on a replay of an earlier request with the same key",
        },
    },
)
_EXAMPLE_WARNING = {
    "level": "red",
    "status": "Exercise",
    "event": "暴雨",
    "headline": "商州区暴雨红色预警",
    "instruction": "请立即转移到安全地带",
    "area_codes": ["611002000000"],
}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}


_LOG_CURSOR_AFTER = _query(
    "after",
    {"type": "integer", "minimum": 0, "maximum": _MAX_CURSOR},
    "an event id: the events after it, oldest first",
)
_LOG_CURSOR_BEFORE = _query(
    "before",
    {"type": "integer", "minimum": 1, "maximum": _MAX_CURSOR},
    "an event id: the events before it, newest first (the `next` of a page)",
)


def _log_filter_parameters() -> list[Schema]:
    """The delivery log's filters (dispatcher.log_query.LogFilter); they combine with AND."""
    text_id = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    return [
        _query("warning", text_id, "a warning's id"),
        _query(
            "area",
            {"type": "string", "pattern": _AREA_CODE_PATTERN},
            "an area code (12 digits, or 6 for GB2260): events whose target lies in it or "
            "beneath it",
        ),
        _query("level", _ref("Level"), "the warning's level"),
        _query("person", text_id, "a person's id"),
        _query("device", text_id, "a device's id"),
        _query("channel", {"type": "string", "enum": [c.value for c in Channel]}, "a channel"),
        _query("state", {"type": "string", "enum": list(LOG_STATES)}, "the state recorded"),
        _query("since", _DATETIME, "RFC 3339 with offset: events at or after this time"),
        _query("until", _DATETIME, "RFC 3339 with offset: events before this time"),
    ]


def _log_operations() -> dict[str, Schema]:
    bad_filter = _error(400, "A malformed filter, cursor or limit; `field` names it")
    return {
        "listLog": {
            "tags": ["log"],
            "summary": "The delivery log: a page of events, newest first (or oldest first "
            "after `after`)",
            "description": "Every attempt, outcome, retry, acknowledgement, escalation, expiry "
            "and cancellation. Without `after`, newest first; pass `next` as `before` for "
            "older events. With `after`, oldest first; pass `next` as `after`. docs/log.md.",
            "parameters": [
                *_log_filter_parameters(),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
                    "page size",
                ),
                _LOG_CURSOR_BEFORE,
                _LOG_CURSOR_AFTER,
            ],
            "responses": {"200": _json("A page of events", "LogPage"), "400": bad_filter},
        },
        "exportLogCsv": {
            "tags": ["log"],
            "summary": "The delivery log as CSV: every matching event, oldest first",
            "description": "UTF-8 with a byte-order mark, a header row and CRLF line ends; text "
            "cells that a spreadsheet would read as a formula (starting with = + - @) get a "
            "leading apostrophe. The export ends at the newest event when it starts; `after` "
            "and `before` bound it.",
            "parameters": [*_log_filter_parameters(), _LOG_CURSOR_BEFORE, _LOG_CURSOR_AFTER],
            "responses": {
                "200": {
                    "description": "CSV, streamed",
                    "headers": {
                        "Content-Disposition": {
                            "schema": _STRING,
                            "required": True,
                            "description": 'attachment; filename="tocsin-log-….csv"',
                        }
                    },
                    "content": {CSV_MEDIA_TYPE: {"schema": _STRING}},
                },
                "400": bad_filter,
            },
        },
        "streamLog": {
            "tags": ["log"],
            "summary": "Follow the delivery log live (server-sent events)",
            "description": "First the events after `Last-Event-ID` (or `after`), then each new "
            "event as it is written: `id: <event id>`, `event: delivery`, `data: <LogEvent "
            "JSON>`. A comment line every 15 s keeps the connection alive. Without either "
            "cursor the stream starts at the newest event. It ends when the server stops; an "
            "EventSource reconnects with Last-Event-ID and misses nothing.",
            "parameters": [
                *_log_filter_parameters(),
                _LOG_CURSOR_AFTER,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    "description": "the last event id received (an EventSource sends it when it "
                    "reconnects); wins over `after`",
                },
            ],
            "responses": {
                "200": {
                    "description": "An event stream; each event's data is a LogEvent",
                    "content": {
                        EVENT_STREAM_MEDIA_TYPE: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "event": {"const": "delivery"},
                                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                                    "data": {
                                        "type": "string",
                                        "contentMediaType": JSON_MEDIA_TYPE,
                                        "contentSchema": _ref("LogEvent"),
                                    },
                                },
                                "required": ["event", "id", "data"],
                            }
                        }
                    },
                },
                "400": bad_filter,
            },
        },
    }


def _coverage_operations() -> dict[str, Schema]:
    area = {"type": "string", "pattern": _AREA_CODE_PATTERN}
    return {
        "getCoverage": {
            "tags": ["warnings"],
            "summary": "The warning's coverage: villages, grid members, households and persons "
            "reached, per area",
            "description": "Counts and percentages for the whole warning and per area at "
            "`depth`, beneath `under` when given; acknowledgements after expiry are counted "
            "apart (`late`). docs/coverage.md.",
            "parameters": [
                _ID_PARAMETER,
                _query(
                    "depth",
                    {"type": "string", "enum": ["county", "town", "village"], "default": "county"},
                    "the level of the areas listed",
                ),
                _query(
                    "under",
                    area,
                    "an area code (12 digits, or 6 for GB2260): list only the areas at `depth` "
                    "that are it or lie beneath it",
                ),
                _query(
                    "tree",
                    {"type": "boolean", "default": False},
                    "true: the areas at every level from the county down to `depth`, each "
                    "followed by those beneath it",
                ),
                _query(
                    "format",
                    {"type": "string", "enum": ["json", "csv", "text"], "default": "json"},
                    "csv: one row per area and a total row; text: a printable summary in "
                    "Chinese (docs/reports.md)",
                ),
            ],
            "responses": {
                "200": {
                    "description": "The coverage (JSON), as CSV, or as a printable summary",
                    "content": {
                        JSON_MEDIA_TYPE: {"schema": _ref("Coverage")},
                        CSV_MEDIA_TYPE: {"schema": _STRING},
                        "text/plain": {"schema": _STRING},
                    },
                },
                "400": _error(400, "A malformed parameter, or an `under` that is no area"),
                "404": _error(404),
            },
        },
        "listUnreached": {
            "tags": ["warnings"],
            "summary": "Those the warning has not reached (in time): a page, by village then id",
            "parameters": [
                _ID_PARAMETER,
                _query(
                    "kind",
                    {"type": "string", "enum": list(_UNREACHED_KINDS), "default": "person"},
                    "what to list",
                ),
                _query("area", area, "only in this area or beneath it"),
                _query(
                    "after",
                    {"type": "string", "minLength": 1, "maxLength": 220},
                    "the `next` of the previous page",
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    "page size",
                ),
            ],
            "responses": {
                "200": _json("A page", "UnreachedPage"),
                "400": _error(400, "A malformed parameter or cursor, or an `area` that is no area"),
                "404": _error(404),
            },
        },
        "confirmHouseholdReached": {
            "tags": ["warnings"],
            "summary": "A grid member marks a household reached door-to-door",
            "description": "Only for a household of a grid the token's person serves, in the "
            "warning's areas. Idempotent: a second confirmation answers `duplicate`. Every "
            "confirmation is written to the audit log.",
            "parameters": [
                _ID_PARAMETER,
                {
                    "name": "household_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": "the household's id in the directory",
                },
            ],
            "requestBody": {
                "required": False,
                "content": {
                    JSON_MEDIA_TYPE: {
                        "schema": {
                            "type": "object",
                            "properties": {"note": {"type": "string", "maxLength": 500}},
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "200": _json("Recorded (or already known)", "HouseholdReachedResult"),
                "400": _error(400),
                "403": _error(
                    403,
                    "The token's role may not call this endpoint, names no person, or its "
                    "person is not a grid member of the household's grid",
                ),
                "404": _error(404, "No such warning or household"),
                "409": _error(409, "The engine refused it: the directory or warning changed"),
                "413": _error(413),
                "415": _error(415),
                "422": _error(422, "A malformed body, or a household outside the warning's areas"),
                "503": _error(503, "No engine runs to record it"),
            },
        },
    }


def _report_operations() -> dict[str, Schema]:
    area = {"type": "string", "pattern": _AREA_CODE_PATTERN}
    csv: Schema = {"schema": _STRING}
    return {
        "getFollowup": {
            "tags": ["warnings"],
            "summary": "The door-to-door follow-up list: households not reached, by grid member",
            "description": "Whole villages per page, in code order; in each, one sheet per grid "
            "member (by their first grid) with the households of their grids there that were "
            "not reached in time, and the people in them with their phone numbers. A page holds "
            "up to `limit` households, or one village whole. `format=csv`: the whole list from "
            "`after` on, one row per person, streamed. docs/reports.md.",
            "parameters": [
                _ID_PARAMETER,
                _query("area", area, "only in this area or beneath it"),
                _query(
                    "after",
                    {"type": "string", "pattern": "^[0-9]{12}$"},
                    "the `next` of the previous page (a village code)",
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 2000, "default": 500},
                    "households per page (a larger village is given whole)",
                ),
                _query(
                    "masked",
                    {"type": "boolean", "default": False},
                    "true: phone numbers masked (+86138****0001)",
                ),
                _query(
                    "format",
                    {"type": "string", "enum": ["json", "csv"], "default": "json"},
                    "csv: every page as CSV",
                ),
            ],
            "responses": {
                "200": {
                    "description": "A page (JSON), or the whole list (CSV)",
                    "content": {JSON_MEDIA_TYPE: {"schema": _ref("Followup")}, CSV_MEDIA_TYPE: csv},
                },
                "400": _error(400, "A malformed parameter or cursor, or an `area` that is no area"),
                "404": _error(404),
            },
        },
        "getTestReport": {
            "tags": ["warnings"],
            "summary": "A test broadcast's (or drill's) report and its maintenance list",
            "description": "For a warning with status Test or Exercise: devices and people "
            "that acknowledged it, people's deliveries by channel, and every device it "
            "targeted that did not acknowledge, with the delivery log's reason and the "
            "device's connection state. `format=csv`: the maintenance list as CSV. "
            "docs/reports.md.",
            "parameters": [
                _ID_PARAMETER,
                _query(
                    "format",
                    {"type": "string", "enum": ["json", "csv"], "default": "json"},
                    "csv: the maintenance list",
                ),
            ],
            "responses": {
                "200": {
                    "description": "The report (JSON), or its maintenance list (CSV)",
                    "content": {
                        JSON_MEDIA_TYPE: {"schema": _ref("TestReport")},
                        CSV_MEDIA_TYPE: csv,
                    },
                },
                "400": _error(400, "A malformed parameter"),
                "404": _error(404),
                "409": _error(409, "The warning is not a Test or an Exercise (`not_a_test`)"),
            },
        },
    }


def _device_operations() -> dict[str, Schema]:
    return {
        "listDevices": {
            "tags": ["directory"],
            "summary": "Devices and their connection state: a page, by id, with counts by state",
            "description": "Each directory device with its state as its adapter last reported "
            "it: `online`, `offline` (a last will), `silent` (online, but not heard from for "
            "longer than `heartbeat_timeout`), `unknown` (never heard from); when it was last "
            "heard from and what it says of itself. `counts` counts every device the filters "
            "other than `state` match. With `unregistered=true`: the statuses heard from "
            "addresses no directory device has (by adapter and address). docs/api.md.",
            "parameters": [
                _query(
                    "area",
                    {"type": "string", "pattern": _AREA_CODE_PATTERN},
                    "an area code (12 digits, or 6 for GB2260): devices installed in it or "
                    "beneath it",
                ),
                _query(
                    "kind",
                    {"type": "string", "enum": [k.value for k in DeviceKind]},
                    "only devices of this kind",
                ),
                _query(
                    "adapter",
                    {"type": "string", "minLength": 1, "maxLength": 100},
                    "only devices of this adapter instance",
                ),
                _query("state", _ref("DeviceState"), "only devices in this state"),
                _query(
                    "unregistered",
                    {"type": "boolean", "default": False},
                    "true: list the statuses heard from addresses no directory device has "
                    "(`area` and `kind` do not apply)",
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    "page size",
                ),
                _query(
                    "after",
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 1400,
                        "pattern": "^[A-Za-z0-9_-]+$",
                    },
                    "the `next` of the previous page (with the same `unregistered`)",
                ),
            ],
            "responses": {
                "200": _json("A page of devices", "DeviceList"),
                "400": _error(
                    400,
                    "A malformed parameter or cursor, an `area` that is no area, or `area` or "
                    "`kind` with `unregistered=true`; `field` names it",
                ),
            },
        },
        "getDevice": {
            "tags": ["directory"],
            "summary": "One device and its connection state",
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": "the device's id in the directory",
                }
            ],
            "responses": {
                "200": _json("The device", "Device"),
                "404": _error(404, "No such device"),
            },
        },
    }


def _write_operation(
    summary: str, body: Schema, *, body_required: bool = True, on_warning: bool = False
) -> Schema:
    errors = (400, 404, 409, 413, 415, 422) if on_warning else (400, 409, 413, 415, 422)
    return {
        "tags": ["warnings"],
        "summary": summary,
        "parameters": [_IDEMPOTENCY_PARAMETER],
        "requestBody": {"required": body_required, "content": body},
        "responses": {"202": _ACCEPTED, **{str(s): _error(s) for s in errors}},
    }


def _schedule_operations() -> dict[str, Schema]:
    # Imported here: that module builds on this one's helpers.
    from dispatcher.api.openapi_schedules import schedule_operations

    return schedule_operations()


def _operations() -> dict[str, Schema]:
    """Each operation's document, keyed by operationId (the route table's names)."""
    cap_body = {"schema": {"type": "string", "description": "a CAP 1.2 <alert> (docs/cap.md)"}}
    return {
        "postWarning": _write_operation(
            "Post a warning (JSON, or CAP 1.2 XML)",
            {
                JSON_MEDIA_TYPE: {"schema": _ref("WarningInput"), "example": _EXAMPLE_WARNING},
                **{media_type: cap_body for media_type in CAP_MEDIA_TYPES[:2]},
            },
        ),
        "updateWarning": {
            **_write_operation(
                "Update an active warning (a CAP Update that supersedes it)",
                {JSON_MEDIA_TYPE: {"schema": _ref("WarningChange")}},
                on_warning=True,
            ),
            "parameters": [_ID_PARAMETER, _IDEMPOTENCY_PARAMETER],
        },
        "cancelWarning": {
            **_write_operation(
                "Cancel an active warning (a CAP Cancel; devices are told to stop)",
                {JSON_MEDIA_TYPE: {"schema": _ref("CancelRequest")}},
                body_required=False,
                on_warning=True,
            ),
            "parameters": [_ID_PARAMETER, _IDEMPOTENCY_PARAMETER],
        },
        "listWarnings": {
            "tags": ["warnings"],
            "summary": "List warnings, newest first",
            "parameters": [
                _query("limit", _LIMIT, "page size"),
                _query(
                    "before",
                    {"type": "string", "minLength": 1},
                    "a warning id: list the warnings after it (the `next` of a page)",
                ),
                _query(
                    "status",
                    {"type": "string", "enum": [s.value for s in Status]},
                    "only this CAP status",
                ),
                _query("state", _ref("WarningState"), "only this state"),
            ],
            "responses": {"200": _json("A page of warnings", "WarningList"), "400": _error(400)},
        },
        "getWarning": {
            "tags": ["warnings"],
            "summary": "One warning: the full record, its plan status and delivery counts",
            "parameters": [_ID_PARAMETER],
            "responses": {"200": _json("The warning", "WarningDetail"), "404": _error(404)},
        },
        "getWarningCap": {
            "tags": ["warnings"],
            "summary": "One warning as a CAP 1.2 message",
            "parameters": [_ID_PARAMETER],
            "responses": {
                "200": {
                    "description": "CAP 1.2 XML",
                    "content": {"application/cap+xml": {"schema": _STRING}},
                },
                "404": _error(404),
            },
        },
        "getWarningPlan": {
            "tags": ["warnings"],
            "summary": "The warning's plan: deliveries per audience and channel, per area",
            "description": "While the plan is pending, `planned` is false, the counts are empty "
            "and a Retry-After header says when to ask again.",
            "parameters": [
                _ID_PARAMETER,
                _query(
                    "depth",
                    {"type": "string", "enum": ["county", "town", "village"], "default": "village"},
                    "the deepest area level listed",
                ),
            ],
            "responses": {
                "200": _json("The plan (or planned: false while pending)", "PlanView"),
                "400": _error(400),
                "404": _error(404),
            },
        },
        "getWarningEvents": {
            "tags": ["warnings"],
            "summary": "The warning's delivery log, oldest first",
            "parameters": [
                _ID_PARAMETER,
                _query(
                    "after",
                    {"type": "integer", "minimum": 0, "maximum": _MAX_CURSOR, "default": 0},
                    "an event id: read the events after it",
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    "page size",
                ),
            ],
            "responses": {
                "200": _json("A page of events", "EventList"),
                "400": _error(400),
                "404": _error(404),
            },
        },
        "listAudit": {
            "tags": ["audit"],
            "summary": "The audit log, newest first (admins only)",
            "parameters": [
                _query("limit", _LIMIT, "page size"),
                _query(
                    "before",
                    {"type": "integer", "minimum": 1, "maximum": _MAX_CURSOR},
                    "an entry id: list the entries before it (the `next` of a page)",
                ),
            ],
            "responses": {"200": _json("A page of audit entries", "AuditList"), "400": _error(400)},
        },
        "getDirectorySummary": {
            "tags": ["directory"],
            "summary": "How many areas, grids, households, persons and devices the directory holds",
            "responses": {"200": _json("Row counts", "DirectorySummary")},
        },
        "listAreas": {
            "tags": ["directory"],
            "summary": "Find the areas to warn: an area's children, or a search by name and level",
            "description": "Without `q` and `level`: the direct children of `parent`, or the top "
            "areas. With `q` or `level`: every area beneath `parent` (or in the whole "
            "directory) whose name contains `q` and whose level is `level`. By code; each "
            "with what lies beneath it unless `counts=false`.",
            "parameters": [
                _query(
                    "parent",
                    {"type": "string", "pattern": _AREA_CODE_PATTERN},
                    "an area code (12 digits, or 6 for GB2260): its children, or where to search",
                ),
                _query(
                    "q",
                    {"type": "string", "minLength": 1, "maxLength": 100},
                    "part of the name, e.g. 大荆",
                ),
                _query("level", _ref("AreaLevel"), "only areas of this level"),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                    "page size",
                ),
                _query(
                    "after",
                    {"type": "string", "pattern": _AREA_CODE_PATTERN},
                    "an area code: list the areas after it (the `next` of a page)",
                ),
                _query(
                    "counts",
                    {"type": "boolean", "default": True},
                    "false: leave out the counts (a quicker answer)",
                ),
            ],
            "responses": {
                "200": _json("A page of areas", "AreaList"),
                "400": _error(400, "A malformed parameter, or a `parent` that is no area"),
            },
        },
        "getArea": {
            "tags": ["directory"],
            "summary": "One area: the path down to it and what lies beneath it",
            "parameters": [
                {
                    "name": "code",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": _AREA_CODE_PATTERN},
                    "description": "12-digit statistical code, or a 6-digit GB2260 code "
                    "(county and above)",
                }
            ],
            "responses": {
                "200": _json("The area", "AreaDetail"),
                "400": _error(400, "Not an area code"),
                "404": _error(404, "No such area"),
            },
        },
        **_log_operations(),
        **_coverage_operations(),
        **_report_operations(),
        **_device_operations(),
        **_schedule_operations(),
        "healthz": {
            "tags": ["operations"],
            "summary": "Liveness: the process answers",
            "responses": {"200": _json("Alive", "ServiceStatus")},
        },
        "readyz": {
            "tags": ["operations"],
            "summary": "Readiness: the store answers and the planner runs",
            "responses": {"200": _json("Ready", "ServiceStatus"), "503": _error(503)},
        },
        "metrics": {
            "tags": ["operations"],
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {
                "200": {"description": "Metrics", "content": {"text/plain": {"schema": _STRING}}}
            },
        },
        "listAdapters": {
            "tags": ["operations"],
            "summary": "The adapter instances as the engine sees them",
            "description": "Each configured instance: its kind and channels; `starting`, "
            "`ready`, `not_ready` (its start failed; retried with backoff) or `paused` (its "
            "circuit breaker is open); batches in flight; its rate limit.",
            "responses": {"200": _json("The adapter instances", "AdapterList")},
        },
        "listNodes": {
            "tags": ["operations"],
            "summary": "The dispatcher nodes on this database",
            "description": "Every node that has run on the database: alive (heard from within "
            "[node] dead_after), gone (not heard from: its leases expire and are taken over) "
            "or stopped; the deliveries each is sending; which node runs the schedules.",
            "responses": {"200": _json("The nodes", "NodeList")},
        },
        "getOpenApi": {
            "tags": ["operations"],
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {JSON_MEDIA_TYPE: {"schema": {"type": "object"}}},
                }
            },
        },
    }


def _model_schemas(models: Sequence[type[BaseModel]]) -> dict[str, Schema]:
    """The models' JSON schemas with their ``$defs`` lifted into components."""
    schemas: dict[str, Schema] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        for name, definition in schema.pop("$defs", {}).items():
            if schemas.setdefault(name, definition) != definition:
                raise ValueError(f"two different schemas are named {name}")
        schemas[model.__name__] = schema
    return schemas


def _describe_bodies(schemas: dict[str, Schema]) -> None:
    """API-facing descriptions (the models' docstrings are written for developers) and the
    area-code pattern the models check in a validator, which JSON Schema cannot see."""
    schemas["WarningInput"]["description"] = (
        "A new warning. Area codes are normalised to 12 digits; unknown codes, an expiry in the "
        "past and an Update/Cancel whose references name no known warning are refused (422). "
        "level, event, headline and area_codes are required unless msg_type is Cancel: a "
        "Cancel may leave them and the other warning fields out, and they are taken from the "
        "warning it cancels (the first reference; area codes from all of them)."
    )
    schemas["WarningChange"]["description"] = (
        "The fields that change; the others are carried over from the warning being updated."
    )
    schemas["CancelRequest"]["description"] = "An optional note on why the warning is cancelled."
    for model in ("WarningInput", "WarningChange"):
        for option in schemas[model]["properties"]["area_codes"]["anyOf"]:
            if option.get("type") == "array":
                option["items"] = _AREA_CODE_ITEM


def build_openapi(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    operations = _operations()
    names = {e.name for e in endpoints}
    if names != set(operations):
        raise RuntimeError(
            f"OpenAPI document and routes differ: undocumented {sorted(names - set(operations))}"
            f", unrouted {sorted(set(operations) - names)}"
        )
    schemas = _model_schemas([WarningInput, WarningChange, CancelRequest, ScheduleInput])
    _describe_bodies(schemas)
    clashes = set(schemas) & set(_RESPONSE_SCHEMAS)
    if clashes:
        raise RuntimeError(f"schema names used twice: {sorted(clashes)}")
    schemas.update(copy.deepcopy(_RESPONSE_SCHEMAS))
    # Imported here: that module builds on this one's helpers.
    from dispatcher.api.openapi_schedules import SCHEDULE_SCHEMAS

    clashes = set(schemas) & set(SCHEDULE_SCHEMAS)
    if clashes:
        raise RuntimeError(f"schema names used twice: {sorted(clashes)}")
    schemas.update(copy.deepcopy(SCHEDULE_SCHEMAS))

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation = copy.deepcopy(operations[endpoint.name])
        operation["operationId"] = endpoint.name
        responses = operation["responses"]
        if endpoint.roles is None:
            operation["security"] = []
        else:
            roles = ", ".join(sorted(role.value for role in endpoint.roles))
            operation["description"] = (
                operation.get("description", "") + f"\n\nRoles: {roles}."
            ).strip()
            responses["401"] = _error(401)
            responses.setdefault("403", _error(403))
        operation["responses"] = dict(sorted(responses.items()))
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tocsin API",
            "version": "1",
            "description": "Emergency-warning broadcast dispatcher. Errors are "
            '`{"error": {"code", "message", "field"?}}`; docs/api.md is the manual.',
        },
        "tags": [
            {"name": "warnings"},
            {"name": "audit"},
            {"name": "directory"},
            {"name": "log"},
            {"name": "schedules"},
            {"name": "operations"},
        ],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from the config (`tocsin token new`)",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }
