"""The delivery log: every event of every warning, filtered, paged, exported as CSV and followed
live as server-sent events. Every role but grid members may read it.

The CSV export and the stream write their answer in pages as they read it (constant memory,
whatever the log's size). Once a streaming answer has begun, a failure cannot become a JSON
error any more: it is logged and the connection dropped, so the client sees a cut-off body
rather than a complete-looking one."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import hdrs, web

from dispatcher.api.auth import bearer_token, identify
from dispatcher.api.deps import DEPS_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.request_input import query_int
from dispatcher.api.responses import dumps, json_response
from dispatcher.api.routing import STAFF_ROLES, Endpoint, endpoint_of
from dispatcher.config import ApiRole
from dispatcher.log_query import (
    DEFAULT_PAGE,
    FILTER_PARAMETERS,
    MAX_CURSOR,
    MAX_PAGE,
    TIME_SLACK,
    LogEvent,
    LogFilter,
    LogFilterError,
    format_time,
)

log = structlog.get_logger(__name__)

#: Who may read the delivery log: everyone but grid members (whose tokens confirm visits).
LOG_READERS: frozenset[ApiRole] = STAFF_ROLES

CSV_CONTENT_TYPE = "text/csv"
EVENT_STREAM_CONTENT_TYPE = "text/event-stream"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
#: How often a stream looks for new events, and how long it may stay silent before a comment
#: line tells proxies (and the client) the connection is alive.
STREAM_POLL_SECONDS = 0.5
STREAM_KEEPALIVE_SECONDS = 15.0
#: Tells an EventSource how long to wait before reconnecting (with Last-Event-ID).
STREAM_RETRY_MS = 2000

#: The CSV export's columns, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "at",
    "warning_id",
    "level",
    "delivery_id",
    "state",
    "attempt",
    "adapter",
    "reason",
    "target_id",
    "channel",
    "area_code",
    "detail",
)
# A cell starting with one of these is a formula to a spreadsheet (CSV injection): such text
# cells get a leading apostrophe, which spreadsheets show as text and do not evaluate.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

#: Set when the server shuts down, so the streams end instead of holding the shutdown up.
LOG_STOPPING_KEY = web.AppKey("tocsin_log_stopping", asyncio.Event)


def install(app: web.Application) -> None:
    """What the log's endpoints need from the app: a way to end the streams on shutdown
    (``runner.cleanup()`` runs on_shutdown before it waits for the handlers still running)."""
    app[LOG_STOPPING_KEY] = asyncio.Event()

    async def stop_streams(app: web.Application) -> None:
        app[LOG_STOPPING_KEY].set()

    app.on_shutdown.append(stop_streams)


# -- parameters --------------------------------------------------------------------------------


def _log_filter(request: web.Request, cursors: Sequence[str]) -> LogFilter:
    for name in (*FILTER_PARAMETERS, "limit", *cursors):
        if len(request.query.getall(name, [])) > 1:
            raise ApiError(400, "invalid_parameter", f"{name} is given more than once", field=name)
    try:
        return LogFilter.from_params(request.query)
    except LogFilterError as exc:
        raise ApiError(400, "invalid_parameter", str(exc), field=exc.parameter) from None


def _cursor(request: web.Request, name: str, *, low: int) -> int | None:
    if name not in request.query:
        return None
    return query_int(request, name, default=0, low=low, high=MAX_CURSOR)


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get(LAST_EVENT_ID_HEADER)
    if raw is None:
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit() and int(value) <= MAX_CURSOR):
        raise ApiError(
            400,
            "invalid_parameter",
            f"{LAST_EVENT_ID_HEADER} must be an event id (a whole number from 0 to {MAX_CURSOR})",
            field=LAST_EVENT_ID_HEADER,
        )
    return int(value)


# -- GET /v1/log -------------------------------------------------------------------------------


async def list_log(request: web.Request) -> web.Response:
    store = request.app[DEPS_KEY].store
    query = _log_filter(request, ("before", "after"))
    limit = query_int(request, "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE)
    before = _cursor(request, "before", low=1)
    after = _cursor(request, "after", low=0)
    page = await store.log_events(query, before=before, after=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return json_response(
        {
            "events": [event.as_json() for event in page],
            "order": "oldest_first" if after is not None else "newest_first",
            "next": page[-1].id if more else None,
        }
    )


# -- GET /v1/log.csv ---------------------------------------------------------------------------


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def csv_row(event: LogEvent) -> list[Any]:
    """One event as CSV cells: numbers as numbers, text guarded against formula injection."""

    def text(value: str | None) -> str:
        return _cell(value) if value is not None else ""

    return [
        event.id,
        format_time(event.at),
        text(event.warning_id),
        text(event.level),
        event.delivery_id if event.delivery_id is not None else "",
        text(event.state),
        event.attempt,
        text(event.adapter),
        text(event.reason),
        text(event.target_id),
        text(event.channel),
        text(event.area_code),
        text(dumps(event.detail)),
    ]


def _csv_text(rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


async def export_log_csv(request: web.Request) -> web.StreamResponse:
    store = request.app[DEPS_KEY].store
    stopping = request.app[LOG_STOPPING_KEY]
    query = _log_filter(request, ("before", "after"))
    after = _cursor(request, "after", low=0) or 0
    before = _cursor(request, "before", low=1)
    # The export is the log as it stands now: events written while it runs are left out.
    end = before if before is not None else await store.log_last_id() + 1
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_TYPE: f"{CSV_CONTENT_TYPE}; charset=utf-8; header=present",
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="tocsin-log-{stamp}.csv"',
            hdrs.CACHE_CONTROL: "no-store",
        }
    )
    await response.prepare(request)
    try:
        # A byte-order mark, so spreadsheets read the Chinese text as UTF-8.
        await response.write("\ufeff".encode() + _csv_text([CSV_COLUMNS]))
        cursor = after
        while True:
            if stopping.is_set():
                # The server is stopping: cut the export off rather than end it as if complete.
                _abandon(request, "log export cut off: the server is stopping", error=False)
                return response
            page = await store.log_events(query, after=cursor, before=end, limit=MAX_PAGE)
            if page:
                await response.write(_csv_text(csv_row(event) for event in page))
            if len(page) < MAX_PAGE:
                break
            cursor = page[-1].id
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-export: nothing to answer, nothing to clean up.
        log.debug("log export ended: the client disconnected")
    except Exception:
        _abandon(request, "log export failed")
    return response


# -- GET /v1/log/stream ------------------------------------------------------------------------


def sse_event(event: LogEvent) -> bytes:
    return f"id: {event.id}\nevent: delivery\ndata: {dumps(event.as_json())}\n\n".encode()


async def stream_log(request: web.Request) -> web.StreamResponse:
    store = request.app[DEPS_KEY].store
    stopping = request.app[LOG_STOPPING_KEY]
    query = _log_filter(request, ("after",))
    after = _cursor(request, "after", low=0)
    resume = _last_event_id(request)
    # An EventSource reconnecting sends the last id it saw: that wins over the URL's `after`.
    start = resume if resume is not None else after
    cursor = start if start is not None else await store.log_last_id()
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_TYPE: f"{EVENT_STREAM_CONTENT_TYPE}; charset=utf-8",
            hdrs.CACHE_CONTROL: "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events on as they come
        }
    )
    await response.prepare(request)
    try:
        await response.write(f"retry: {STREAM_RETRY_MS}\n: delivery log\n\n".encode())
        quiet_since = checked_at = time.monotonic()
        while not stopping.is_set() and _connected(request):
            newest = await store.log_last_id()
            # Catch up in pages; the cursor passes the events the filter leaves out too, so
            # each look reads only what was written since the last one.
            while cursor < newest and not stopping.is_set() and _connected(request):
                page = await store.log_events(
                    query, after=cursor, before=newest + 1, limit=MAX_PAGE
                )
                if page:
                    await response.write(b"".join(sse_event(event) for event in page))
                    quiet_since = time.monotonic()
                cursor = page[-1].id if len(page) == MAX_PAGE else newest
            if query.until is not None and time.time() >= query.until + TIME_SLACK:
                break  # caught up, and no event written from now on can be before `until`
            now = time.monotonic()
            if now - checked_at >= STREAM_KEEPALIVE_SECONDS:
                if not _still_allowed(request):
                    break  # the token was withdrawn or its role changed (a config reload)
                checked_at = now
            if now - quiet_since >= STREAM_KEEPALIVE_SECONDS:
                await response.write(b": keep-alive\n\n")
                quiet_since = now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STREAM_POLL_SECONDS):
                    await stopping.wait()
        await response.write_eof()
    except ConnectionError:
        # The client stopped following: the stream simply ends.
        log.debug("log stream ended: the client disconnected")
    except Exception:
        _abandon(request, "log stream failed")
    return response


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _still_allowed(request: web.Request) -> bool:
    """Whether the stream's token still opens this endpoint (tokens can change on reload)."""
    endpoint = endpoint_of(request)
    try:
        token = bearer_token(request.headers.get(hdrs.AUTHORIZATION))
    except ApiError:
        return False
    matched = identify(token, request.app[DEPS_KEY].tokens())
    roles = endpoint.roles if endpoint is not None else None
    return matched is not None and roles is not None and matched.role in roles


def _abandon(request: web.Request, message: str, *, error: bool = True) -> None:
    """The answer cannot be finished (a failure, or shutdown): log why and drop the
    connection, so the client sees the body cut off instead of a complete-looking one."""
    if error:
        log.exception(message, route=request.path)
    else:
        log.warning(message, route=request.path)
    if request.transport is not None:
        request.transport.close()


ENDPOINTS = (
    Endpoint("GET", "/v1/log", list_log, "listLog", LOG_READERS),
    Endpoint("GET", "/v1/log.csv", export_log_csv, "exportLogCsv", LOG_READERS),
    Endpoint("GET", "/v1/log/stream", stream_log, "streamLog", LOG_READERS),
)
