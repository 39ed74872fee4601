from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
from small_directory import fill_small_directory

from dispatcher.config import AdapterInstanceConfig, EngineConfig
from dispatcher.policy import Policy
from dispatcher.store.sqlite import SqliteStore
from engine.harness import FAST, POLICY, Tocsin

MakeTocsin = Callable[..., Tocsin]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    db = tmp_path / "engine.db"
    opened = await SqliteStore.open(db)
    fill_small_directory(db)
    yield opened
    await opened.close()


@pytest.fixture
async def tocsin(store: SqliteStore) -> AsyncIterator[MakeTocsin]:
    """make(instances, policy=…, config=…, rng=…) → a Tocsin on the store; its engine is
    stopped at the end of the test if the test left it running."""
    made: list[Tocsin] = []

    def make(
        instances: Mapping[str, AdapterInstanceConfig],
        *,
        policy: Policy = POLICY,
        config: EngineConfig = FAST,
        rng: random.Random | None = None,
    ) -> Tocsin:
        t = Tocsin(store, store.path, instances, policy=policy, config=config, rng=rng)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.stop()
