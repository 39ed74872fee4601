"""Who may call what: no token or a bad one is 401 with a Bearer challenge, a role not allowed
is 403, and the token is never echoed or logged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from api.harness import COUNTY, TOKENS, Api, config_schedule, red_warning
from dispatcher.api.app import ENDPOINTS
from dispatcher.config import ApiRole

DUTY, OPERATOR, INSTALLER, ADMIN = (
    ApiRole.DUTY_OFFICER,
    ApiRole.OPERATOR,
    ApiRole.INSTALLER,
    ApiRole.ADMIN,
)
EVERYONE = frozenset(ApiRole)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    #: None: public, no token needed.
    allowed: frozenset[ApiRole] | None
    #: Bodies that pass auth but are refused afterwards (422), so the matrix changes nothing.
    json: Any = None
    #: The status an allowed role gets, when not 200 (or 422 with ``json``): a refusal after
    #: auth, so the matrix changes nothing.
    expect: int | None = None


# The access policy, written out independently of the route table.
CALLS = [
    Call("POST", "/v1/warnings", frozenset({DUTY, ADMIN}), json={"level": "purple"}),
    Call("POST", "/v1/warnings/{id}/update", frozenset({DUTY, ADMIN}), json={"level": 1}),
    Call("POST", "/v1/warnings/{id}/cancel", frozenset({DUTY, ADMIN}), json={"note": 1}),
    Call("GET", "/v1/warnings", EVERYONE),
    Call("GET", "/v1/warnings/{id}", EVERYONE),
    Call("GET", "/v1/warnings/{id}/cap", EVERYONE),
    Call("GET", "/v1/warnings/{id}/plan", EVERYONE),
    Call("GET", "/v1/warnings/{id}/events", EVERYONE),
    Call("GET", "/v1/warnings/{id}/coverage", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/warnings/{id}/unreached", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/warnings/{id}/followup", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/warnings/{id}/test-report", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call(
        "POST",
        "/v1/warnings/{id}/households/{household_id}/reached",
        frozenset({ApiRole.GRID_MEMBER}),
        json={"note": 1},
    ),
    Call("GET", "/v1/audit", frozenset({ADMIN})),
    Call("GET", "/v1/log", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/log.csv", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    # Bounded in the past, so the stream ends after its (empty) backlog instead of following.
    Call(
        "GET",
        "/v1/log/stream?until=2000-01-01T00:00:00Z",
        frozenset({DUTY, OPERATOR, INSTALLER, ADMIN}),
    ),
    Call("GET", "/v1/schedules", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("POST", "/v1/schedules", frozenset({DUTY, ADMIN}), json={"cron": 1}),
    Call("GET", "/v1/schedules/{id}", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    # {id} is a schedule from the config (the API cannot remove it) always in its quiet hours
    # (a run-now without force is refused).
    Call("DELETE", "/v1/schedules/{id}", frozenset({DUTY, ADMIN}), expect=409),
    Call("POST", "/v1/schedules/{id}/run", frozenset({DUTY, ADMIN}), expect=409),
    Call("GET", "/v1/schedules/{id}/runs", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/directory/summary", EVERYONE),
    Call("GET", "/v1/areas", EVERYONE),
    Call("GET", "/v1/areas/{code}", EVERYONE),
    Call("GET", "/v1/openapi.json", None),
    Call("GET", "/v1/adapters", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/nodes", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/devices", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/v1/devices/{id}", frozenset({DUTY, OPERATOR, INSTALLER, ADMIN})),
    Call("GET", "/healthz", None),
    Call("GET", "/readyz", None),
    Call("GET", "/metrics", None),
]


def test_the_matrix_covers_every_route() -> None:
    called = {(c.method, c.path.partition("?")[0]) for c in CALLS}
    assert called == {(e.method, e.path) for e in ENDPOINTS}


@pytest.mark.parametrize("call", CALLS, ids=lambda c: f"{c.method} {c.path}")
async def test_role_matrix(api: Api, call: Call) -> None:
    _, warning, _ = await api.post_warning(red_warning())
    # {id} is the warning's, except on a device's path: a transmitter of the small city.
    target = "TX-611002101000" if call.path.startswith("/v1/devices/") else warning["id"]
    if call.path.startswith("/v1/schedules/"):
        await config_schedule(api, quiet_hours="00:00-23:59")
        target = "weekly"
    path = call.path.replace("{id}", target).replace("{code}", COUNTY)
    path = path.replace("{household_id}", "H001")
    before = await api.table_counts()

    status, body, headers = await api.call(call.method, path, role=None, json=call.json)
    if call.allowed is None:
        assert status == 200, body
    else:
        assert status == 401, body
        assert body["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")

        status, body, headers = await api.call(
            call.method,
            path,
            role=None,
            json=call.json,
            headers={"Authorization": "Bearer not-a-configured-token"},
        )
        assert status == 401, body
        assert body["error"]["code"] == "invalid_token"
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]

    for role in ApiRole:
        status, body, _ = await api.call(call.method, path, role=role, json=call.json)
        if call.allowed is None or role in call.allowed:
            assert status not in (401, 403), (role, body)
            expected = call.expect or (422 if call.json is not None else 200)
            assert status == expected, (role, body)
        else:
            assert status == 403, (role, body)
            assert body["error"]["code"] == "forbidden"
            assert role.value in body["error"]["message"]
    assert await api.table_counts() == before


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer    ",
        "bearer " + "x" * 5_000,
        "Token " + TOKENS[ApiRole.ADMIN],
    ],
)
async def test_malformed_authorization_is_401(api: Api, header: str) -> None:
    status, body, headers = await api.call(
        "GET", "/v1/warnings", role=None, headers={"Authorization": header}
    )
    assert status == 401
    assert body["error"]["code"] in {"unauthorized", "invalid_token"}
    assert "WWW-Authenticate" in headers


async def test_scheme_is_case_insensitive(api: Api) -> None:
    status, _, _ = await api.call(
        "GET",
        "/v1/warnings",
        role=None,
        headers={"Authorization": f"bearer {TOKENS[ApiRole.OPERATOR]}"},
    )
    assert status == 200


async def test_tokens_are_never_logged_or_echoed(api: Api) -> None:
    wrong = "wrong-token-that-must-not-leak"
    with capture_logs(processors=[merge_contextvars]) as logs:
        ok = await api.post_warning(red_warning())
        bad = await api.call(
            "POST", "/v1/warnings", role=None, headers={"Authorization": f"Bearer {wrong}"}
        )
        forbidden = await api.call("GET", "/v1/audit", role=ApiRole.OPERATOR)
        await api.planner.wait_idle()
    text = repr(logs) + repr([ok, bad, forbidden])
    for secret in [*TOKENS.values(), wrong]:
        assert secret not in text
    # The principal's name (not its token) is in the log context.
    assert any(entry.get("principal") == "desk-duty_officer" for entry in logs)
