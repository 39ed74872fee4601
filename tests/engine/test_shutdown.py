"""Graceful shutdown: in-flight batches finish and are recorded within the drain timeout; a
send that hangs past it keeps its lease, and the next engine on the store sends it again
(at least once)."""

from __future__ import annotations

import asyncio
import time

from small_directory import COUNTY_A

from engine.conftest import MakeTocsin
from engine.harness import config, policy, rule, sim

DEVICES = policy(rules=[rule("devices", "loudspeaker", "transmitter")])


async def test_stop_lets_the_in_flight_batch_finish_and_records_it(tocsin: MakeTocsin) -> None:
    t = tocsin(
        {"speaker": sim(["speaker", "transmitter"], latency=0.5)},
        policy=DEVICES,
        config=config(drain_timeout=3.0),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()
    await t.wait(
        lambda: all(d.state == "sending" for d in t.deliveries(w.id)), what="all in flight"
    )

    started = time.monotonic()
    await t.stop()
    took = time.monotonic() - started

    assert 0.1 <= took < 2.0, took
    states = t.states(w.id)
    assert set(states.values()) <= {"sent", "acknowledged"}, states
    # Acknowledgements reported during the drain are recorded too.
    assert "acknowledged" in set(states.values())
    assert t.adapter("speaker").stats.dispatches == len(states)
    for d in t.deliveries(w.id):
        assert any(e.state == "sent" for e in t.events(d.id))
    await t.assert_counts_consistent(w.id)


async def test_a_hung_send_keeps_its_lease_and_the_next_engine_sends_it_again(
    tocsin: MakeTocsin,
) -> None:
    t = tocsin(
        {"speaker": sim(["speaker", "transmitter"], hang_rate=1, send_timeout=20)},
        policy=DEVICES,
        config=config(drain_timeout=0.5),
    )
    w = await t.warn((COUNTY_A,))
    await t.start()
    # Every delivery handed to the adapter (the speakers and the transmitter are claimed by
    # two channel loops, one after the other), whose sends all hang.
    await t.wait(
        lambda: (
            all(d.state == "sending" for d in t.deliveries(w.id))
            and len(t.adapter("speaker").dispatched) == len(t.deliveries(w.id))
        ),
        what="every send hanging",
    )
    hung = {d.id for d in t.deliveries(w.id)}
    assert hung
    assert t.adapter("speaker").stats.hung >= 1

    started = time.monotonic()
    await t.stop()
    took = time.monotonic() - started

    assert took < 0.5 + 0.6, f"stop took {took:.2f}s with a 0.5 s drain"
    await asyncio.sleep(0)
    left = [task.get_name() for task in asyncio.all_tasks() if not task.done()]
    assert not [n for n in left if n.startswith("tocsin-")], left
    after = {d.id: d for d in t.deliveries(w.id)}
    assert {i for i, d in after.items() if d.state == "sending"} == hung
    assert all(after[i].attempts == 1 for i in hung)

    # A new engine on the same store (the daemon restarted): the leases are taken back at
    # once and sent again.
    t.new_engine({"speaker": sim(["speaker", "transmitter"])})
    await t.start()
    await t.wait(lambda: t.completed(w.id), within=5, what="warning complete")

    resent = [d for d in t.adapter("speaker").dispatched if d.delivery_id in hung]
    assert sorted(d.delivery_id for d in resent) == sorted(hung), "each sent again exactly once"
    assert all(d.attempt == 2 for d in resent)
    for i in hung:
        events = t.events(i)
        reclaimed = [e for e in events if e.state == "retry_wait"]
        assert len(reclaimed) == 1
        assert "the daemon stopped during the send" in reclaimed[0].reason
    assert {d.state for d in t.deliveries(w.id)} == {"acknowledged"}
    await t.assert_counts_consistent(w.id)
