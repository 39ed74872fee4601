"""Several dispatcher nodes on one PostgreSQL database, and what happens when things fail
(issue 8, "Faults"): two nodes share a fan-out and send each delivery once; a node killed
mid fan-out loses nothing and its in-flight leases bound the repeats; the scheduler leader's
death hands the lead over and the next fire time runs once; a database restart mid fan-out
is survived by both nodes.

Each test runs real `tocsin serve` processes (tests/nodes_harness.py) with simulated adapters,
so every send is counted exactly: by the delivery log's events in the database and by each
node's own send counters (/metrics)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nodes_harness import Cluster, ClusterConfig, Node, cluster, node_states
from pg_cluster import private_cluster
from test_daemon import DUTY, _call, _wait_planned
from waiting import wait_until

pytestmark = pytest.mark.slow

#: Every terminal state a delivery of these fan-outs may end in (the simulated adapters
#: acknowledge everything; a delivery no longer needed is skipped; an acknowledgement lost
#: with a killed node leaves its delivery unacknowledged).
TERMINAL = {"acknowledged", "unacknowledged", "skipped"}
#: The sms instance's batch size and concurrency: one node's in-flight sms leases at most.
SMS_BATCH = 200
SMS_CONCURRENCY = 4
#: The voice instance's (nodes_harness.ClusterConfig's defaults).
VOICE_IN_FLIGHT = 50 * 4
#: Device deliveries may be in flight too: the synthetic county has 32 devices.
DEVICES = 32
#: What one node can have in flight at once (its leases).
IN_FLIGHT_MAX = SMS_BATCH * SMS_CONCURRENCY + VOICE_IN_FLIGHT + DEVICES
#: How often the tests look at the database or the nodes while waiting.
POLL = 0.2


async def _post_warning(node: Node, county: str) -> str:
    status, body, _ = await _call(
        "POST",
        f"{node.url}/v1/warnings",
        DUTY,
        {
            "level": "red",
            "event": "暴雨",
            "headline": "暴雨红色预警",
            "area_codes": [county],
            "status": "Exercise",
        },
    )
    assert status == 202, body
    return str(body["id"])


async def _planned(c: Cluster, node: Node, warning_id: str) -> int:
    """The number of deliveries planned for the warning (the plan's total and the table's
    rows agree)."""
    plan = await _wait_planned(node.url, warning_id)
    total = int(str(plan["total"]))
    assert sum(c.states(warning_id).values()) == total, (c.states(warning_id), plan)
    return total


def _sent(c: Cluster, warning_id: str) -> int:
    return c.scalar(
        "SELECT count(*) FROM delivery_events WHERE warning_id = %s AND state = 'sent'",
        (warning_id,),
    )


async def _wait_all_terminal(c: Cluster, warning_id: str, within: float) -> dict[str, int]:
    try:
        await wait_until(
            lambda: c.open_count(warning_id) == 0,
            within=within,
            interval=POLL,
            what=f"every delivery of {warning_id} to end",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {c.states(warning_id)}, leases {c.leases()}") from None
    states = c.states(warning_id)
    assert set(states) <= TERMINAL, states
    return states


def _acknowledged_ids(c: Cluster, warning_id: str) -> set[int]:
    return {
        int(r[0])
        for r in c.rows(
            "SELECT d.id FROM deliveries d JOIN warnings w ON w.seq = d.warning_seq "
            "WHERE w.id = %s AND d.state = 'acknowledged'",
            (warning_id,),
        )
    }


def _reclaimed(c: Cluster) -> set[int]:
    """Deliveries whose lease ran out and which were made due again."""
    return {
        int(r[0])
        for r in c.rows(
            "SELECT DISTINCT delivery_id FROM delivery_events WHERE state = 'retry_wait' "
            "AND reason LIKE 'lease expired%%'"
        )
    }


def _claimed_again(c: Cluster) -> set[int]:
    """Deliveries claimed more than once: whatever was sent twice is among them."""
    return {int(r[0]) for r in c.rows("SELECT id FROM deliveries WHERE attempts > 1")} | {
        d for d, n in c.sent_events().items() if n > 1
    }


def _check_counters(c: Cluster, warning_id: str) -> None:
    """The per-state counters agree with the rows."""
    counted = {
        str(s): int(n)
        for s, n in c.rows(
            "SELECT s.state, s.n FROM delivery_state_counts s JOIN warnings w "
            "ON w.seq = s.warning_seq WHERE w.id = %s AND s.n <> 0",
            (warning_id,),
        )
    }
    assert counted == c.states(warning_id)


async def _status(url: str) -> int:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url) as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


# -- 1. two nodes share a fan-out ----------------------------------------------------------------


async def test_two_nodes_send_every_delivery_once(tmp_path: Path, postgres_dsn: str) -> None:
    settings = ClusterConfig(dsn=postgres_dsn, sms_latency="100ms")
    async with cluster(tmp_path, settings) as c:
        await c.start("node-a", "node-b")
        a, b = c["node-a"], c["node-b"]
        for node in (a, b):
            view = await node.nodes()
            assert view["this_node"] == node.name
            assert node_states(view) == {"node-a": "alive", "node-b": "alive"}, view

        warning_id = await _post_warning(a, settings.county())
        planned = await _planned(c, a, warning_id)
        assert planned > 3000, planned
        states = await _wait_all_terminal(c, warning_id, within=120)
        assert set(states) <= {"acknowledged", "skipped"}, states
        assert sum(states.values()) == planned
        _check_counters(c, warning_id)

        # Exactly once: each acknowledged delivery was taken by an adapter once, claimed once.
        sent = c.sent_events()
        acknowledged = _acknowledged_ids(c, warning_id)
        assert set(sent) == acknowledged
        assert {d: n for d, n in sent.items() if n != 1} == {}
        assert _claimed_again(c) == set()
        assert _reclaimed(c) == set()

        # Both nodes did part of the work: their adapters' accepted sends add up to the log.
        accepted = {
            node.name: await node.metric("tocsin_send_outcomes_total", outcome="accepted")
            for node in (a, b)
        }
        print(f"planned {planned}: {states}; accepted sends per node {accepted}")
        assert sum(accepted.values()) == len(sent), accepted
        assert all(n > 0 for n in accepted.values()), accepted

        for node in (a, b):
            view = await node.nodes()
            assert node_states(view) == {"node-a": "alive", "node-b": "alive"}, view
            assert all(n["leases"] == 0 for n in view["nodes"]), view
        assert c.stop_all() == {"node-a": 0, "node-b": 0}, c.diagnostics()


# -- 2. kill -9 one node mid fan-out -------------------------------------------------------------

#: The fault tests' red level: acknowledgements a killed node had received but not yet
#: written are gone with it; such deliveries end unacknowledged (a device: sent again) after
#: this, within the test (nodes_harness.ClusterConfig.red_ack_timeout).
ACK_TIMEOUT = 15


async def test_kill_9_one_node_mid_fan_out(tmp_path: Path, postgres_dsn: str) -> None:
    settings = ClusterConfig(
        dsn=postgres_dsn,
        sms_batch=SMS_BATCH,
        sms_concurrency=SMS_CONCURRENCY,
        sms_latency="300ms",
        lease="5s",
        red_ack_timeout=f"{ACK_TIMEOUT}s",
    )
    async with cluster(tmp_path, settings) as c:
        await c.start("node-a", "node-b")
        a, b = c["node-a"], c["node-b"]
        warning_id = await _post_warning(a, settings.county())
        planned = await _planned(c, a, warning_id)

        # Kill node-a once a good part of the fan-out went out and it holds leases.
        await wait_until(
            lambda: _sent(c, warning_id) >= 1000 and c.leases().get("node-a", 0) > 0,
            within=60,
            interval=0.05,
            what="node-a sending, with 1000 deliveries sent",
        )
        a.kill()
        # Nothing changes node-a's leases now until they expire (5 s): what it had in flight.
        in_flight = c.ids("state = 'sending' AND leased_by = 'node-a'")
        # Sent and waiting for their acknowledgement: node-a's may have died with it.
        waiting = c.ids("state IN ('sent', 'delivered')")
        devices = c.ids("audience = 'device'")
        # /v1/nodes on the survivor shows the dead node's leases until they expire.
        shown = {n["name"]: n["leases"] for n in (await b.nodes())["nodes"]}
        assert c.open_count(warning_id) > 0, "the kill came too late: the fan-out was over"
        assert 0 < len(in_flight) <= IN_FLIGHT_MAX, len(in_flight)
        assert shown["node-a"] == len(in_flight), (shown, len(in_flight))

        # node-b says node-a is gone once it has not been heard from for dead_after.
        async def gone() -> bool:
            return node_states(await b.nodes()).get("node-a") == "gone"

        await wait_until(gone, within=8 + 1 + 10, interval=POLL, what="node-a shown as gone")
        assert node_states(await b.nodes())["node-b"] == "alive"

        # node-b finishes: nothing lost, every delivery ended.
        states = await _wait_all_terminal(c, warning_id, within=60 + ACK_TIMEOUT)
        assert sum(states.values()) == planned
        _check_counters(c, warning_id)
        sent = c.sent_events()
        assert _acknowledged_ids(c, warning_id) <= set(sent), "acknowledged, never sent"
        # Only acknowledgements node-a had not written yet were lost.
        unacknowledged = c.ids("state = 'unacknowledged'")
        assert unacknowledged <= waiting, sorted(unacknowledged - waiting)[:20]

        # Repeats: node-a's leases at the kill were taken over and claimed again, and devices
        # whose played report died with node-a were sent again; nothing else.
        assert _reclaimed(c) == in_flight
        again = _claimed_again(c)
        allowed = in_flight | (waiting & devices)
        assert again <= allowed, sorted(again - allowed)[:20]
        print(
            f"planned {planned}: {states}; node-a's leases at the kill {len(in_flight)}, "
            f"claimed again {len(again)}, acknowledgements lost {len(unacknowledged)}"
        )

        view = await b.nodes()
        assert node_states(view) == {"node-a": "gone", "node-b": "alive"}, view
        assert b.alive
        assert b.terminate() == 0, c.diagnostics()


# -- 3. the scheduler leader dies ----------------------------------------------------------------

SHANGHAI = timedelta(hours=8)
#: From writing the config to the schedule's fire time at least: two nodes start (the first
#: one fills the directory), the leader is killed and the lead moves, all before it.
START_MARGIN = 30.0


def _schedule(county: str, fire: datetime) -> str:
    """An hourly schedule (the most often a schedule may fire) at ``fire``'s minute."""
    minute = (fire + SHANGHAI).minute
    return f"""
[[schedules]]
id = "failover-check"
name = "leader failover"
cron = "{minute} * * * *"
status = "Test"
level = "blue"
areas = ["{county}"]
rules = [{{ audience = "devices", device_kinds = ["loudspeaker"] }}]
headline = "应急广播例行测试"
message = "这是应急广播系统的例行测试，请勿惊慌。"
"""


def _next_fire(margin: float) -> datetime:
    earliest = datetime.now(UTC) + timedelta(seconds=margin)
    return earliest.replace(second=0, microsecond=0) + timedelta(minutes=1)


async def test_scheduler_leader_killed_hands_over_and_fires_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    fire = _next_fire(START_MARGIN)
    county = ClusterConfig(dsn=postgres_dsn).county()
    settings = ClusterConfig(dsn=postgres_dsn, leader_check="1s", extra=_schedule(county, fire))
    async with cluster(tmp_path, settings) as c:
        await c.start("node-a", "node-b")
        names = {"node-a", "node-b"}

        leaders: dict[str, Any] = {}

        async def one_leader() -> bool:
            for node in c.nodes.values():
                leaders[node.name] = (await node.nodes())["scheduler_leader"]
            return len(set(leaders.values())) == 1 and leaders["node-a"] in names

        await wait_until(one_leader, within=15, interval=POLL, what="one scheduler leader")
        leader = c[str(leaders["node-a"])]
        survivor = c[({"node-a", "node-b"} - {leader.name}).pop()]
        assert c.scalar("SELECT count(*) FROM schedule_runs") == 0

        leader.kill()
        killed = time.monotonic()
        assert datetime.now(UTC) < fire - timedelta(seconds=3), (
            f"the nodes took too long to start: the leader was killed after the fire time "
            f"{fire:%H:%M:%S}; raise START_MARGIN"
        )

        async def survivor_leads() -> bool:
            return (await survivor.nodes())["scheduler_leader"] == survivor.name

        # leader_check (1 s) plus slack for a busy 2-core machine.
        await wait_until(survivor_leads, within=1 + 5, interval=POLL, what="the lead to move")
        took = time.monotonic() - killed
        print(f"the lead moved to {survivor.name} {took:.1f} s after the kill")

        # The fire time comes: the new leader runs it, once.
        fire_text = fire.strftime("%Y-%m-%dT%H:%M")

        def ran() -> bool:
            return (
                c.scalar(
                    "SELECT count(*) FROM schedule_runs WHERE schedule_id = 'failover-check' "
                    "AND state = 'ran' AND warning_id IS NOT NULL"
                )
                > 0
            )

        wait = (fire - datetime.now(UTC)).total_seconds()
        await wait_until(ran, within=max(0.0, wait) + 30, interval=POLL, what="the run")
        runs = c.rows(
            "SELECT fire_at, state, kind, node, warning_id FROM schedule_runs "
            "WHERE schedule_id = 'failover-check'"
        )
        assert len(runs) == 1, runs
        fire_at, state, kind, node, warning_id = runs[0]
        assert str(fire_at).startswith(fire_text), (runs, fire_text)
        assert (state, kind) == ("ran", "cron"), runs
        # The node that ran it: its name, host and pid ("node-b (host:pid)").
        assert survivor.proc is not None, runs
        assert str(node).startswith(survivor.name), runs
        assert str(node).endswith(f":{survivor.proc.pid})"), runs
        await _wait_planned(survivor.url, str(warning_id))
        scheduled = c.rows(
            "SELECT id FROM warnings WHERE identifier LIKE 'tocsin-schedule-failover-check-%%'"
        )
        assert [str(r[0]) for r in scheduled] == [str(warning_id)], scheduled

        view = await survivor.nodes()
        assert view["scheduler_leader"] == survivor.name
        assert {n["name"]: n["scheduler_leader"] for n in view["nodes"]} == {
            leader.name: False,
            survivor.name: True,
        }, view
        assert survivor.terminate() == 0, c.diagnostics()


# -- 4. the database restarts mid fan-out --------------------------------------------------------

#: How long the database stays away, at least.
OUTAGE = 3.0


async def test_database_restart_mid_fan_out(tmp_path: Path) -> None:
    with private_cluster() as pg:
        settings = ClusterConfig(
            dsn=pg.dsn,
            sms_batch=SMS_BATCH,
            sms_concurrency=SMS_CONCURRENCY,
            sms_latency="300ms",
        )
        try:
            await _restart_mid_fan_out(tmp_path, pg, settings)
        except BaseException:
            print(f"----- PostgreSQL server log -----\n{pg.log_tail(60)}")
            raise


async def _restart_mid_fan_out(tmp_path: Path, pg: Any, settings: ClusterConfig) -> None:
    async with cluster(tmp_path, settings) as c:
        await c.start("node-a", "node-b")
        a, b = c["node-a"], c["node-b"]
        warning_id = await _post_warning(a, settings.county())
        planned = await _planned(c, a, warning_id)
        await wait_until(
            lambda: _sent(c, warning_id) >= 1000 and len(c.leases()) >= 1,
            within=60,
            interval=0.05,
            what="the fan-out under way",
        )
        lines_before = {n.name: len(n.lines()) for n in (a, b)}

        pg.stop("fast")
        stopped = time.monotonic()
        try:
            # The nodes notice (not ready), stay alive (healthz) and say so in their logs;
            # the server stays away OUTAGE seconds at least.
            async def outage_seen() -> bool:
                for node in (a, b):
                    assert node.alive, f"{node.name} exited during the outage"
                    assert await _status(f"{node.url}/healthz") == 200, node.name
                not_ready = [await _status(f"{n.url}/readyz") == 503 for n in (a, b)]
                logged = [_logged(n, lines_before[n.name], "warning", "error") for n in (a, b)]
                return all(not_ready) and all(logged) and time.monotonic() - stopped >= OUTAGE

            await wait_until(
                outage_seen,
                within=OUTAGE + 15,
                interval=POLL,
                what="both nodes not ready and logging the outage, alive",
            )
        finally:
            pg.start()

        async def both_ready() -> bool:
            return all([await _status(f"{n.url}/readyz") == 200 for n in (a, b)])

        await wait_until(both_ready, within=30, interval=POLL, what="both nodes ready again")
        states = await _wait_all_terminal(c, warning_id, within=90)
        assert set(states) <= {"acknowledged", "skipped"}, states
        assert sum(states.values()) == planned
        _check_counters(c, warning_id)

        # Repeats: only deliveries whose lease ran out (their outcome could not be recorded
        # during the outage) were claimed again; at most what both nodes had in flight.
        reclaimed = _reclaimed(c)
        again = _claimed_again(c)
        assert again <= reclaimed, f"claimed again, no lease expired:\n{c.history(again)}"
        assert len(again) <= 2 * IN_FLIGHT_MAX, len(again)
        # A send whose outcome was lost with the database but whose acknowledgement came
        # (the intake keeps reports until they are written) ends acknowledged without its
        # 'sent' event: bounded by what was in flight too.
        unsent = _acknowledged_ids(c, warning_id) - set(c.sent_events())
        assert len(unsent) <= 2 * IN_FLIGHT_MAX, f"{len(unsent)}:\n{c.history(unsent)}"
        print(
            f"planned {planned}: {states}; claimed again {len(again)}, acknowledged without "
            f"a 'sent' event {len(unsent)}"
        )

        for node in (a, b):
            assert node.alive, node.name
            assert _logged(node, lines_before[node.name], "info", event="node heartbeat back")
            assert await _status(f"{node.url}/healthz") == 200
            view = await node.nodes()
            assert node_states(view) == {"node-a": "alive", "node-b": "alive"}, view
        assert c.stop_all() == {"node-a": 0, "node-b": 0}, c.diagnostics()


def _logged(node: Node, after: int, *levels: str, event: str | None = None) -> list[str]:
    """The node's log lines after line ``after`` at one of ``levels`` (and of ``event``)."""
    out = []
    for line in node.lines()[after:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in levels and event in (None, entry.get("event")):
            out.append(line)
    return out
