"""The test broadcast's report on a real engine run: a Test warning goes through simulated
devices and providers, some of which stay silent (an offline speaker, one that refuses every
message, transmitters that never report playing, a phone that fails), and the report lists
exactly those devices with the delivery log's reason and their connection state, counts the
people who confirmed and those who did not per channel, and is served over the API as JSON and
CSV to staff only. Any other status is refused."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from small_directory import CITY

from dispatcher.api.app import ApiDeps, create_app
from dispatcher.config import ApiRole, ApiToken, CapConfig, hash_token
from dispatcher.domain import Status
from dispatcher.reports.csv_out import unguard
from dispatcher.reports.test_report import (
    MAINTENANCE_CSV_COLUMNS,
    DeviceProblem,
    NoSuchWarning,
    NotATestBroadcast,
    TestReport,
    build_test_report,
    format_test_report,
    format_test_report_log,
    report_json,
)
from dispatcher.store.base import DeviceState, DeviceStatusRecord
from dispatcher.store.reports_base import DeliveryOutcome
from dispatcher.warning_service import WarningService
from engine.conftest import MakeTocsin
from engine.harness import PHONE, Tocsin, policy, sim

#: Devices that stay silent, and how the report must describe them.
SILENT = {
    # offline (its last will) and refused by the adapter: offline comes first
    "spk-a1b": (DeviceProblem.OFFLINE, DeliveryOutcome.FAILED, DeviceState.OFFLINE),
    # refused by the adapter, never heard from
    "spk-b1a": (DeviceProblem.FAILING, DeliveryOutcome.FAILED, DeviceState.UNKNOWN),
    # took every message, never reported playing
    "tx-a": (DeviceProblem.NO_ACK, DeliveryOutcome.NO_ACK, DeviceState.ONLINE),
    "tx-a1": (DeviceProblem.NO_ACK, DeliveryOutcome.NO_ACK, DeviceState.ONLINE),
}
TOKENS = {role: f"report-token-{role.value}-0123456789" for role in ApiRole}


def _rig(tocsin: MakeTocsin) -> Tocsin:
    return tocsin(
        {
            "loudspeaker": sim(["speaker"], fail_addresses=["spk-a1b", "spk-b1a"]),
            "transmitter": sim(["transmitter"], ack_probability=0),
            "modem": sim(["modem"]),
            "sms": sim(["sms"], fail_addresses=[PHONE["p02"]]),
            "voice": sim(["voice"], ack_probability=0),
        },
        policy=policy(ack_timeout="0.3s", device_ack_timeout="0.2s", max_attempts=2),
    )


async def _run_test_broadcast(t: Tocsin) -> str:
    now = time.time()
    # The speaker's last will: it dropped off the broker a minute ago.
    await t.store.record_device_status(
        [DeviceStatusRecord("loudspeaker", "spk-a1b", False, now - 60, "{}", now)]
    )
    warning = await t.warn((CITY,), status=Status.TEST)
    await t.start()
    await t.wait(lambda: t.completed(warning.id), within=15, what="the test broadcast to end")
    # Statuses are written about once a second: the transmitters that took the message.
    await t.wait(
        lambda: len(t.rows("SELECT 1 FROM device_status WHERE online = 1")) >= 4,
        within=5,
        what="the online devices' statuses",
    )
    return warning.id


async def test_the_report_lists_exactly_the_silent_devices(tocsin: MakeTocsin) -> None:
    t = _rig(tocsin)
    warning_id = await _run_test_broadcast(t)

    report = await build_test_report(t.store, warning_id)

    assert report.status is Status.TEST and report.complete
    assert (report.devices_targeted, report.acknowledged_devices) == (6, 2)
    items = {item.device_id: item for item in report.maintenance}
    assert set(items) == set(SILENT)
    for device_id, (problem, outcome, state) in SILENT.items():
        item = items[device_id]
        assert (item.problem, item.outcome, item.device_state) == (problem, outcome, state)
    assert items["spk-a1b"].reason == items["spk-b1a"].reason == "unknown number"
    assert items["spk-a1b"].last_event == "failed" and items["spk-a1b"].attempts == 1
    assert items["spk-a1b"].last_seen is not None
    assert items["spk-b1a"].last_seen is None
    for tx in ("tx-a", "tx-a1"):
        assert items[tx].reason == "no acknowledgement in time"
        assert (items[tx].delivery_state, items[tx].attempts) == ("unacknowledged", 2)
        assert items[tx].last_seen is not None and items[tx].kind == "transmitter"
    # Where each is installed, by area then id.
    assert [i.device_id for i in report.maintenance] == ["tx-a", "tx-a1", "spk-a1b", "spk-b1a"]
    assert (items["spk-a1b"].area_code, items["spk-a1b"].area_name) == ("611002001002", "西村")
    assert items["spk-a1b"].adapter == "loudspeaker" and items["spk-a1b"].address == "spk-a1b"
    assert report.problems == {
        "offline": 1,
        "failing": 1,
        "no_ack": 2,
        "not_sent": 0,
        "waiting": 0,
    }

    # People: everyone with a phone answered the text but p02, whose number fails; nobody
    # was called (each call waited behind the person's text, which was answered).
    assert (report.people_targeted, report.acknowledged_people) == (7, 6)
    sms, voice = report.people_by_channel["sms"], report.people_by_channel["voice"]
    assert (sms.deliveries, sms.acknowledged, sms.failed, sms.not_confirmed) == (7, 6, 1, 1)
    assert (voice.deliveries, voice.unacknowledged, voice.skipped) == (5, 0, 5)
    assert voice.not_confirmed == 0
    assert sum(report.delivery_counts.values()) == 6 + 7 + 5


async def test_the_log_line_and_the_printed_report(tocsin: MakeTocsin) -> None:
    t = _rig(tocsin)
    warning_id = await _run_test_broadcast(t)
    report = await build_test_report(t.store, warning_id)

    line = format_test_report_log(report)
    assert "event" not in line  # it goes to log.info("…", **line)
    assert line["warning_id"] == warning_id and line["status"] == "Test"
    assert (line["devices_targeted"], line["devices_acknowledged"]) == (6, 2)
    assert line["devices_silent"] == 4
    assert (line["devices_offline"], line["devices_failing"], line["devices_no_ack"]) == (1, 1, 2)
    assert sorted(line["silent_devices"]) == sorted(SILENT)
    assert line["silent_devices_by_problem"] == {
        "failing": ["spk-b1a"],
        "no_ack": ["tx-a", "tx-a1"],
        "offline": ["spk-a1b"],
    }
    assert line["people_not_confirmed"] == {"sms": 1, "voice": 0}

    text = format_test_report(report_json(report))
    assert "6 targeted, 2 acknowledged, 4 silent (offline 1, failing 1, no_ack 2)" in text
    assert "people: 7 targeted, 6 acknowledged, 1 did not" in text
    rows = {line.split()[0]: line for line in text.splitlines()[-4:]}
    assert set(rows) == set(SILENT)
    assert "offline" in rows["spk-a1b"] and "unknown number" in rows["spk-a1b"]
    assert "never" in rows["spk-b1a"] and "failing" in rows["spk-b1a"]
    assert "no acknowledgement in time" in rows["tx-a"]


async def test_only_test_and_exercise_warnings_have_a_report(tocsin: MakeTocsin) -> None:
    t = _rig(tocsin)
    actual = await t.warn((CITY,), status=Status.ACTUAL)
    with pytest.raises(NotATestBroadcast, match="status Actual"):
        await build_test_report(t.store, actual.id)
    with pytest.raises(NoSuchWarning):
        await build_test_report(t.store, "no-such-warning")
    # A drill is reported on like a test; before the engine ran, nothing was sent.
    drill = await t.warn((CITY,), status=Status.EXERCISE)
    report = await build_test_report(t.store, drill.id)
    assert report.status is Status.EXERCISE and not report.complete
    assert {i.problem for i in report.maintenance} == {DeviceProblem.NOT_SENT}
    assert len(report.maintenance) == report.devices_targeted == 6
    assert report.people_by_channel["sms"].not_sent == 7


async def test_the_report_over_the_api(
    tocsin: MakeTocsin, aiohttp_client: Callable[..., Any]
) -> None:
    t = _rig(tocsin)
    warning_id = await _run_test_broadcast(t)
    actual = await t.warn((CITY,), status=Status.ACTUAL, plan=False)
    tokens = [
        ApiToken(f"desk-{role.value}", role, SecretStr(hash_token(token)), "p01")
        if role is ApiRole.GRID_MEMBER
        else ApiToken(f"desk-{role.value}", role, SecretStr(hash_token(token)))
        for role, token in TOKENS.items()
    ]
    app = create_app(
        ApiDeps(
            store=t.store,
            warnings=WarningService(
                t.store, CapConfig(sender="t@tocsin"), on_created=lambda _: None
            ),
            tokens=lambda: tokens,
            max_body_bytes=64 * 1024,
            ready=lambda: True,
            registry=CollectorRegistry(),
        )
    )
    client = await aiohttp_client(app)

    async def get(path: str, role: ApiRole = ApiRole.INSTALLER) -> tuple[int, str, Any]:
        headers = {"Authorization": f"Bearer {TOKENS[role]}"}
        async with client.get(path, headers=headers) as response:
            text = await response.text()
            body = await response.json() if response.content_type == "application/json" else text
            return response.status, response.headers.get("Content-Type", ""), body

    path = f"/v1/warnings/{warning_id}/test-report"
    status, _, body = await get(path)
    assert status == 200, body
    report: TestReport = await build_test_report(t.store, warning_id)
    expected = report_json(report)
    assert {k: v for k, v in body.items() if k != "as_of"} == {
        k: v for k, v in expected.items() if k != "as_of"
    }

    status, content_type, text = await get(f"{path}?format=csv", ApiRole.OPERATOR)
    assert status == 200 and content_type.startswith("text/csv")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert rows[0] == list(MAINTENANCE_CSV_COLUMNS)
    listed = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["device_id"] for r in listed] == [i["device_id"] for i in body["maintenance"]]
    for row, item in zip(listed, body["maintenance"], strict=True):
        assert row["problem"] == item["problem"]
        assert row["device_state"] == item["device_state"]
        assert unguard(row["reason"]) == item["reason"]
        assert int(row["attempts"]) == item["attempts"]
        assert row["last_seen"] == (item["last_seen"] or "")

    for role in (ApiRole.DUTY_OFFICER, ApiRole.OPERATOR, ApiRole.ADMIN):
        assert (await get(path, role))[0] == 200
    status, _, body = await get(path, ApiRole.GRID_MEMBER)
    assert status == 403 and body["error"]["code"] == "forbidden"

    status, _, body = await get(f"/v1/warnings/{actual.id}/test-report")
    assert status == 409, body
    assert body["error"]["code"] == "not_a_test"
    assert "status Actual" in body["error"]["message"]
    status, _, body = await get("/v1/warnings/nope/test-report")
    assert status == 404
    status, _, body = await get(f"{path}?format=xml")
    assert status == 400 and body["error"]["field"] == "format"
