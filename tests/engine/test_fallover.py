"""Fall-over: when no SMS adapter can send (paused, or none configured), a person's SMS gives
way at once to the next step of their ladder. A person with no later step waits for a paused
channel without the wait counting as an attempt; with no adapter configured for the channel at
all, their delivery fails for good (so the warning can complete and visits can follow)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from small_directory import VILLAGE_A1a
from waiting import wait_until

from dispatcher.config import AdapterInstanceConfig
from engine.conftest import MakeTocsin
from engine.harness import policy, rule, sim

LADDER = [rule("grid_members", "sms", "voice"), rule("everyone", "sms")]

PAUSED = {
    # Its first batch raises and opens the breaker for a long pause.
    "sms": sim(["sms"], raise_rate=1, breaker_failures=1, breaker_pause=60),
    "voice": sim(["voice"]),
}
MISSING = {"voice": sim(["voice"])}


@pytest.mark.parametrize(
    ("instances", "attempts", "why"),
    [(PAUSED, 1, "every sms adapter is paused (sms)"), (MISSING, 0, "no adapter is configured")],
    ids=["paused", "missing"],
)
async def test_sms_falls_over_to_the_held_call(
    tocsin: MakeTocsin, instances: dict[str, AdapterInstanceConfig], attempts: int, why: str
) -> None:
    t = tocsin(instances, policy=policy(rules=LADDER))
    w = await t.warn((VILLAGE_A1a,))
    await t.start()

    voice = await t.wait_state(w.id, "p01", "voice", "acknowledged", within=5)

    sms = t.delivery(w.id, "p01", "sms")
    assert sms.state == "failed"
    failed = [e for e in t.events(sms.id) if e.state == "failed"]
    assert len(failed) == 1
    assert why in failed[0].reason
    assert "fell over to voice" in failed[0].reason
    released = next(e for e in t.events(voice.id) if e.state == "pending")
    assert "escalated: sms unavailable" in released.reason
    assert released.at - failed[0].at < 0.01  # in the same transaction
    assert t.reached(w.id)[("grid_member", "p01")] == 1

    for person in ("p02", "p04"):
        d = t.delivery(w.id, person, "sms")
        if "sms" in instances:
            # Nothing after the SMS: they wait for the paused channel, uncounted.
            assert d.state == "retry_wait"
            assert d.attempts == attempts, "waiting for a paused channel is not an attempt"
            assert d.due_at > time.time() + 20, "waits for the channel, not a busy loop"
            assert any(why in e.reason for e in t.events(d.id) if e.state == "retry_wait")
        else:
            # No SMS adapter will ever come: failed for good, with the reason.
            assert d.state == "failed"
            assert any(why in e.reason for e in t.events(d.id) if e.state == "failed")
    if "sms" in instances:
        assert t.adapter("sms").stats.sends == 1, "a paused adapter is not called"
    await t.assert_counts_consistent(w.id)


async def test_a_connection_lost_after_the_start_hands_the_adapter_nothing(
    tocsin: MakeTocsin,
) -> None:
    """An adapter whose connection went away (a modem unplugged) says why; meanwhile it gets
    nothing, shows as not ready, and people fall over to their next channel; once it is back,
    sending resumes on its own."""
    t = tocsin({"sms": sim(["sms"]), "voice": sim(["voice"])}, policy=policy(rules=LADDER))
    await t.start()
    t.adapter("sms").connection_lost = "/dev/ttyUSB0: device disconnected, reopening"
    w = await t.warn((VILLAGE_A1a,))

    await t.wait_state(w.id, "p01", "voice", "acknowledged", within=5)

    assert t.adapter("sms").stats.sends == 0
    status = next(s for s in t.engine.adapter_status() if s["name"] == "sms")
    assert status["state"] == "not_ready"
    assert status["reason"] == "/dev/ttyUSB0: device disconnected, reopening"
    # An operator's alert sees it although no batch was sent.
    assert t.registry.get_sample_value("tocsin_adapter_ready", {"adapter": "sms"}) == 0
    assert t.registry.get_sample_value("tocsin_adapter_paused", {"adapter": "sms"}) == 1
    assert t.registry.get_sample_value("tocsin_adapter_ready", {"adapter": "voice"}) == 1
    sms = t.delivery(w.id, "p01", "sms")
    assert sms.state == "failed"
    assert any("every sms adapter is paused" in e.reason for e in t.events(sms.id))
    waiting = t.delivery(w.id, "p02", "sms")
    assert waiting.state == "retry_wait"
    # Looked at again every RECONNECT_POLL seconds while the port is down: one log line.
    await wait_until(
        lambda: t.delivery(w.id, "p02", "sms").due_at > waiting.due_at,
        within=10,
        what="a second look at the waiting delivery",
    )
    waits = [e for e in t.events(waiting.id) if e.state == "retry_wait"]
    assert len(waits) == 1, [e.reason for e in waits]
    assert "(sms: /dev/ttyUSB0: device disconnected, reopening)" in waits[0].reason

    t.adapter("sms").connection_lost = None
    t.engine.wake()
    await t.wait_state(w.id, "p02", "sms", "acknowledged", within=40)
    assert t.adapter("sms").stats.sends >= 1
    status = next(s for s in t.engine.adapter_status() if s["name"] == "sms")
    assert status["state"] == "ready"
    assert "reason" not in status
    assert t.registry.get_sample_value("tocsin_adapter_ready", {"adapter": "sms"}) == 1


async def test_devices_of_an_instance_whose_connection_is_down_wait_for_it(
    tocsin: MakeTocsin,
) -> None:
    """A transmitter names its instance; while that instance's line is down another instance
    on the channel does not take it, and the wait is logged once, naming why."""
    devices = [{"audience": "devices", "device_kinds": ["transmitter"]}]
    t = tocsin(
        {"transmitter": sim(["transmitter"]), "spare": sim(["transmitter"])},
        policy=policy(rules=devices),
    )
    await t.start()
    t.adapter("transmitter").connection_lost = "/dev/ttyS0: device disconnected, reopening"
    w = await t.warn((VILLAGE_A1a,))
    tx = await wait_until_claimed_twice(t, w.id)

    assert t.adapter("spare").stats.dispatches == 0, "a device goes to its own instance"
    waits = [e for e in t.events(tx.id) if e.state == "retry_wait"]
    assert len(waits) == 1, [e.reason for e in waits]
    assert waits[0].reason == (
        "its adapter transmitter: /dev/ttyS0: device disconnected, reopening"
    )
    assert tx.attempts == 0, "waiting for its instance is not an attempt"

    t.adapter("transmitter").connection_lost = None
    await t.wait_state(w.id, "tx-a1", "transmitter", "acknowledged", within=20)
    assert t.adapter("spare").stats.dispatches == 0


async def wait_until_claimed_twice(t: Any, warning_id: str) -> Any:
    """The county transmitter's delivery, once it has been put back at least twice."""
    first: list[float] = []

    def put_back_again() -> bool:
        d = t.delivery(warning_id, "tx-a1", "transmitter")
        if d.state != "retry_wait":
            return False
        if not first:
            first.append(d.due_at)
        return bool(d.due_at > first[0])

    await wait_until(put_back_again, within=15, what="the delivery put back twice")
    return t.delivery(warning_id, "tx-a1", "transmitter")
