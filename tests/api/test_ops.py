"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.harness import Api, red_warning
from dispatcher.api.app import ENDPOINTS
from dispatcher.config import ApiRole


async def test_healthz_needs_no_token(api: Api) -> None:
    status, body, _ = await api.call("GET", "/healthz", role=None)
    assert (status, body) == (200, {"status": "ok"})


async def test_readyz_follows_readiness_and_the_store(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await api.call("GET", "/readyz", role=None))[:2] == (200, {"status": "ready"})
    api.ready[0] = False
    status, body, headers = await api.call("GET", "/readyz", role=None)
    assert status == 503
    assert body["error"]["code"] == "not_ready"
    assert headers["Retry-After"] == "1"

    api.ready[0] = True

    async def store_down() -> None:
        raise OSError("database is locked")

    monkeypatch.setattr(api.store, "ping", store_down)
    assert (await api.call("GET", "/readyz", role=None))[0] == 503


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_and_warnings(api: Api) -> None:
    await api.post_warning(red_warning())
    await api.post_warning(red_warning(level="purple"))
    await api.call("GET", "/v1/audit", role=ApiRole.OPERATOR)
    await api.call("GET", "/v1/warnings/nope")
    status, text, headers = await api.call("GET", "/metrics", role=None)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("tocsin_http_requests_total", method="POST", route="/v1/warnings", status="202")
    assert value("tocsin_http_requests_total", method="POST", route="/v1/warnings", status="422")
    assert (
        value("tocsin_http_requests_total", method="GET", route="/v1/warnings/{id}", status="404")
        == 1
    )
    assert (
        value("tocsin_warnings_accepted_total", status="Exercise", level="red", msg_type="Alert")
        == 1
    )
    assert value("tocsin_api_errors_total", code="validation_error") == 1
    assert value("tocsin_api_auth_failures_total", reason="forbidden") == 1
    assert (
        value("tocsin_http_request_duration_seconds_count", method="POST", route="/v1/warnings")
        == 2
    )
    # Raw ids never become label values.
    assert "nope" not in text


async def test_openapi_is_public_and_describes_every_route(api: Api) -> None:
    status, doc, _ = await api.call("GET", "/v1/openapi.json", role=None)
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    operations = {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert set(operations) == {(e.method, e.path) for e in ENDPOINTS}
    for endpoint in ENDPOINTS:
        operation = operations[(endpoint.method, endpoint.path)]
        assert operation["operationId"] == endpoint.name
        if endpoint.roles is None:
            assert operation["security"] == []
        else:
            assert {"401", "403"} <= set(operation["responses"])
    schemas = doc["components"]["schemas"]
    assert {"WarningInput", "WarningChange", "CancelRequest", "Error", "Level"} <= set(schemas)
    post = operations[("POST", "/v1/warnings")]["requestBody"]["content"]
    assert post["application/json"]["schema"] == {"$ref": "#/components/schemas/WarningInput"}
    assert "application/cap+xml" in post
    # Every $ref resolves.
    refs: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                refs.append(ref)
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    collect(doc)
    assert refs
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_openapi_warning_input_needs_content_unless_cancel(api: Api) -> None:
    _, doc, _ = await api.call("GET", "/v1/openapi.json", role=None)
    schema = doc["components"]["schemas"]["WarningInput"]
    content = ["level", "event", "headline", "area_codes"]
    assert not set(content) & set(schema.get("required", []))
    assert schema["if"] == {
        "properties": {"msg_type": {"const": "Cancel"}},
        "required": ["msg_type"],
    }
    assert schema["else"]["required"] == content
    assert "Cancel" in schema["description"]
    area_codes = schema["properties"]["area_codes"]["anyOf"]
    assert {"type": "null"} in area_codes
    assert any(o.get("items", {}).get("pattern") == r"^\d{6}(\d{6})?$" for o in area_codes)
