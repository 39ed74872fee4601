"""Requests the API must refuse: each gets a 4xx in the JSON error shape, and nothing in the
store changes (warnings, audit log, idempotency keys, deliveries, events)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.harness import COUNTY, MAX_BODY, VILLAGE, Api, cap_alert, red_warning
from dispatcher.config import ApiRole

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&xxe;</identifier></alert>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><note>&lol4;</note></alert>"""

JSON = {"Content-Type": "application/json"}
CAP = {"Content-Type": "application/cap+xml"}
PAST = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


@dataclass(frozen=True)
class Bad:
    name: str
    status: int
    code: str
    body: bytes | None = None
    headers: dict[str, str] | None = None
    field: str | None = None
    path: str = "/v1/warnings"
    method: str = "POST"


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


BAD_REQUESTS = [
    Bad("malformed JSON", 400, "malformed_json", b'{"level": "red",', JSON),
    Bad(
        "lone surrogate in JSON",
        400,
        "malformed_json",
        b'{"level": "red", "event": "\\ud800"}',
        JSON,
    ),
    Bad("JSON that is not an object", 422, "validation_error", b"[1, 2]", JSON),
    Bad("malformed XML", 400, "malformed_xml", b"<alert><info></alert>", CAP),
    Bad("JSON sent as CAP", 400, "malformed_xml", _json(red_warning()), CAP),
    Bad("XXE", 400, "malformed_xml", XXE, CAP),
    Bad("billion laughs", 400, "malformed_xml", BILLION_LAUGHS, CAP),
    Bad(
        "XML that is not CAP",
        422,
        "invalid_cap",
        b'<alert xmlns="urn:example:not-cap"><identifier>x</identifier></alert>',
        CAP,
        field="alert",
    ),
    Bad(
        "CAP with an unknown area",
        422,
        "unknown_area",
        cap_alert("CAP-X", ["999999"]),
        CAP,
        field="area_codes",
    ),
    Bad(
        "CAP with an unknown LEVEL",
        422,
        "invalid_cap",
        cap_alert("CAP-Y", [COUNTY[:6]], level="purple"),
        CAP,
        field="alert/info/parameter[LEVEL]",
    ),
    Bad(
        "body over the limit",
        413,
        "body_too_large",
        _json(red_warning(description="x" * 3000, area_codes=[COUNTY] * (MAX_BODY // 10))),
        JSON,
    ),
    Bad(
        "unknown area code",
        422,
        "unknown_area",
        _json(red_warning(area_codes=[COUNTY, "611099000000"])),
        JSON,
        field="area_codes",
    ),
    Bad(
        "malformed area code",
        422,
        "validation_error",
        _json(red_warning(area_codes=["61100"])),
        JSON,
        field="area_codes[0]",
    ),
    Bad(
        "unknown level",
        422,
        "validation_error",
        _json(red_warning(level="purple")),
        JSON,
        field="level",
    ),
    Bad(
        "missing headline",
        422,
        "validation_error",
        _json({k: v for k, v in red_warning().items() if k != "headline"}),
        JSON,
        field="headline",
    ),
    Bad(
        "unknown field",
        422,
        "validation_error",
        _json(red_warning(colour="red")),
        JSON,
        field="colour",
    ),
    Bad(
        "expiry in the past",
        422,
        "expired",
        _json(red_warning(expires=PAST)),
        JSON,
        field="expires",
    ),
    Bad(
        "naive expiry",
        422,
        "validation_error",
        _json(red_warning(expires="2030-01-01T00:00:00")),
        JSON,
        field="expires",
    ),
    Bad(
        "draft",
        422,
        "draft_not_dispatched",
        _json(red_warning(status="Draft")),
        JSON,
        field="status",
    ),
    Bad(
        "Cancel referencing nothing",
        422,
        "missing_references",
        _json(red_warning(msg_type="Cancel")),
        JSON,
        field="references",
    ),
    Bad(
        "Cancel referencing an unknown warning",
        422,
        "unknown_reference",
        _json(red_warning(msg_type="Cancel", references=["x@y,nope,2026-01-01T00:00:00-00:00"])),
        JSON,
        field="references",
    ),
    Bad(
        "unknown Content-Type",
        415,
        "unsupported_media_type",
        b"level=red",
        {"Content-Type": "application/x-www-form-urlencoded"},
        field="Content-Type",
    ),
    Bad(
        "no Content-Type",
        415,
        "unsupported_media_type",
        _json(red_warning()),
        {},
        field="Content-Type",
    ),
    Bad("no body", 400, "body_required", b"", JSON),
    Bad(
        "Idempotency-Key too long",
        400,
        "invalid_idempotency_key",
        _json(red_warning()),
        {**JSON, "Idempotency-Key": "k" * 201},
        field="Idempotency-Key",
    ),
    Bad(
        "Idempotency-Key not printable",
        400,
        "invalid_idempotency_key",
        _json(red_warning()),
        {**JSON, "Idempotency-Key": "tab\there"},
        field="Idempotency-Key",
    ),
    Bad(
        "update of an unknown warning",
        404,
        "not_found",
        b'{"level": "red"}',
        JSON,
        path="/v1/warnings/nope/update",
    ),
    Bad("update without a body", 400, "body_required", None, JSON, path="/v1/warnings/{id}/update"),
    Bad(
        "update with CAP",
        415,
        "unsupported_media_type",
        cap_alert("C", [VILLAGE]),
        CAP,
        path="/v1/warnings/{id}/update",
        field="Content-Type",
    ),
    Bad(
        "update to an unknown area",
        422,
        "unknown_area",
        b'{"area_codes": ["611002999000"]}',
        JSON,
        path="/v1/warnings/{id}/update",
        field="area_codes",
    ),
    Bad(
        "update with an empty area list",
        422,
        "validation_error",
        b'{"area_codes": []}',
        JSON,
        path="/v1/warnings/{id}/update",
        field="area_codes",
    ),
    Bad(
        "cancel of an unknown warning",
        404,
        "not_found",
        None,
        None,
        path="/v1/warnings/nope/cancel",
    ),
    Bad(
        "cancel with a bad note",
        422,
        "validation_error",
        b'{"note": 5}',
        JSON,
        path="/v1/warnings/{id}/cancel",
        field="note",
    ),
    Bad(
        "list with limit 0",
        400,
        "invalid_parameter",
        method="GET",
        path="/v1/warnings?limit=0",
        field="limit",
    ),
    Bad(
        "list with limit x",
        400,
        "invalid_parameter",
        method="GET",
        path="/v1/warnings?limit=x",
        field="limit",
    ),
    Bad(
        "list with an unknown state",
        400,
        "invalid_parameter",
        method="GET",
        path="/v1/warnings?state=asleep",
        field="state",
    ),
    Bad(
        "list before an unknown warning",
        400,
        "invalid_parameter",
        method="GET",
        path="/v1/warnings?before=nope",
        field="before",
    ),
    Bad(
        "plan of an unknown warning",
        404,
        "not_found",
        method="GET",
        path="/v1/warnings/nope/plan",
    ),
    Bad(
        "plan at an unknown depth",
        400,
        "invalid_parameter",
        method="GET",
        path="/v1/warnings/{id}/plan?depth=street",
        field="depth",
    ),
    Bad(
        "events after -1",
        400,
        "invalid_parameter",
        method="GET",
        path="/v1/warnings/{id}/events?after=-1",
        field="after",
    ),
    Bad(
        "audit before 0",
        400,
        "invalid_parameter",
        method="GET",
        path="/v1/audit?before=0",
        field="before",
    ),
    Bad("unknown endpoint", 404, "not_found", method="GET", path="/v1/nothing-here"),
    Bad("wrong method", 405, "method_not_allowed", method="DELETE", path="/v1/warnings"),
]


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=lambda bad: bad.name)
async def test_bad_request_is_refused_and_changes_nothing(api: Api, bad: Bad) -> None:
    _, existing, _ = await api.post_warning(red_warning())
    before = await api.table_counts()
    status, body, headers = await api.call(
        bad.method,
        bad.path.replace("{id}", existing["id"]),
        role=ApiRole.ADMIN,
        data=bad.body,
        headers=bad.headers,
    )
    assert status == bad.status, body
    assert headers["Content-Type"].startswith("application/json")
    error = body["error"]
    assert error["code"] == bad.code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error.get("field") == bad.field
    assert set(error) <= {"code", "message", "field", "errors", "line", "limit"}
    assert await api.table_counts() == before
    if bad.status == 405:
        assert "POST" in headers["Allow"]


async def test_validation_errors_list_every_problem(api: Api) -> None:
    status, body, _ = await api.post_warning({"level": "purple", "area_codes": []})
    assert status == 422
    fields = {e["field"] for e in body["error"]["errors"]}
    assert fields == {"level", "event", "headline", "area_codes"}
    assert body["error"]["field"] == "level"


async def test_xml_errors_give_the_line(api: Api) -> None:
    status, body, _ = await api.call(
        "POST", "/v1/warnings", data=b"<?xml version='1.0'?>\n<alert>\n<x></alert>", headers=CAP
    )
    assert status == 400
    assert body["error"]["line"] == 3


async def test_chunked_body_over_the_limit_is_cut_off(api: Api) -> None:
    before = await api.table_counts()

    async def chunks() -> Any:
        for _ in range(MAX_BODY // 1024 + 8):
            yield b" " * 1024

    status, body, _ = await api.call("POST", "/v1/warnings", data=chunks(), headers=JSON)
    assert status == 413
    assert body["error"]["code"] == "body_too_large"
    assert await api.table_counts() == before


async def test_an_internal_error_is_logged_not_leaked(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlog.testing import capture_logs

    async def broken() -> dict[str, int]:
        raise RuntimeError("disk on fire at /srv/secret/path")

    monkeypatch.setattr(api.store, "directory_counts", broken)
    with capture_logs() as logs:
        status, body, _ = await api.call("GET", "/v1/directory/summary")
    assert status == 500
    assert body == {
        "error": {
            "code": "internal_error",
            "message": "internal error; the incident has been logged",
        }
    }
    [entry] = [e for e in logs if e["event"] == "unhandled error"]
    assert entry["principal"] == "desk-admin"
    assert entry["route"] == "/v1/directory/summary"
