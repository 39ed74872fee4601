"""Scheduled test broadcasts and drills (docs/schedules.md): list, read, add, remove, run now,
and each schedule's runs. The dispatch staff read; duty officers and admins change. Every
change is in the audit log. A schedule from the config file is changed only there (409)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dispatcher.api.deps import DEPS_KEY, PRINCIPAL_KEY
from dispatcher.api.errors import ApiError, from_rejection
from dispatcher.api.request_input import (
    BodyKind,
    body_kind,
    idempotency_claim,
    parse_json_model,
    query_bool,
    query_int,
    read_body,
)
from dispatcher.api.responses import json_response
from dispatcher.api.routing import STAFF_ROLES, WARNING_WRITERS, Endpoint
from dispatcher.api.views import warning_path
from dispatcher.log_query import LogFilterError, parse_time
from dispatcher.schedules.service import Schedule, ScheduleService
from dispatcher.schedules.spec import ScheduleInput
from dispatcher.schedules.timing import SHANGHAI, crontab_trigger, next_fire
from dispatcher.store.schedules_base import ScheduleRunRow

REPLAYED_HEADER = "Idempotent-Replayed"


def schedule_path(schedule_id: str) -> str:
    return f"/v1/schedules/{schedule_id}"


def _local(moment: datetime | None) -> str | None:
    """Schedules are read in Asia/Shanghai: their times are shown in it (with the offset)."""
    return moment.astimezone(SHANGHAI).isoformat() if moment is not None else None


def schedule_view(schedule: Schedule, *, now: datetime) -> dict[str, Any]:
    spec, row = schedule.spec, schedule.row
    base = schedule_path(schedule.id)
    upcoming = next_fire(crontab_trigger(spec.cron), now) if row.enabled else None
    return {
        "id": schedule.id,
        "name": spec.name,
        "source": row.source.value,
        "cron": spec.cron,
        "timezone": "Asia/Shanghai",
        "status": spec.status.value,
        "level": spec.level.value,
        "areas": list(spec.areas),
        "rules": [rule.model_dump(mode="json", exclude_defaults=True) for rule in spec.rules],
        "event": spec.event,
        "headline": spec.headline,
        "message": spec.message,
        "quiet_hours": spec.quiet_hours,
        "grace": spec.grace,
        "expires_after": spec.expires_after,
        "report_after": spec.report_after,
        "enabled": row.enabled,
        "next_fire_at": _local(upcoming),
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "links": {"self": base, "runs": f"{base}/runs", "run": f"{base}/run"},
    }


def run_view(run: ScheduleRunRow) -> dict[str, Any]:
    return {
        "id": run.id,
        "schedule_id": run.schedule_id,
        "fire_at": _local(run.fire_at),
        "kind": run.kind.value,
        "state": run.state.value,
        "started_at": run.started_at.isoformat(),
        "warning_id": run.warning_id,
        "warning": warning_path(run.warning_id) if run.warning_id is not None else None,
        "node": run.node,
        "principal": run.principal,
        "note": run.note,
        "report": run.report,
        "reported_at": run.reported_at.isoformat() if run.reported_at is not None else None,
    }


def _service(request: web.Request) -> ScheduleService:
    service = request.app[DEPS_KEY].schedules
    if service is None:
        raise ApiError(
            503, "not_ready", "schedules are not available: the scheduler is not running"
        )
    return service


def _now() -> datetime:
    return datetime.now(UTC)


async def list_schedules(request: web.Request) -> web.Response:
    now = _now()
    schedules = await _service(request).schedules()
    return json_response({"schedules": [schedule_view(s, now=now) for s in schedules]})


async def get_schedule(request: web.Request) -> web.Response:
    schedule = await _service(request).get(request.match_info["id"])
    return json_response(schedule_view(schedule, now=_now()))


async def create_schedule(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    service = _service(request)
    if body_kind(request, accept_cap=False) is BodyKind.EMPTY:
        raise ApiError(400, "body_required", "the request needs a body: a schedule as JSON")
    body = await read_body(request, deps.max_body_bytes)
    data = parse_json_model(body, ScheduleInput)
    schedule = await service.create(data, principal=request[PRINCIPAL_KEY])
    return json_response(
        schedule_view(schedule, now=_now()),
        status=201,
        headers={"Location": schedule_path(schedule.id)},
    )


async def delete_schedule(request: web.Request) -> web.Response:
    service = _service(request)
    removed = await service.delete(request.match_info["id"], principal=request[PRINCIPAL_KEY])
    view = schedule_view(removed, now=_now())
    return json_response({**view, "next_fire_at": None, "removed": True})


async def run_schedule(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    service = _service(request)
    force = query_bool(request, "force", default=False)
    body = await read_body(request, deps.max_body_bytes)
    principal = request[PRINCIPAL_KEY]
    outcome = await service.run_now(
        request.match_info["id"],
        principal=principal,
        force=force,
        idempotency=idempotency_claim(request, principal, body),
    )
    if outcome.rejection is not None:
        # Recorded as a failed run; answered as the refusal it was.
        error = from_rejection(outcome.rejection)
        if outcome.run is not None:
            error.message += f" (recorded as failed run {outcome.run.id})"
        raise error
    if outcome.run is None:
        raise ApiError(409, "conflict", "this run was claimed by another request; try again")
    headers = {"Location": warning_path(outcome.run.warning_id or "")}
    if outcome.replayed:
        headers[REPLAYED_HEADER] = "true"
    return json_response(run_view(outcome.run), status=202, headers=headers)


async def list_schedule_runs(request: web.Request) -> web.Response:
    service = _service(request)
    limit = query_int(request, "limit", default=50, low=1, high=500)
    before: datetime | None = None
    raw = request.query.get("before")
    if raw is not None:
        try:
            parse_time("before", raw)
        except LogFilterError as exc:
            raise ApiError(400, "invalid_parameter", str(exc), field="before") from None
        # Parsed as a datetime, not through a float: a cursor keeps its microseconds.
        before = datetime.fromisoformat(raw.upper().replace(" ", "T"))
    schedule_id = request.match_info["id"]
    runs = await service.runs(schedule_id, limit=limit + 1, before=before)
    more = len(runs) > limit
    runs = runs[:limit]
    return json_response(
        {
            "schedule_id": schedule_id,
            "runs": [run_view(r) for r in runs],
            "next": _local(runs[-1].fire_at) if more else None,
        }
    )


ENDPOINTS = (
    Endpoint("GET", "/v1/schedules", list_schedules, "listSchedules", STAFF_ROLES),
    Endpoint("POST", "/v1/schedules", create_schedule, "createSchedule", WARNING_WRITERS),
    Endpoint("GET", "/v1/schedules/{id}", get_schedule, "getSchedule", STAFF_ROLES),
    Endpoint("DELETE", "/v1/schedules/{id}", delete_schedule, "deleteSchedule", WARNING_WRITERS),
    Endpoint("POST", "/v1/schedules/{id}/run", run_schedule, "runSchedule", WARNING_WRITERS),
    Endpoint("GET", "/v1/schedules/{id}/runs", list_schedule_runs, "listScheduleRuns", STAFF_ROLES),
)
