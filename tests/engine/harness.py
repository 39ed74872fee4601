"""An engine on a real SQLite store with the small directory and simulated adapters."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatcher.adapter_config import AdapterSpec, build_adapter_specs
from dispatcher.config import AdapterInstanceConfig, EngineConfig, load_policy
from dispatcher.engine.engine import Engine
from dispatcher.planning_worker import PlanningWorker
from dispatcher.policy import Policy
from dispatcher.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "config" / "policy.toml")

#: Fast timers so a whole ladder runs in a test.
FAST = EngineConfig(
    batch_size=200,
    lease=30.0,
    retry_base=0.05,
    retry_cap=0.2,
    device_ack_timeout=0.5,
    visit_delay=0.1,
    drain_timeout=2.0,
)


def sim(channels: list[str], **settings: Any) -> AdapterInstanceConfig:
    return AdapterInstanceConfig(kind="simulated", channels=channels, settings=settings)  # type: ignore[arg-type]


def specs(instances: Mapping[str, AdapterInstanceConfig]) -> tuple[AdapterSpec, ...]:
    built, problems = build_adapter_specs(Path("test.toml"), instances, Path("."))
    assert not problems, problems
    return built


def all_channels(**settings: Any) -> dict[str, AdapterInstanceConfig]:
    return {
        "loudspeaker": sim(["speaker"], **settings),
        "transmitter": sim(["transmitter"], **settings),
        "modem": sim(["modem"], **settings),
        "sms": sim(["sms"], **settings),
        "voice": sim(["voice"], **settings),
    }


@dataclass
class Running:
    store: SqliteStore
    engine: Engine
    planner: PlanningWorker
    db: Path

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def delivery_states(self, warning_id: str) -> dict[tuple[str, str], str]:
        """(target, channel) → state."""
        return {
            (t, c): s
            for t, c, s in self.rows(
                "SELECT d.target_id, d.channel, d.state FROM deliveries d "
                "JOIN warnings w ON w.seq = d.warning_seq WHERE w.id = ?",
                (warning_id,),
            )
        }


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def make_engine(
    store: SqliteStore,
    instances: Mapping[str, AdapterInstanceConfig],
    *,
    config: EngineConfig = FAST,
    policy: Policy = POLICY,
) -> Engine:
    return Engine(store, config=config, policy=lambda: policy, adapters=specs(instances))
