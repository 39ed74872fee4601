"""Adapters' webhooks in the API: served at /hooks/<adapter>/<path> without an API token (the
handler checks the provider's signature), outside the OpenAPI document, counted in the
metrics like every route, and answered as JSON errors when they fail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from dispatcher.adapter import WebhookRoute
from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import CapConfig
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_service import WarningService


async def test_webhooks_are_public_routes_outside_the_openapi_document(
    tmp_path: Path, aiohttp_client: Callable[..., Any]
) -> None:
    seen: list[str] = []

    async def status(request: web.Request) -> web.StreamResponse:
        seen.append((await request.post())["MessageSid"])  # type: ignore[arg-type]
        return web.Response(status=204)

    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPForbidden(text="invalid X-Twilio-Signature")

    store = await SqliteStore.open(tmp_path / "t.db")
    try:
        app = create_app(
            ApiDeps(
                store=store,
                warnings=WarningService(store, CapConfig(), on_created=lambda _: None),
                tokens=list,
                max_body_bytes=1 << 16,
                ready=lambda: True,
                registry=CollectorRegistry(),
                webhooks=[
                    ("sms", WebhookRoute("POST", "status", status)),
                    ("sms", WebhookRoute("POST", "inbound", refuse)),
                ],
            )
        )
        client = await aiohttp_client(app)
        response = await client.post("/hooks/sms/status", data={"MessageSid": "SM1"})
        assert response.status == 204
        assert seen == ["SM1"]
        assert (await client.post("/hooks/sms/inbound", data={})).status == 403
        assert (await client.get("/hooks/sms/status")).status == 405
        assert (await client.post("/hooks/voice/status", data={})).status == 404
        # Tokens still guard the API itself.
        assert (await client.get("/v1/warnings")).status == 401
        document = await (await client.get("/v1/openapi.json")).json()
        assert not any(path.startswith("/hooks") for path in document["paths"])
        metrics = await (await client.get("/metrics")).text()
        assert 'route="/hooks/sms/status"' in metrics
    finally:
        await store.close()
