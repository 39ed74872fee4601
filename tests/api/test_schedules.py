"""Schedules over HTTP: added, listed with their next fire time, refused with the field named,
removed (not when they come from the config), run now (a Test warning planned by the
schedule's rules; idempotent; refused inside quiet hours unless forced), their runs listed
page by page, and every change in the audit log."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import pytest

from api.harness import COUNTY, OTHER_COUNTY, TOKEN_NAMES, Api, config_schedule, weekly_schedule
from dispatcher.config import ApiRole
from dispatcher.schedules.timing import SHANGHAI

DUTY = ApiRole.DUTY_OFFICER


async def _create(api: Api, **changes: Any) -> dict[str, Any]:
    status, body, headers = await api.call(
        "POST", "/v1/schedules", role=DUTY, json=weekly_schedule(**changes)
    )
    assert status == 201, body
    assert headers["Location"] == f"/v1/schedules/{body['id']}"
    return body  # type: ignore[no-any-return]


async def test_add_list_and_read_a_schedule(api: Api) -> None:
    body = await _create(api, quiet_hours="22:00-07:00", grace="30m")
    assert body["id"] == "weekly"
    assert (body["source"], body["status"], body["level"], body["enabled"]) == (
        "api",
        "Test",
        "blue",
        True,
    )
    assert body["timezone"] == "Asia/Shanghai"
    assert body["rules"] == [{"audience": "devices", "device_kinds": ["loudspeaker"]}]
    assert (body["grace"], body["expires_after"], body["report_after"]) == (1800.0, 7200.0, None)
    assert body["created_by"] == TOKEN_NAMES[DUTY]
    upcoming = datetime.fromisoformat(body["next_fire_at"])
    assert upcoming.utcoffset() is not None and upcoming.utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]
    assert (upcoming.strftime("%A %H:%M"), upcoming.astimezone(SHANGHAI).hour) == (
        "Monday 10:00",
        10,
    )

    status, listed, _ = await api.call("GET", "/v1/schedules", role=ApiRole.OPERATOR)
    assert status == 200
    assert [s["id"] for s in listed["schedules"]] == ["weekly"]
    status, one, _ = await api.call("GET", "/v1/schedules/weekly", role=ApiRole.INSTALLER)
    assert status == 200 and one == listed["schedules"][0]

    (entry, *_) = await api.store.list_audit(limit=1)
    assert (entry.action, entry.target, entry.principal) == (
        "schedule.create",
        "weekly",
        TOKEN_NAMES[DUTY],
    )
    assert entry.detail["cron"] == "0 10 * * 1"


async def test_an_id_is_made_up_when_none_is_given(api: Api) -> None:
    body = weekly_schedule()
    del body["id"]
    status, made, _ = await api.call("POST", "/v1/schedules", role=DUTY, json=body)
    assert status == 201, made
    assert made["id"].startswith("s-")


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"cron": "* 10 * * 1"}, "cron", "at most once an hour"),
        ({"cron": "0 10 * *"}, "cron", "5 fields"),
        ({"status": "Actual"}, "status", "'Test' or 'Exercise'"),
        ({"areas": ["123"]}, "areas[0]", "pattern"),
        ({"areas": []}, "areas", "at least 1"),
        ({"rules": [{"audience": "everyone", "channels": ["speaker"]}]}, "rules[0]", "devices"),
        (
            {
                "rules": [
                    {
                        "audience": "devices",
                        "device_kinds": ["loudspeaker"],
                        "fallback": {"audience": "village_cadres", "channels": ["voice"]},
                    }
                ]
            },
            "rules",
            "fallback",
        ),
        ({"quiet_hours": "22-07"}, "quiet_hours", "pattern"),
        ({"grace": "an hour"}, "grace", "not a duration"),
        ({"grace": 0}, "grace", "greater than 0"),
        ({"id": "Weekly Test"}, "id", "pattern"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
)
async def test_a_bad_schedule_names_the_field(
    api: Api, changes: dict[str, Any], field: str, words: str
) -> None:
    status, body, _ = await api.call(
        "POST", "/v1/schedules", role=DUTY, json=weekly_schedule(**changes)
    )
    assert status == 422, body
    assert body["error"]["code"] == "validation_error"
    assert body["error"]["field"] == field
    assert words in body["error"]["message"]


async def test_unknown_areas_and_taken_ids_are_refused(api: Api) -> None:
    status, body, _ = await api.call(
        "POST", "/v1/schedules", role=DUTY, json=weekly_schedule(areas=["611099000000"])
    )
    assert status == 422
    assert (body["error"]["code"], body["error"]["field"]) == ("unknown_area", "areas")
    await _create(api)
    status, body, _ = await api.call("POST", "/v1/schedules", role=DUTY, json=weekly_schedule())
    assert status == 409
    assert (body["error"]["code"], body["error"]["field"]) == ("schedule_exists", "id")


async def test_remove_an_api_schedule_but_not_a_config_one(api: Api) -> None:
    await _create(api, id="extra")
    status, body, _ = await api.call("DELETE", "/v1/schedules/extra", role=ApiRole.ADMIN)
    assert status == 200, body
    assert body["removed"] is True and body["id"] == "extra"
    status, body, _ = await api.call("GET", "/v1/schedules/extra")
    assert status == 404 and body["error"]["code"] == "not_found"
    (entry, *_) = await api.store.list_audit(limit=1)
    assert (entry.action, entry.target) == ("schedule.delete", "extra")
    # The id can be used again.
    await _create(api, id="extra")

    await config_schedule(api)
    status, body, _ = await api.call("DELETE", "/v1/schedules/weekly", role=ApiRole.ADMIN)
    assert status == 409
    assert body["error"]["code"] == "config_schedule"
    assert "config file" in body["error"]["message"]
    status, listed, _ = await api.call("GET", "/v1/schedules")
    assert {s["id"]: s["source"] for s in listed["schedules"]} == {
        "extra": "api",
        "weekly": "config",
    }


async def test_run_now_makes_a_test_warning_for_the_schedules_devices(api: Api) -> None:
    await _create(api, message="这是应急广播系统的例行测试")
    status, run, headers = await api.call("POST", "/v1/schedules/weekly/run", role=DUTY)
    assert status == 202, run
    assert (run["state"], run["kind"], run["schedule_id"]) == ("ran", "manual", "weekly")
    assert run["principal"] == TOKEN_NAMES[DUTY]
    assert headers["Location"] == f"/v1/warnings/{run['warning_id']}" == run["warning"]
    _, warning, _ = await api.call("GET", run["warning"])
    assert (warning["status"], warning["level"], warning["description"]) == (
        "Test",
        "blue",
        "这是应急广播系统的例行测试",
    )
    plan = await api.planned(run["warning_id"])
    # Blue texts grid members; this schedule reaches the county's loudspeakers only.
    speakers = api.sql(
        "SELECT count(*) FROM devices d WHERE d.kind = 'loudspeaker' AND EXISTS (SELECT 1 "
        "FROM device_areas da JOIN area_closure c ON c.descendant = da.area_code "
        "WHERE da.device_id = d.id AND c.ancestor = ?)",
        (COUNTY,),
    )[0][0]
    assert plan["by_audience"] == {"device": {"speaker": speakers}}
    assert OTHER_COUNTY not in {a["code"] for a in plan["areas"]}
    actions = [e.action for e in await api.store.list_audit(limit=2)]
    assert actions == ["schedule.run", "warning.alert"]

    status, page, _ = await api.call("GET", "/v1/schedules/weekly/runs", role=ApiRole.OPERATOR)
    assert status == 200
    assert [r["id"] for r in page["runs"]] == [run["id"]]
    assert page["next"] is None


async def test_run_now_is_idempotent_with_a_key(api: Api) -> None:
    await _create(api)
    key = {"Idempotency-Key": "drill-2026-1"}
    status, first, _ = await api.call("POST", "/v1/schedules/weekly/run", role=DUTY, headers=key)
    assert status == 202
    status, again, headers = await api.call(
        "POST", "/v1/schedules/weekly/run", role=DUTY, headers=key
    )
    assert status == 202
    assert again == first
    assert headers["Idempotent-Replayed"] == "true"
    assert api.sql("SELECT count(*) FROM schedule_runs") == [(1,)]
    assert api.sql("SELECT count(*) FROM warnings") == [(1,)]


async def test_run_now_in_quiet_hours_needs_force(api: Api) -> None:
    await _create(api, quiet_hours="00:00-23:59")
    status, body, _ = await api.call("POST", "/v1/schedules/weekly/run", role=DUTY)
    assert status == 409
    assert (body["error"]["code"], body["error"]["field"]) == ("quiet_hours", "force")
    assert "force=true" in body["error"]["message"]
    assert api.sql("SELECT count(*) FROM warnings") == [(0,)]
    status, body, _ = await api.call("POST", "/v1/schedules/weekly/run?force=true", role=DUTY)
    assert status == 202 and body["state"] == "ran"
    status, body, _ = await api.call("POST", "/v1/schedules/weekly/run?force=yes", role=DUTY)
    assert status == 400 and body["error"]["field"] == "force"


async def test_a_refused_run_is_recorded_failed(api: Api) -> None:
    await _create(api)
    # The directory lost the county since the schedule was added.
    conn = sqlite3.connect(api.db)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM areas WHERE code = ?", (COUNTY,))
        conn.commit()
    finally:
        conn.close()
    status, body, _ = await api.call("POST", "/v1/schedules/weekly/run", role=DUTY)
    assert status == 422, body
    assert (body["error"]["code"], body["error"]["field"]) == ("unknown_area", "areas")
    assert "recorded as failed run" in body["error"]["message"]
    _, runs, _ = await api.call("GET", "/v1/schedules/weekly/runs")
    (run,) = runs["runs"]
    assert (run["state"], run["warning_id"]) == ("failed", None)
    assert run["note"].startswith("unknown_area: ")


async def test_runs_are_paged_newest_first(api: Api) -> None:
    await _create(api)
    made = []
    for _ in range(3):
        status, run, _ = await api.call("POST", "/v1/schedules/weekly/run", role=DUTY)
        assert status == 202
        made.append(run["id"])
    status, page, _ = await api.call("GET", "/v1/schedules/weekly/runs?limit=2")
    assert status == 200
    assert [r["id"] for r in page["runs"]] == made[::-1][:2]
    assert page["next"] == page["runs"][-1]["fire_at"]
    status, rest, _ = await api.call(
        "GET", "/v1/schedules/weekly/runs", params={"limit": "2", "before": page["next"]}
    )
    assert status == 200
    assert [r["id"] for r in rest["runs"]] == [made[0]]
    assert rest["next"] is None
    status, body, _ = await api.call("GET", "/v1/schedules/weekly/runs?before=monday")
    assert status == 400 and body["error"]["field"] == "before"
    status, body, _ = await api.call("GET", "/v1/schedules/nope/runs")
    assert status == 404
