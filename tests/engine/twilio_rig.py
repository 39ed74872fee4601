"""An engine with the real Twilio adapters against the fake Twilio server, and the daemon's
HTTP API serving their webhooks on a free port: Twilio's callbacks, replies and key presses
travel over HTTP, signed, exactly as in production."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from adapters.twilio.fake_script import FakeScript
from adapters.twilio.fake_server import FakeTwilio
from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import AdapterInstanceConfig, CapConfig, EngineConfig
from dispatcher.policy import Policy
from dispatcher.warning_service import WarningService
from engine.harness import FAST, POLICY, Tocsin, sim

SID = "AC" + "5" * 32
TOKEN = "rig-auth-token"
#: Settings name secrets by reference, never by value.
TOKEN_ENV = "TOCSIN_TEST_TWILIO_TOKEN"
SENDER = "+8610690000001"
CALLER = "+8610690000002"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def twilio_instances(
    public_url: str,
    api_url: str,
    *,
    sms: Mapping[str, Any] | None = None,
    voice: Mapping[str, Any] | None = None,
    instance: Mapping[str, Any] | None = None,
) -> dict[str, AdapterInstanceConfig]:
    account = {
        "account_sid": SID,
        "auth_token": f"env:{TOKEN_ENV}",
        "public_url": public_url,
        "api_base_url": api_url,
        "request_timeout": 2.0,
    }
    return {
        "loudspeaker": sim(["speaker"]),
        "transmitter": sim(["transmitter"]),
        "modem": sim(["modem"]),
        "sms": AdapterInstanceConfig(
            kind="twilio_sms",
            channels=["sms"],  # type: ignore[list-item]
            settings={**account, "senders": [SENDER], "sender_rate": 100.0, **(sms or {})},
            **(instance or {}),
        ),
        "voice": AdapterInstanceConfig(
            kind="twilio_voice",
            channels=["voice"],  # type: ignore[list-item]
            settings={
                **account,
                "callers": [CALLER],
                "calls_per_second": 100.0,
                "max_concurrent_calls": 50,
                **(voice or {}),
            },
            **(instance or {}),
        ),
    }


@dataclass
class Rig:
    tocsin: Tocsin
    fake: FakeTwilio
    public_url: str

    def hook(self, adapter: str, path: str) -> str:
        return f"{self.public_url}/hooks/{adapter}/{path}"


@asynccontextmanager
async def twilio_rig(
    tocsin_factory: Any,
    *,
    script: FakeScript | None = None,
    policy: Policy = POLICY,
    config: EngineConfig = FAST,
    sms: Mapping[str, Any] | None = None,
    voice: Mapping[str, Any] | None = None,
    instance: Mapping[str, Any] | None = None,
) -> AsyncIterator[Rig]:
    """The fake Twilio, an engine (not started) with the Twilio adapters, and the API serving
    their webhooks. Start the engine with ``rig.tocsin.start()`` after planning."""
    os.environ[TOKEN_ENV] = TOKEN
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    fake = FakeTwilio(
        accounts={SID: TOKEN},
        script=script or FakeScript(),
        numbers=[SENDER, CALLER],
        sms_url=f"{public_url}/hooks/sms/inbound",
    )
    async with fake:
        tocsin: Tocsin = tocsin_factory(
            twilio_instances(public_url, fake.url, sms=sms, voice=voice, instance=instance),
            policy=policy,
            config=config,
        )
        store = tocsin.store
        app = create_app(
            ApiDeps(
                store=store,
                warnings=WarningService(store, CapConfig(), on_created=lambda _: None),
                tokens=list,
                max_body_bytes=1 << 20,
                ready=lambda: True,
                registry=CollectorRegistry(),
                webhooks=tocsin.engine.webhooks(),
            )
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            yield Rig(tocsin, fake, public_url)
        finally:
            await tocsin.stop()
            await runner.cleanup()
