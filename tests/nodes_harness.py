"""Several `tocsin serve` nodes on one PostgreSQL database, for the fault tests
(tests/test_nodes_faults.py): one config, each node its own --node name and --port, its
output in a file (a pipe would fill during a fan-out and stall the node), the tables read
through psycopg, and the nodes' output tails printed when a test fails."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from test_daemon import OPERATOR, ROOT, _free_port

from dispatcher.config import SyntheticDirectoryConfig
from dispatcher.synthetic import iter_areas

#: Deliveries that are still to be sent, being sent, or waiting for an acknowledgement.
OPEN_STATES = ("held", "pending", "retry_wait", "sending", "sent", "delivered")

#: The config's synthetic county: 4 × 5 × 4 × 25 households of 3 persons, about 6000 persons.
SYNTHETIC = {
    "counties": 1,
    "towns_per_county": 4,
    "villages_per_town": 5,
    "grids_per_village": 4,
    "households_per_grid": 25,
    "persons_per_household": 3.0,
    "seed": 7,
}


@dataclass(frozen=True)
class ClusterConfig:
    """What differs between the tests' configs."""

    dsn: str
    #: The sms instance: per batch, batches at once, each send's latency.
    sms_batch: int = 200
    sms_concurrency: int = 4
    sms_latency: str = "300ms"
    sms_rate: int = 1500
    #: The voice instance: per batch and batches at once.
    voice_batch: int = 50
    voice_concurrency: int = 4
    engine_batch: int = 1000
    lease: str = "5s"
    send_timeout: str = "3s"
    heartbeat: str = "1s"
    #: Not less: during a fan-out on this 2-core machine a node's heartbeat waits up to ~4 s
    #: for its writer connection (busy with, or waiting for the cross-node writer lock for,
    #: the fan-out's writes), and a live node would be shown gone.
    dead_after: str = "8s"
    leader_check: str = "1s"
    synthetic: dict[str, object] = field(default_factory=lambda: dict(SYNTHETIC))
    #: Extra TOML appended (schedules).
    extra: str = ""
    #: None: config/policy.toml as it is. A duration: its red level made simple for the
    #: fault tests — every device and everyone texted, no held steps, no visits, and this
    #: ack_timeout (and device_ack_timeout), so that acknowledgements a killed node had
    #: received but not written end the deliveries (unacknowledged, or a device sent again)
    #: within the test rather than after the policy's 5 minutes.
    red_ack_timeout: str | None = None

    def policy(self) -> str:
        text = (ROOT / "config" / "policy.toml").read_text(encoding="utf-8")
        if self.red_ack_timeout is None:
            return text
        start = text.index("[levels.red]")
        end = text.index("[levels.orange]")
        end = text.rindex("\n\n", start, end) + 2  # keep the orange level's comment
        red = f"""[levels.red]
ack_timeout = "{self.red_ack_timeout}"
device_ack_timeout = "{self.red_ack_timeout}"
max_attempts = 6
visit = false

[[levels.red.rules]]
audience = "devices"
device_kinds = ["loudspeaker", "transmitter", "modem"]

[[levels.red.rules]]
audience = "everyone"
channels = ["sms"]

"""
        return text[:start] + red + text[end:]

    def text(self) -> str:
        synthetic = "\n".join(f"{k} = {json.dumps(v)}" for k, v in self.synthetic.items())
        return f"""
[server]
host = "127.0.0.1"
port = 8080

[store]
dsn = {json.dumps(self.dsn)}

[node]
heartbeat = "{self.heartbeat}"
dead_after = "{self.dead_after}"
leader_check = "{self.leader_check}"

[directory.synthetic]
{synthetic}

[policy]
file = "policy.toml"

[engine]
batch_size = {self.engine_batch}
lease = "{self.lease}"

[[api.tokens]]
name = "demo-duty-officer"
role = "duty_officer"
sha256 = "11aedcff35ed445473397e20807985ebf74b5ddc42ae3a1de656c2595b0a8ab1"

[[api.tokens]]
name = "demo-operator"
role = "operator"
sha256 = "9437e87fae95c03d3778f2575bb18ce30e647e51d86a8c37963364e1fc4f374e"

[adapters.devices]
kind = "simulated"
channels = ["speaker", "transmitter", "modem"]
send_timeout = "{self.send_timeout}"

[adapters.sms]
kind = "simulated"
channels = ["sms"]
rate_per_second = {self.sms_rate}
burst = 300
batch_size = {self.sms_batch}
concurrency = {self.sms_concurrency}
send_timeout = "{self.send_timeout}"

[adapters.sms.settings]
latency = "{self.sms_latency}"

[adapters.voice]
kind = "simulated"
channels = ["voice"]
batch_size = {self.voice_batch}
concurrency = {self.voice_concurrency}
send_timeout = "{self.send_timeout}"

[adapters.voice.settings]
latency = "20ms"
{self.extra}
"""

    def county(self) -> str:
        """The synthetic directory's (first) county code."""
        config = SyntheticDirectoryConfig(**self.synthetic)  # type: ignore[arg-type]
        return next(a.code for a in iter_areas(config) if a.level.value == "county")


class Node:
    """One `tocsin serve --node NAME --port PORT` process."""

    def __init__(self, name: str, config: Path, workdir: Path) -> None:
        self.name = name
        self.config = config
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dispatcher.cli",
                    "serve",
                    "--config",
                    str(self.config),
                    "--node",
                    self.name,
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, within: float = 90.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"node {self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                    )
                try:
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"node {self.name} not ready within {within} s:\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, and wait for the process to be gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit code (after SIGKILL if it does not stop within ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return int(self.proc.returncode)

    def lines(self) -> list[str]:
        try:
            return self.output.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.lines()[-lines:])

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus metric's samples matching ``labels`` on this node."""
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as r:
            text = await r.text()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total

    async def nodes(self) -> dict[str, Any]:
        """GET /v1/nodes as the operator."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.url}/v1/nodes", headers={"Authorization": f"Bearer {OPERATOR}"}
            ) as response,
        ):
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
            return body


def node_states(view: dict[str, Any]) -> dict[str, str]:
    """/v1/nodes as name -> state."""
    return {n["name"]: n["state"] for n in view["nodes"]}


class Cluster:
    """The nodes of one test, sharing one config file and one database."""

    def __init__(self, workdir: Path, config: ClusterConfig) -> None:
        self.workdir = workdir
        self.dsn = config.dsn
        (workdir / "policy.toml").write_text(config.policy(), encoding="utf-8")
        self.config = workdir / "tocsin.toml"
        self.config.write_text(config.text(), encoding="utf-8")
        self.nodes: dict[str, Node] = {}
        self._peek: psycopg.Connection[tuple[Any, ...]] | None = None

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    async def start(self, *names: str) -> None:
        """The first node alone (it fills the empty database with the synthetic directory),
        then the others together."""
        first, *others = names
        await self._start([first])
        if others:
            await self._start(others)

    async def _start(self, names: Sequence[str]) -> None:
        for name in names:
            node = self.nodes[name] = Node(name, self.config, self.workdir)
            node.spawn()
        await asyncio.gather(*(self.nodes[name].wait_ready() for name in names))

    def diagnostics(self, lines: int = 60) -> str:
        parts = []
        for node in self.nodes.values():
            state = "running" if node.alive else f"exited {node.proc and node.proc.returncode}"
            parts.append(f"----- node {node.name} ({state}), last {lines} lines -----")
            parts.append(node.tail(lines))
        return "\n".join(parts)

    def stop_all(self) -> dict[str, int]:
        return {name: node.terminate() for name, node in self.nodes.items() if node.proc}

    # -- the database ----------------------------------------------------------------------
    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """A query on one connection kept for the test (opened again after a server
        restart)."""
        for attempt in (1, 2):
            if self._peek is None or self._peek.closed or self._peek.broken:
                self._peek = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            try:
                return self._peek.execute(sql, tuple(params)).fetchall()
            except psycopg.OperationalError:
                self._peek.close()
                self._peek = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._peek is not None:
            self._peek.close()
            self._peek = None

    def scalar(self, sql: str, params: Sequence[object] = ()) -> int:
        value = self.rows(sql, params)[0][0]
        return 0 if value is None else int(value)

    def states(self, warning_id: str | None = None) -> dict[str, int]:
        """Deliveries by state (of one warning, or all)."""
        if warning_id is None:
            found = self.rows("SELECT state, count(*) FROM deliveries GROUP BY state")
        else:
            found = self.rows(
                "SELECT d.state, count(*) FROM deliveries d JOIN warnings w ON w.seq = "
                "d.warning_seq WHERE w.id = %s GROUP BY d.state",
                (warning_id,),
            )
        return {str(s): int(n) for s, n in found}

    def history(self, ids: set[int], most: int = 5) -> str:
        """The delivery log of a few deliveries (for a failure's message)."""
        out = []
        for delivery_id in sorted(ids)[:most]:
            out.append(f"delivery {delivery_id}:")
            for at, state, attempt, adapter, reason in self.rows(
                "SELECT at, state, attempt, adapter, reason FROM delivery_events "
                "WHERE delivery_id = %s ORDER BY id",
                (delivery_id,),
            ):
                out.append(f"  {at:.3f} {state} attempt {attempt} {adapter} {reason}")
        return "\n".join(out)

    def ids(self, where: str) -> set[int]:
        """The ids of the deliveries matching ``where``."""
        return {int(r[0]) for r in self.rows(f"SELECT id FROM deliveries WHERE {where}")}

    def open_count(self, warning_id: str | None = None) -> int:
        states = self.states(warning_id)
        return sum(states.get(s, 0) for s in OPEN_STATES)

    def leases(self) -> dict[str | None, int]:
        """Deliveries being sent now, by the node holding the lease."""
        return {
            name: int(n)
            for name, n in self.rows(
                "SELECT leased_by, count(*) FROM deliveries WHERE state = 'sending' "
                "GROUP BY leased_by"
            )
        }

    def sent_events(self) -> dict[int, int]:
        """Per delivery: how many times an adapter took it (its 'sent' events)."""
        return {
            int(d): int(n)
            for d, n in self.rows(
                "SELECT delivery_id, count(*) FROM delivery_events WHERE state = 'sent' "
                "AND delivery_id IS NOT NULL GROUP BY delivery_id"
            )
        }


@asynccontextmanager
async def cluster(workdir: Path, config: ClusterConfig) -> AsyncIterator[Cluster]:
    """A cluster whose nodes are stopped at the end; on a failure the nodes' output tails
    are printed (pytest shows them under the failure)."""
    made = Cluster(workdir, config)
    try:
        yield made
    except BaseException:
        print(made.diagnostics())
        raise
    finally:
        for node in made.nodes.values():
            if node.alive:
                node.terminate(timeout=15)
        made.close()
