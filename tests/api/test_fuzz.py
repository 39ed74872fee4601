"""Schemathesis fuzzes every operation of the served /v1/openapi.json on a live server, as an
admin, with valid and invalid data: no 5xx, and every answer — status, content type, body —
as the document says."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.harness import COUNTY, TOKENS, red_warning
from api.live_server import LiveServer
from dispatcher.api.app import ENDPOINTS
from dispatcher.api.openapi import build_openapi
from dispatcher.api.routing import Endpoint
from dispatcher.config import ApiRole

MAX_EXAMPLES = 30
ADMIN = {"Authorization": f"Bearer {TOKENS[ApiRole.ADMIN]}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def live_api(city_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(city_db, tmp_path_factory.mktemp("live")) as server:
        yield server


@pytest.fixture(scope="module")
def served_schema(live_api: LiveServer) -> Any:
    schema = schemathesis.openapi.from_url(f"{live_api.url}/v1/openapi.json")
    schema.config.update(base_url=live_api.url, headers=ADMIN)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


def _cases() -> list[Any]:
    """Every operation with valid data; those that take input with invalid data too; those on
    one warning (or area) also with the id of a real warning (the code of a real area), so
    reads and writes get past the 404."""
    document = build_openapi(ENDPOINTS)
    cases = []
    for endpoint in ENDPOINTS:
        name = f"{endpoint.method} {endpoint.path}"
        cases.append(pytest.param(endpoint, GenerationMode.POSITIVE, False, id=name))
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        # Invalid data needs something to be invalid in: a parameter or a body.
        if operation.get("parameters") or operation.get("requestBody"):
            cases.append(pytest.param(endpoint, GenerationMode.NEGATIVE, False, id=f"{name} !"))
        if "{id}" in endpoint.path or "{code}" in endpoint.path:
            cases.append(pytest.param(endpoint, GenerationMode.POSITIVE, True, id=f"{name} real"))
    return cases


@pytest.fixture(scope="module")
def real_warning_id(live_api: LiveServer) -> str:
    body = json.dumps(red_warning()).encode()
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL)
        f"{live_api.url}/v1/warnings",
        data=body,
        headers={**ADMIN, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:  # noqa: S310
        return str(json.load(response)["id"])


# schemathesis' own pytest integration (`from_fixture` + `parametrize`) trips over pytest 9
# (it reads Node._nodeid), so each operation is fuzzed through its hypothesis strategy here.
@pytest.mark.slow
@pytest.mark.parametrize(("endpoint", "mode", "real_id"), _cases())
def test_the_api_keeps_its_documented_promises(
    served_schema: Any,
    real_warning_id: str,
    endpoint: Endpoint,
    mode: GenerationMode,
    real_id: bool,
) -> None:
    operation = served_schema[endpoint.path][endpoint.method]
    real = {"id": real_warning_id, "code": COUNTY}
    path_parameters = {
        name: value for name, value in real.items() if f"{{{name}}}" in endpoint.path
    }
    fixed = {"path_parameters": path_parameters} if real_id else {}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def fuzz(case: schemathesis.Case) -> None:
        # The log stream follows forever: a second of it is enough to validate its shape.
        timeout = 1 if case.path == "/v1/log/stream" else None
        case.call_and_validate(headers=ADMIN, checks=CHECKS, timeout=timeout)

    fuzz()
