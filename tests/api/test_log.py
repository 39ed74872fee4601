"""The delivery log over HTTP: GET /v1/log (filters, pages both ways), /v1/log.csv (the whole
export, escaped and guarded against formula injection) and /v1/log/stream (server-sent events:
the backlog after Last-Event-ID, then new events live; the stream ends when the server stops).

The engine is not needed: events are appended straight into the store's file, for the real
deliveries the planner wrote for two warnings."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from test_log_store import EventRow, insert_events

from api.harness import COUNTY, OTHER_COUNTY, TOKENS, TOWN, VILLAGE, Api, red_warning
from api.live_server import LiveServer
from dispatcher.api import routes_log
from dispatcher.api.app import ApiDeps, create_app
from dispatcher.api.routes_log import CSV_COLUMNS
from dispatcher.config import ApiRole, ApiToken, CapConfig, hash_token
from dispatcher.log_query import format_time
from dispatcher.warning_service import WarningService

OPERATOR = ApiRole.OPERATOR
READERS = (ApiRole.DUTY_OFFICER, ApiRole.OPERATOR, ApiRole.INSTALLER, ApiRole.ADMIN)
PATHS = ("/v1/log", "/v1/log.csv", "/v1/log/stream")
#: A stream bounded in the past ends after its backlog (nothing new can match).
ENDED = "until=2000-01-01T00:00:00Z"
STATES = ("sent", "delivered", "acknowledged", "failed", "retry_wait", "unacknowledged")


@dataclass
class Logged:
    red: str
    blue: str
    person: str
    device: str
    #: When the fixture's log starts (its events are 0.1 s apart).
    start: float


async def post_and_plan(api: Api, body: dict[str, Any]) -> str:
    status, warning, _ = await api.post_warning(body)
    assert status == 202, warning
    await api.planner.wait_idle()
    return str(warning["id"])


@pytest.fixture
async def logged(api: Api) -> Logged:
    """Two planned warnings (red over one county, blue over the other) and a log for their
    deliveries: each sent, retried, sent again, delivered, then acknowledged, failed …"""
    red = await post_and_plan(api, red_warning())
    blue = await post_and_plan(
        api, red_warning(level="blue", area_codes=[OTHER_COUNTY], headline="大风蓝色预警")
    )
    deliveries = api.sql(
        "SELECT d.id, w.id, d.target_id, d.channel, d.area_code FROM deliveries d "
        "JOIN warnings w ON w.seq = d.warning_seq ORDER BY d.id"
    )
    assert len({row[1] for row in deliveries}) == 2
    now = time.time() - 600
    rows = []
    for n, (delivery_id, warning_id, target, channel, area) in enumerate(deliveries):
        common = {
            "delivery_id": delivery_id,
            "target_id": target,
            "channel": channel,
            "area_code": area,
            "adapter": f"{channel}-gw",
        }
        at = now + n * 0.1
        rows += [
            EventRow(at, warning_id, "sent", attempt=1, **common),
            EventRow(at + 0.01, warning_id, "retry_wait", attempt=1, reason="busy", **common),
            EventRow(at + 0.02, warning_id, "sent", attempt=2, **common),
            EventRow(at + 0.03, warning_id, "delivered", attempt=2, **common),
            EventRow(
                at + 0.04,
                warning_id,
                STATES[2 + n % (len(STATES) - 2)],
                attempt=2,
                reason="收到" if n % 3 == 0 else "",
                detail={"n": n},
                **common,
            ),
        ]
    insert_events(api.db, rows)
    person = next(row[2] for row in deliveries if row[3] == "voice" and row[1] == red)
    device = next(row[2] for row in deliveries if row[3] == "speaker" and row[1] == red)
    return Logged(red, blue, person, device, now)


def expected(api: Api, params: dict[str, str]) -> list[int]:
    """The reference, over every event: the area by walking parent links."""
    parents = dict(api.sql("SELECT code, parent_code FROM areas"))
    levels = dict(api.sql("SELECT id, level FROM warnings"))

    def under(code: str | None, area: str) -> bool:
        while code is not None:
            if code == area:
                return True
            code = parents.get(code)
        return False

    area = params.get("area")
    if area is not None and len(area) == 6:
        area += "000000"
    since = _ts(params["since"]) if "since" in params else None
    until = _ts(params["until"]) if "until" in params else None
    ids = []
    for event_id, at, warning, state, target, channel, code in api.sql(
        "SELECT id, at, warning_id, state, target_id, channel, area_code FROM delivery_events "
        "ORDER BY id"
    ):
        if all(
            [
                params.get("warning", warning) == warning,
                params.get("level", levels[warning]) == levels[warning],
                params.get("person", target) == target,
                params.get("device", target) == target,
                params.get("channel", channel) == channel,
                params.get("state", state) == state,
                since is None or at >= since,
                until is None or at < until,
                area is None or under(code, area),
            ]
        ):
            ids.append(event_id)
    return ids


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def resolve(params: dict[str, str], logged: Logged) -> dict[str, str]:
    names = {"RED": logged.red, "BLUE": logged.blue, "PERSON": logged.person}
    names.update(DEVICE=logged.device, SINCE=format_time(logged.start + 20))
    return {key: names.get(value, value) for key, value in params.items()}


async def read_pages(
    api: Api, params: dict[str, str], *, oldest_first: bool, limit: int
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor: dict[str, Any] = {"after": 0} if oldest_first else {}
    while True:
        query = urlencode({**params, **cursor, "limit": limit})
        status, page, _ = await api.call("GET", f"/v1/log?{query}", role=OPERATOR)
        assert status == 200, page
        assert page["order"] == ("oldest_first" if oldest_first else "newest_first")
        assert len(page["events"]) <= limit
        events += page["events"]
        if page["next"] is None:
            return events
        assert page["next"] == page["events"][-1]["id"]
        cursor = {"after" if oldest_first else "before": page["next"]}


FILTERS = [
    {},
    {"warning": "RED"},
    {"level": "blue"},
    {"level": "red", "channel": "voice"},
    {"person": "PERSON"},
    {"device": "DEVICE"},
    {"area": COUNTY[:6]},
    {"area": TOWN},
    {"area": VILLAGE, "state": "acknowledged"},
    {"channel": "sms", "state": "failed"},
    {"state": "received"},
    {"since": "SINCE"},
    {"until": "SINCE", "warning": "RED"},
    {"warning": "BLUE", "person": "PERSON"},
    {"warning": "RED", "level": "blue"},
    {"person": "PERSON", "device": "DEVICE"},
    {"person": "no-such-person"},
]


@pytest.mark.parametrize("params", FILTERS, ids=lambda p: urlencode(p) or "everything")
async def test_filters_and_pages_both_ways(
    api: Api, logged: Logged, params: dict[str, str]
) -> None:
    params = resolve(params, logged)
    ids = expected(api, params)
    oldest_first = await read_pages(api, params, oldest_first=True, limit=37)
    newest_first = await read_pages(api, params, oldest_first=False, limit=37)
    assert [e["id"] for e in oldest_first] == ids
    assert [e["id"] for e in newest_first] == ids[::-1]
    levels = dict(api.sql("SELECT id, level FROM warnings"))
    for event in oldest_first:
        assert set(event) == {
            "id",
            "at",
            "warning_id",
            "delivery_id",
            "state",
            "attempt",
            "adapter",
            "reason",
            "detail",
            "target_id",
            "channel",
            "area_code",
            "level",
        }
        assert event["level"] == levels[event["warning_id"]]
        assert event["at"].endswith("+00:00")


async def test_each_filter_narrows(api: Api, logged: Logged) -> None:
    everything = len(expected(api, {}))
    assert everything > 1000
    for params in FILTERS[1:]:
        found = len(expected(api, resolve(params, logged)))
        assert found < everything, params
    assert expected(api, resolve({"area": VILLAGE, "state": "acknowledged"}, logged))
    # An area takes in what lies beneath it: the county holds more than one of its villages.
    county, village = (len(expected(api, {"area": a})) for a in (COUNTY, VILLAGE))
    assert county > village > 0


async def test_the_default_page_is_the_newest_hundred(api: Api, logged: Logged) -> None:
    status, page, _ = await api.call("GET", "/v1/log", role=OPERATOR)
    assert status == 200
    newest = expected(api, {})[::-1][:100]
    assert [e["id"] for e in page["events"]] == newest
    assert page["next"] == newest[-1]


BAD = [
    ("warning", ""),
    ("person", "x" * 201),
    ("device", "\x01"),
    ("area", "61100"),
    ("area", "６１１００２"),
    ("level", "purple"),
    ("channel", "fax"),
    ("state", "lost"),
    ("since", "2026-07-12T08:00:00"),
    ("since", "yesterday"),
    ("until", "2026-13-40T00:00:00Z"),
    ("limit", "0"),
    ("limit", "1001"),
    ("limit", "ten"),
    ("before", "0"),
    ("before", "-5"),
    ("after", "x"),
    ("after", str(2**62 + 1)),
]


#: Each endpoint with the bad values of the parameters it takes (a stream follows forward only;
#: only a page has a size).
BAD_CASES = [
    (path, name, value)
    for path in PATHS
    for name, value in BAD
    if not (name == "limit" and path != "/v1/log")
    and not (name == "before" and path == "/v1/log/stream")
]


@pytest.mark.parametrize(("path", "name", "value"), BAD_CASES, ids=lambda v: str(v)[:14])
async def test_a_bad_parameter_is_400_naming_it(api: Api, path: str, name: str, value: str) -> None:
    status, body, _ = await api.call("GET", f"{path}?{urlencode({name: value})}", role=OPERATOR)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_parameter"
    assert body["error"]["field"] == name
    assert name in body["error"]["message"]


@pytest.mark.parametrize("path", PATHS)
async def test_other_bad_requests(api: Api, path: str) -> None:
    query = "since=2026-07-12T08:00:00Z&until=2026-07-12T07:00:00Z"
    status, body, _ = await api.call("GET", f"{path}?{query}", role=OPERATOR)
    assert (status, body["error"]["field"]) == (400, "until")
    status, body, _ = await api.call("GET", f"{path}?level=red&level=blue", role=OPERATOR)
    assert (status, body["error"]["field"]) == (400, "level")
    if path == "/v1/log/stream":
        status, body, _ = await api.call(
            "GET", path, role=OPERATOR, headers={"Last-Event-ID": "abc"}
        )
        assert (status, body["error"]["field"]) == (400, "Last-Event-ID")


@pytest.mark.parametrize("path", PATHS)
async def test_grid_members_may_not_read_the_log(api: Api, path: str) -> None:
    status, body, _ = await api.call("GET", f"{path}?{ENDED}", role=ApiRole.GRID_MEMBER)
    assert status == 403, body
    assert body["error"]["code"] == "forbidden"
    for role in READERS:
        status, body, _ = await api.call("GET", f"{path}?{ENDED}", role=role)
        assert status == 200, (role, body)
    status, body, _ = await api.call("GET", path, role=None)
    assert status == 401


# -- CSV -----------------------------------------------------------------------------------------

TRICKY = {
    '=HYPERLINK("http://x")': '\'=HYPERLINK("http://x")',
    "+86 138": "'+86 138",
    "-1": "'-1",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    '逗号, "引号"\n换行': '逗号, "引号"\n换行',
    "收到 = ok": "收到 = ok",
}


async def export(api: Api, query: str = "") -> tuple[list[list[str]], dict[str, str], bytes]:
    async with api.client.get(f"/v1/log.csv?{query}", headers=api.auth(OPERATOR)) as response:
        assert response.status == 200, await response.text()
        raw = await response.read()
        headers = dict(response.headers)
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    return rows, headers, raw


async def test_csv_export(api: Api, logged: Logged) -> None:
    tricky = insert_events(
        api.db,
        [
            EventRow(
                time.time(),
                logged.blue,
                "failed",
                delivery_id=1,
                adapter=text,
                reason=text,
                target_id=text,
                channel="sms",
                area_code=OTHER_COUNTY,
                detail={"note": text},
            )
            for text in TRICKY
        ],
    )
    rows, headers, raw = await export(api)
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"].startswith("attachment; filename=")
    assert raw.startswith("\ufeff".encode())
    assert b"\r\n" in raw
    assert rows[0] == list(CSV_COLUMNS)
    body = rows[1:]
    # Every event, oldest first, across the export's 1000-event pages.
    assert [int(r[0]) for r in body] == expected(api, {})
    assert len(body) > 1000
    by_id = {int(r[0]): dict(zip(CSV_COLUMNS, r, strict=True)) for r in body}
    for event_id, (text, shown) in zip(tricky, TRICKY.items(), strict=True):
        row = by_id[event_id]
        assert row["reason"] == row["adapter"] == row["target_id"] == shown, text
        assert row["level"] == "blue" and row["state"] == "failed"
        assert json.loads(row["detail"]) == {"note": text}
    for row in by_id.values():
        for column in ("warning_id", "state", "adapter", "reason", "target_id", "detail"):
            assert not row[column].startswith(("=", "+", "-", "@")), row
    # The export takes the same filters.
    rows, _, _ = await export(api, urlencode({"warning": logged.red, "channel": "voice"}))
    ids = expected(api, {"warning": logged.red, "channel": "voice"})
    assert [int(r[0]) for r in rows[1:]] == ids
    assert {r[CSV_COLUMNS.index("channel")] for r in rows[1:]} == {"voice"}
    # Nothing matches: the header alone.
    rows, _, _ = await export(api, "person=nobody")
    assert rows == [list(CSV_COLUMNS)]


async def test_a_failure_part_way_cuts_the_export_off(
    api: Api, logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the CSV has begun, a failure cannot become a JSON error: the connection is dropped
    so the download is seen to be incomplete, never a short file that looks whole."""
    read = api.store.log_events
    calls = []

    async def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return await read(*args, **kwargs)

    monkeypatch.setattr(api.store, "log_events", failing)
    async with api.client.get("/v1/log.csv", headers=api.auth(OPERATOR)) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    # The server is fine afterwards.
    status, _, _ = await api.call("GET", "/v1/log?limit=1", role=OPERATOR)
    assert status == 200


# -- server-sent events ----------------------------------------------------------------------


class Stream:
    """A text/event-stream read line by line, with a deadline on every read."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []
        self.retry: int | None = None

    async def events(self, n: int, within: float = 5) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            while len(found) < n:
                raw = await self.response.content.readline()
                assert raw, "the stream ended"
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("retry: "):
                    self.retry = int(line[7:])
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                elif fields:
                    assert fields["event"] == "delivery", fields
                    data = json.loads(fields["data"])
                    assert fields["id"] == str(data["id"])
                    found.append(data)
                    fields = {}
        return found

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await self.events(1, within=seconds)

    async def ends(self, within: float = 5) -> None:
        async with asyncio.timeout(within):
            while await self.response.content.readline():
                pass


@asynccontextmanager
async def stream(
    api: Api, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    async with api.client.get(
        path, headers={**api.auth(OPERATOR), **(headers or {})}, timeout=aiohttp.ClientTimeout()
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        yield Stream(response)


def new_event(warning_id: str, *, state: str = "acknowledged", target: str = "P-new") -> EventRow:
    return EventRow(
        time.time(),
        warning_id,
        state,
        delivery_id=7,
        attempt=1,
        adapter="sms-gw",
        reason="收到",
        target_id=target,
        channel="sms",
        area_code=VILLAGE,
    )


async def test_stream_sends_the_backlog_after_last_event_id_then_new_events(
    api: Api, logged: Logged
) -> None:
    red = expected(api, {"warning": logged.red})
    resume_from = red[len(red) // 2]
    backlog = [i for i in red if i > resume_from]
    async with stream(
        api, f"/v1/log/stream?warning={logged.red}&after=0", {"Last-Event-ID": str(resume_from)}
    ) as events:
        received = await events.events(len(backlog))
        assert [e["id"] for e in received] == backlog
        assert events.retry is not None
        # Live: another warning's event is left out, this warning's arrive as they are written.
        started = time.monotonic()
        [_, wanted] = insert_events(api.db, [new_event(logged.blue), new_event(logged.red)])
        [live] = await events.events(1, within=2)
        assert live["id"] == wanted
        assert live["level"] == "red" and live["reason"] == "收到"
        assert time.monotonic() - started < 2
        await events.nothing_for(0.8)


async def test_stream_after_param_and_filters(api: Api, logged: Logged) -> None:
    voice = expected(api, {"level": "red", "channel": "voice"})
    async with stream(api, f"/v1/log/stream?level=red&channel=voice&after={voice[2]}") as events:
        assert [e["id"] for e in await events.events(len(voice) - 3)] == voice[3:]
        await events.nothing_for(0.6)


async def test_stream_without_a_cursor_starts_at_the_newest_event(api: Api, logged: Logged) -> None:
    async with stream(api, "/v1/log/stream") as events:
        await events.nothing_for(0.6)
        [wanted] = insert_events(api.db, [new_event(logged.red)])
        [live] = await events.events(1, within=2)
        assert live["id"] == wanted


async def test_stream_sends_keep_alives(
    api: Api, logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes_log, "STREAM_KEEPALIVE_SECONDS", 0.3)
    async with stream(api, "/v1/log/stream") as events:
        await events.nothing_for(1.2)
        assert ": keep-alive" in events.comments


async def test_a_stream_ends_when_its_token_is_withdrawn(
    api: Api, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens are read on every request (a reload can change them); a stream, which is one
    long request, checks its token again every keep-alive period."""
    monkeypatch.setattr(routes_log, "STREAM_KEEPALIVE_SECONDS", 0.3)
    tokens = [ApiToken("desk", OPERATOR, SecretStr(hash_token(TOKENS[OPERATOR])))]
    app = create_app(
        ApiDeps(
            store=api.store,
            warnings=WarningService(
                api.store, CapConfig(sender="log@test"), on_created=api.planner.enqueue
            ),
            tokens=lambda: tokens,
            max_body_bytes=1024,
            ready=lambda: True,
            registry=CollectorRegistry(),
        )
    )
    client = await aiohttp_client(app)
    async with client.get("/v1/log/stream", headers=api.auth(OPERATOR)) as response:
        assert response.status == 200
        events = Stream(response)
        await events.nothing_for(0.8)
        tokens.clear()
        await events.ends(within=3)
    async with client.get("/v1/log/stream", headers=api.auth(OPERATOR)) as response:
        assert response.status == 401


async def test_a_stream_bounded_in_the_past_ends_after_its_backlog(
    api: Api, logged: Logged
) -> None:
    async with stream(api, f"/v1/log/stream?after=0&{ENDED}") as events:
        await events.ends(within=3)


async def test_the_stream_ends_when_the_server_stops(city_db: Path, tmp_path: Path) -> None:
    server = LiveServer(city_db, tmp_path).__enter__()
    stopped = False
    try:
        headers = {"Authorization": f"Bearer {TOKENS[OPERATOR]}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
            session.get(f"{server.url}/v1/log/stream", headers=headers) as response,
        ):
            assert response.status == 200
            first = await asyncio.wait_for(response.content.readline(), 5)
            assert first.startswith(b"retry:")
            started = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(server.__exit__, None, None, None))
            async with asyncio.timeout(10):
                while await response.content.readline():
                    pass
            await stopping
            stopped = True
            # Well before aiohttp's shutdown timeout (60 s) would have cancelled the handler.
            assert time.monotonic() - started < 5
    finally:
        if not stopped:
            server.__exit__(None, None, None)


async def test_the_openapi_document_declares_csv_and_event_stream(api: Api) -> None:
    status, doc, _ = await api.call("GET", "/v1/openapi.json", role=None)
    assert status == 200
    csv_ok = doc["paths"]["/v1/log.csv"]["get"]["responses"]["200"]
    assert "text/csv" in csv_ok["content"]
    sse_ok = doc["paths"]["/v1/log/stream"]["get"]["responses"]["200"]
    assert "text/event-stream" in sse_ok["content"]
    listing = doc["paths"]["/v1/log"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert names == {
        "warning",
        "area",
        "level",
        "person",
        "device",
        "channel",
        "state",
        "since",
        "until",
        "limit",
        "before",
        "after",
    }
    assert "grid_member" not in listing["description"]
