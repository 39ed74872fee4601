"""Devices and their connection state, for installers and the dispatch staff: a page of the
directory's devices (or of statuses heard from addresses the directory lacks), filtered, with
the counts by state, and one device.

A device is ``online`` or ``offline`` as its adapter last reported it (an MQTT speaker's
retained state and last will), ``silent`` when it said it was online but has not been heard
from for longer than ``[engine] device_heartbeat_timeout``, and ``unknown`` when it was never
heard from. docs/api.md, "Devices"."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from dispatcher.api.deps import DEPS_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.request_input import query_bool, query_enum, query_int, query_text
from dispatcher.api.responses import json_response
from dispatcher.api.routes_areas import area_code_parameter
from dispatcher.api.routing import STAFF_ROLES, Endpoint
from dispatcher.config import ApiRole
from dispatcher.domain import DeviceKind
from dispatcher.log_query import format_time
from dispatcher.store.base import DeviceQuery, DeviceRow, DeviceState, InvalidCursor

#: Who may read devices' state: everyone but grid members.
DEVICE_READERS: frozenset[ApiRole] = STAFF_ROLES

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_ADAPTER_NAME = 100
#: A cursor encodes a device id, or an adapter name and an address (URL-safe base64).
MAX_CURSOR_LENGTH = 1400


def device_view(row: DeviceRow) -> dict[str, Any]:
    """A device as the API shows it; ``last_seen`` in RFC 3339 (UTC)."""
    return {
        "id": row.id,
        "registered": row.id is not None,
        "kind": row.kind,
        "name": row.name,
        "adapter": row.adapter,
        "address": row.address,
        "area_code": row.area_code,
        "areas": list(row.areas),
        "state": row.state.value,
        "last_seen": format_time(row.last_seen) if row.last_seen is not None else None,
        "detail": row.detail,
    }


async def _area(request: web.Request) -> str | None:
    raw = request.query.get("area")
    if raw is None:
        return None
    code = area_code_parameter(raw, "area")
    if await request.app[DEPS_KEY].store.unknown_area_codes([code]):
        raise ApiError(400, "invalid_parameter", f"area: no area {code}", field="area")
    return code


async def list_devices(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    unregistered = query_bool(request, "unregistered", default=False)
    kind = query_enum(request, "kind", DeviceKind)
    state = query_enum(request, "state", DeviceState)
    adapter = query_text(request, "adapter", max_length=MAX_ADAPTER_NAME)
    after = query_text(request, "after", max_length=MAX_CURSOR_LENGTH)
    limit = query_int(request, "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE)
    area = await _area(request)
    if unregistered:
        for name, value in (("area", area), ("kind", kind)):
            if value is not None:
                raise ApiError(
                    400,
                    "invalid_parameter",
                    f"{name} does not apply with unregistered=true: an address the directory "
                    "lacks has no area or kind",
                    field=name,
                )
    query = DeviceQuery(
        area=area,
        kind=kind.value if kind is not None else None,
        adapter=adapter,
        state=state,
        unregistered=unregistered,
    )
    now = time.time()
    timeout = deps.device_heartbeat_timeout
    try:
        page = await deps.store.list_devices(
            query, now=now, heartbeat_timeout=timeout, after=after, limit=limit
        )
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_parameter", f"after: {exc}", field="after") from None
    return json_response(
        {
            "devices": [device_view(row) for row in page.devices],
            "counts": page.counts,
            "heartbeat_timeout": timeout,
            "as_of": format_time(now),
            "next": page.next,
        }
    )


async def get_device(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    device_id = request.match_info["id"]
    row = await deps.store.get_device(
        device_id, now=time.time(), heartbeat_timeout=deps.device_heartbeat_timeout
    )
    if row is None:
        raise ApiError(404, "not_found", f"no device {device_id}")
    return json_response(device_view(row))


ENDPOINTS = (
    Endpoint("GET", "/v1/devices", list_devices, "listDevices", DEVICE_READERS),
    Endpoint("GET", "/v1/devices/{id}", get_device, "getDevice", DEVICE_READERS),
)
