from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
from small_directory import fill_small_directory
from stores import StoreTarget

from dispatcher.config import AdapterInstanceConfig, EngineConfig
from dispatcher.policy import Policy
from dispatcher.store.sql_store import SqlStore
from engine.harness import FAST, POLICY, Tocsin

MakeTocsin = Callable[..., Tocsin]


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[SqlStore]:
    """The small directory in a store of each kind (``test_x[sqlite]``, ``test_x[postgresql]``);
    a test reaches its tables beside the store through ``store_target``."""
    opened = await store_target.open()
    fill_small_directory(store_target)
    yield opened
    await opened.close()


@pytest.fixture
async def tocsin(store: SqlStore, store_target: StoreTarget) -> AsyncIterator[MakeTocsin]:
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
        t = Tocsin(store, store_target, instances, policy=policy, config=config, rng=rng)
        made.append(t)
        return t

    yield make
    for t in made:
        await t.close()
