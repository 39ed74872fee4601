"""The API on a real TCP port in a thread of its own (with its own event loop), for clients
that block — schemathesis sends with `requests`."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from api.harness import MAX_BODY, ROOT, SENDER, TOKEN_NAMES, TOKENS
from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import ApiToken, CapConfig, hash_token, load_policy
from dispatcher.planning_worker import PlanningWorker
from dispatcher.schedules.service import ScheduleService
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_service import WarningService


class LiveServer:
    def __init__(self, city_db: Path, workdir: Path) -> None:
        self.db = workdir / "live.db"
        shutil.copy(city_db, self.db)
        self.url = ""
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-api", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the live API did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("the live API failed to start") from self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = await SqliteStore.open(self.db)
        policy = load_policy(ROOT / "config" / "policy.toml")
        planner = PlanningWorker(store, lambda: policy)
        await planner.start()
        tokens = [
            ApiToken(TOKEN_NAMES[role], role, SecretStr(hash_token(token)))
            for role, token in TOKENS.items()
        ]
        warnings = WarningService(store, CapConfig(sender=SENDER), on_created=planner.enqueue)
        app = create_app(
            ApiDeps(
                store=store,
                warnings=warnings,
                tokens=lambda: tokens,
                max_body_bytes=MAX_BODY,
                ready=lambda: True,
                registry=CollectorRegistry(),
                schedules=ScheduleService(store, warnings, sender=SENDER),
            )
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await planner.stop()
            await store.close()
