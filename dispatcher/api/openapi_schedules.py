"""The OpenAPI description of /v1/schedules (dispatcher/api/routes_schedules.py): its
operations and response schemas, merged into the document by :mod:`dispatcher.api.openapi`.
The request body's schema comes from :class:`dispatcher.schedules.spec.ScheduleInput`."""

from __future__ import annotations

from dispatcher.api.openapi import (
    _DATETIME,
    _IDEMPOTENCY_PARAMETER,
    _STRING,
    Schema,
    _error,
    _json,
    _nullable,
    _object,
    _query,
    _ref,
)
from dispatcher.api.request_input import JSON_MEDIA_TYPE
from dispatcher.schedules.spec import SCHEDULE_ID_PATTERN, ScheduleStatus
from dispatcher.store.schedules_base import RunKind, RunState, ScheduleSource

_LOCAL_TIME = {**_DATETIME, "description": "in Asia/Shanghai (+08:00)"}
_SECONDS: Schema = {"type": "number", "minimum": 0, "description": "seconds"}

_SCHEDULE_PROPERTIES: dict[str, Schema] = {
    "id": _STRING,
    "name": _STRING,
    "source": {
        "type": "string",
        "enum": [s.value for s in ScheduleSource],
        "description": "config: from [[schedules]] in the config file, changed only there; "
        "api: added over the API",
    },
    "cron": {"type": "string", "description": "5-field crontab, read in Asia/Shanghai"},
    "timezone": {"type": "string", "enum": ["Asia/Shanghai"]},
    "status": {"type": "string", "enum": [s.value for s in ScheduleStatus]},
    "level": _ref("Level"),
    "areas": {"type": "array", "items": _STRING},
    "rules": {"type": "array", "items": _ref("PolicyRule")},
    "event": _STRING,
    "headline": _STRING,
    "message": _STRING,
    "quiet_hours": _nullable(_STRING),
    "grace": _SECONDS,
    "expires_after": _SECONDS,
    "report_after": _nullable(_SECONDS),
    "enabled": {"type": "boolean"},
    "next_fire_at": _nullable(
        {**_LOCAL_TIME, "description": "the next fire time, in Asia/Shanghai; null when disabled"}
    ),
    "created_by": _STRING,
    "created_at": _DATETIME,
    "updated_at": _DATETIME,
    "links": _object({name: _STRING for name in ("self", "runs", "run")}),
}

#: Merged into the document's component schemas.
SCHEDULE_SCHEMAS: dict[str, Schema] = {
    "Schedule": _object(
        {
            **_SCHEDULE_PROPERTIES,
            "removed": {"type": "boolean", "description": "DELETE only: it was removed"},
        },
        optional=("removed",),
    ),
    "ScheduleList": _object({"schedules": {"type": "array", "items": _ref("Schedule")}}),
    "ScheduleRun": {
        **_object(
            {
                "id": {"type": "integer", "minimum": 1},
                "schedule_id": _STRING,
                "fire_at": {
                    **_LOCAL_TIME,
                    "description": "the scheduled time (a run-now: when it was asked for), "
                    "in Asia/Shanghai",
                },
                "kind": {"type": "string", "enum": [k.value for k in RunKind]},
                "state": {"type": "string", "enum": [s.value for s in RunState]},
                "started_at": _DATETIME,
                "warning_id": _nullable(_STRING),
                "warning": _nullable({"type": "string", "description": "the warning's URL"}),
                "node": {"type": "string", "description": "host:pid of the node that ran it"},
                "principal": _STRING,
                "note": _STRING,
                "report": _nullable(
                    {
                        "type": "object",
                        "description": "the test report's counts and the first silent "
                        "devices, once made (the whole report: GET "
                        "/v1/warnings/{id}/test-report)",
                    }
                ),
                "reported_at": _nullable(_DATETIME),
            }
        ),
        "description": "One fire time of a schedule: ran (a warning was made), missed (the "
        "daemon was down past the grace window), skipped_quiet (inside the quiet hours), "
        "failed (the warning was refused: note says why), or running (being made)",
    },
    "ScheduleRunList": _object(
        {
            "schedule_id": _STRING,
            "runs": {"type": "array", "items": _ref("ScheduleRun")},
            "next": _nullable(
                {**_LOCAL_TIME, "description": "pass as `before` for the following page"}
            ),
        }
    ),
}

_SCHEDULE_ID: Schema = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": SCHEDULE_ID_PATTERN},
    "description": "the schedule's id",
}
_NOT_RUNNING = _error(503, "The scheduler is not running")
_NO_SCHEDULE = _error(404, "No such schedule")
_EXAMPLE_SCHEDULE = {
    "id": "weekly-speakers",
    "name": "每周一喇叭测试",
    "cron": "0 10 * * 1",
    "status": "Test",
    "level": "blue",
    "areas": ["611002000000"],
    "rules": [{"audience": "devices", "device_kinds": ["loudspeaker"]}],
    "headline": "应急广播例行测试",
    "message": "这是应急广播系统的例行测试，请勿惊慌。",
    "quiet_hours": "22:00-07:00",
}


def schedule_operations() -> dict[str, Schema]:
    """Each /v1/schedules operation, keyed by operationId."""
    return {
        "listSchedules": {
            "tags": ["schedules"],
            "summary": "Scheduled test broadcasts and drills",
            "responses": {
                "200": _json("Every schedule, by id", "ScheduleList"),
                "503": _NOT_RUNNING,
            },
        },
        "createSchedule": {
            "tags": ["schedules"],
            "summary": "Add a schedule (a test broadcast or a drill on a cron calendar)",
            "description": "Its runs make Test (or Exercise) warnings planned by its own rules "
            "instead of the level policy's. Fire times missed while the daemon is down run "
            "late within `grace`, older ones are recorded missed. docs/schedules.md.",
            "requestBody": {
                "required": True,
                "content": {
                    JSON_MEDIA_TYPE: {"schema": _ref("ScheduleInput"), "example": _EXAMPLE_SCHEDULE}
                },
            },
            "responses": {
                "201": _json(
                    "Added",
                    "Schedule",
                    headers={
                        "Location": {
                            "schema": _STRING,
                            "required": True,
                            "description": "the schedule's URL",
                        }
                    },
                ),
                "400": _error(400, "Not JSON, or no body"),
                "409": _error(409, "A schedule with this id exists"),
                "413": _error(413),
                "415": _error(415),
                "422": _error(422, "Not a valid schedule, or an unknown area; `field` names it"),
                "503": _NOT_RUNNING,
            },
        },
        "getSchedule": {
            "tags": ["schedules"],
            "summary": "One schedule, with its next fire time",
            "parameters": [_SCHEDULE_ID],
            "responses": {
                "200": _json("The schedule", "Schedule"),
                "404": _NO_SCHEDULE,
                "503": _NOT_RUNNING,
            },
        },
        "deleteSchedule": {
            "tags": ["schedules"],
            "summary": "Remove a schedule added over the API (its runs are kept)",
            "parameters": [_SCHEDULE_ID],
            "responses": {
                "200": _json("Removed: the schedule as it was, with removed: true", "Schedule"),
                "404": _NO_SCHEDULE,
                "409": _error(409, "The schedule comes from the config file: edit it there"),
                "503": _NOT_RUNNING,
            },
        },
        "runSchedule": {
            "tags": ["schedules"],
            "summary": "Run a schedule now, once (enabled or not)",
            "description": "Makes its Test or Exercise warning now and records a `manual` run. "
            "Inside the schedule's quiet hours it is refused (409) unless `force=true`.",
            "parameters": [
                _SCHEDULE_ID,
                _query("force", {"type": "boolean", "default": False}, "run inside quiet hours"),
                _IDEMPOTENCY_PARAMETER,
            ],
            "responses": {
                "202": _json(
                    "Its warning was made; the plan is made in the background",
                    "ScheduleRun",
                    headers={
                        "Location": {
                            "schema": _STRING,
                            "required": True,
                            "description": "the warning's URL",
                        },
                        "Idempotent-Replayed": {
                            "schema": {"type": "string", "enum": ["true"]},
                            "description": "a replay of an earlier request with the same key",
                        },
                    },
                ),
                "400": _error(400, "A malformed parameter or Idempotency-Key"),
                "404": _NO_SCHEDULE,
                "409": _error(
                    409,
                    "Inside the quiet hours without force, or the Idempotency-Key was used "
                    "with a different request",
                ),
                "422": _error(
                    422, "Its warning was refused (e.g. an unknown area): recorded as failed"
                ),
                "503": _NOT_RUNNING,
            },
        },
        "listScheduleRuns": {
            "tags": ["schedules"],
            "summary": "A schedule's runs, newest fire time first",
            "parameters": [
                _SCHEDULE_ID,
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    "page size",
                ),
                _query("before", _DATETIME, "the runs fired before this time (a page's `next`)"),
            ],
            "responses": {
                "200": _json("A page of runs", "ScheduleRunList"),
                "400": _error(400, "A malformed parameter"),
                "404": _NO_SCHEDULE,
                "503": _NOT_RUNNING,
            },
        },
    }
