"""The API under test: a real aiohttp server over a real SQLite store holding a small synthetic
city, with the real WarningService and a running PlanningWorker."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from api.harness import CITY_SHAPE, MAX_BODY, ROOT, SENDER, TOKEN_NAMES, TOKENS, Api
from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import ApiToken, CapConfig, hash_token, load_policy
from dispatcher.planning_worker import PlanningWorker
from dispatcher.schedules.service import ScheduleService
from dispatcher.store.sqlite import SqliteStore
from dispatcher.synthetic import load_synthetic
from dispatcher.warning_service import WarningService


@pytest.fixture(scope="session")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("city") / "city.db"
    load_synthetic(path, CITY_SHAPE, progress=False)
    return path


@pytest.fixture
async def api(
    tmp_path: Path,
    city_db: Path,
    aiohttp_client: Callable[..., Any],
) -> AsyncIterator[Api]:
    db = tmp_path / "tocsin.db"
    shutil.copy(city_db, db)
    store = await SqliteStore.open(db)
    policy = load_policy(ROOT / "config" / "policy.toml")
    planner = PlanningWorker(store, lambda: policy)
    await planner.start()
    service = WarningService(store, CapConfig(sender=SENDER), on_created=planner.enqueue)
    tokens = [
        ApiToken(TOKEN_NAMES[role], role, SecretStr(hash_token(token)))
        for role, token in TOKENS.items()
    ]
    registry = CollectorRegistry()
    ready = [True]
    app = create_app(
        ApiDeps(
            store=store,
            warnings=service,
            tokens=lambda: tokens,
            max_body_bytes=MAX_BODY,
            ready=lambda: ready[0],
            registry=registry,
            schedules=ScheduleService(store, service, sender=SENDER),
        )
    )
    client = await aiohttp_client(app)
    yield Api(client, store, planner, db, registry, ready)
    await planner.stop()
    await store.close()
