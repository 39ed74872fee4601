"""A warning's life over HTTP: posted as JSON or CAP, planned to the numbers the directory and
the policy call for, updated, cancelled, listed, exported as CAP; idempotent re-posts."""

from __future__ import annotations

from typing import Any

from api.harness import (
    COUNTY,
    OTHER_COUNTY,
    SENDER,
    TOKEN_NAMES,
    TOWN,
    VILLAGE,
    Api,
    cap_alert,
    cap_cancel,
    expected_red_plan,
    red_warning,
    total,
)
from dispatcher.cap import parse_cap
from dispatcher.config import ApiRole


async def test_json_post_is_accepted_and_planned_as_the_directory_says(api: Api) -> None:
    status, body, headers = await api.post_warning(red_warning())
    assert status == 202, body
    warning_id = body["id"]
    assert headers["Location"] == f"/v1/warnings/{warning_id}"
    assert body["sender"] == SENDER
    assert (body["status"], body["msg_type"], body["state"]) == ("Exercise", "Alert", "active")
    assert body["links"]["plan"] == f"/v1/warnings/{warning_id}/plan"
    assert "Idempotent-Replayed" not in headers

    plan = await api.planned(warning_id)
    expected = expected_red_plan(api, [COUNTY])
    assert plan["by_audience"] == expected
    assert plan["total"] == total(expected) > 0
    # The other county is untouched; the county row carries everything.
    codes = {area["code"]: area for area in plan["areas"]}
    assert OTHER_COUNTY not in codes
    assert codes[COUNTY]["total"] == plan["total"]
    assert {a["level"] for a in plan["areas"]} == {"province", "city", "county", "town", "village"}

    status, detail, _ = await api.call("GET", f"/v1/warnings/{warning_id}", role=ApiRole.INSTALLER)
    assert status == 200
    assert detail["plan_status"] == "planned"
    # A person's later ladder steps are planned held; nothing is sent before the engine runs.
    assert set(detail["delivery_counts"]) <= {"pending", "held"}
    assert sum(detail["delivery_counts"].values()) == plan["total"]
    assert detail["delivery_counts"]["pending"] > detail["delivery_counts"].get("held", 0)
    assert detail["created_by"] == TOKEN_NAMES[ApiRole.DUTY_OFFICER]
    assert detail["area_codes"] == [COUNTY]


async def test_plan_depth_limits_the_area_rows(api: Api) -> None:
    _, body, _ = await api.post_warning(red_warning(area_codes=[TOWN, VILLAGE]))
    await api.planned(body["id"])
    _, county_plan, _ = await api.call(
        "GET", f"/v1/warnings/{body['id']}/plan?depth=county", role=ApiRole.OPERATOR
    )
    assert {a["level"] for a in county_plan["areas"]} == {"province", "city", "county"}
    assert county_plan["by_audience"] == expected_red_plan(api, [TOWN])
    assert county_plan["depth"] == "county"


async def test_plan_while_pending_says_so(api: Api) -> None:
    await api.planner.stop()  # nothing gets planned now
    _, body, _ = await api.post_warning()
    status, plan, headers = await api.call("GET", f"/v1/warnings/{body['id']}/plan")
    assert status == 200
    assert (plan["planned"], plan["plan_status"], plan["total"]) == (False, "pending", 0)
    assert headers["Retry-After"] == "1"
    _, detail, _ = await api.call("GET", f"/v1/warnings/{body['id']}")
    assert detail["plan_status"] == "pending"
    assert detail["delivery_counts"] == {}


async def test_cap_post_is_accepted_and_planned(api: Api) -> None:
    xml = cap_alert("CAP-1", [COUNTY[:6], "611021101201"])
    status, body, headers = await api.call(
        "POST",
        "/v1/warnings",
        role=ApiRole.DUTY_OFFICER,
        data=xml,
        headers={"Content-Type": "application/cap+xml"},
    )
    assert status == 202, body
    assert headers["Location"] == f"/v1/warnings/{body['id']}"
    assert (body["identifier"], body["sender"]) == ("CAP-1", "cap-desk@test.tocsin")
    assert body["area_codes"] == [COUNTY, "611021101201"]
    plan = await api.planned(body["id"])
    assert plan["by_audience"] == expected_red_plan(api, [COUNTY, "611021101201"])

    # Plain XML media types are read as CAP too.
    status, body, _ = await api.call(
        "POST",
        "/v1/warnings",
        role=ApiRole.ADMIN,
        data=cap_alert("CAP-2", [VILLAGE]),
        headers={"Content-Type": "text/xml; charset=utf-8"},
    )
    assert status == 202, body


async def test_cap_update_and_cancel_by_references(api: Api) -> None:
    post = await api.call(
        "POST",
        "/v1/warnings",
        data=cap_alert("CAP-A", [COUNTY[:6]]),
        headers={"Content-Type": "application/cap+xml"},
    )
    first = post[1]
    reference = f"cap-desk@test.tocsin,CAP-A,{first['sent'].replace('+00:00', '-00:00')}"
    status, update, _ = await api.call(
        "POST",
        "/v1/warnings",
        data=cap_alert("CAP-B", [COUNTY[:6]], msg_type="Update", references=reference),
        headers={"Content-Type": "application/cap+xml"},
    )
    assert status == 202, update
    assert update["msg_type"] == "Update"
    _, old, _ = await api.call("GET", f"/v1/warnings/{first['id']}")
    assert old["state"] == "superseded"


async def test_cap_cancel_without_info_cancels_the_alert(api: Api) -> None:
    cap = {"Content-Type": "application/cap+xml"}
    _, alert, _ = await api.call(
        "POST", "/v1/warnings", data=cap_alert("CAP-C1", [COUNTY[:6]]), headers=cap
    )
    alert_plan = await api.planned(alert["id"])
    assert alert_plan["total"] > 0
    reference = f"cap-desk@test.tocsin,CAP-C1,{_cap_time(alert['sent'])}"
    status, cancel, headers = await api.call(
        "POST",
        "/v1/warnings",
        role=ApiRole.DUTY_OFFICER,
        data=cap_cancel("CAP-C2", reference, note="降雨已结束"),
        headers=cap,
    )
    assert status == 202, cancel
    assert headers["Location"] == f"/v1/warnings/{cancel['id']}"
    assert (cancel["msg_type"], cancel["status"]) == ("Cancel", "Exercise")
    # What the Cancel left out comes from the alert it cancels.
    assert (cancel["level"], cancel["event"], cancel["headline"]) == ("red", "暴雨", "暴雨预警")
    assert cancel["area_codes"] == [COUNTY]
    assert "ignored" not in cancel

    _, old, _ = await api.call("GET", f"/v1/warnings/{alert['id']}")
    assert old["state"] == "cancelled"
    assert old["delivery_counts"] == {"cancelled": alert_plan["total"]}
    cancel_plan = await api.planned(cancel["id"])
    assert cancel_plan["by_audience"] == expected_red_plan(api, [COUNTY], cancel=True)
    assert set(cancel_plan["by_audience"]) == {"device"}
    _, detail, _ = await api.call("GET", f"/v1/warnings/{cancel['id']}")
    assert detail["references"] == [reference]
    assert detail["note"] == "降雨已结束"
    _, audit, _ = await api.call("GET", "/v1/audit?limit=1")
    entry = audit["entries"][0]
    assert (entry["action"], entry["target"]) == ("warning.cancel", cancel["id"])
    assert entry["detail"]["cancels"] == [alert["id"]]

    # The alert is cancelled now: cancelling it again is refused.
    before = await api.table_counts()
    status, error, _ = await api.call(
        "POST", "/v1/warnings", data=cap_cancel("CAP-C3", reference), headers=cap
    )
    assert (status, error["error"]["code"]) == (409, "not_active")
    assert await api.table_counts() == before


async def test_json_cancel_with_only_references(api: Api) -> None:
    _, first, _ = await api.post_warning(red_warning(area_codes=[TOWN]))
    reference = f"{SENDER},{first['identifier']},{_cap_time(first['sent'])}"
    status, cancel, _ = await api.post_warning(
        {"msg_type": "Cancel", "status": "Exercise", "references": [reference]}
    )
    assert status == 202, cancel
    assert (cancel["msg_type"], cancel["level"], cancel["area_codes"]) == ("Cancel", "red", [TOWN])
    _, old, _ = await api.call("GET", f"/v1/warnings/{first['id']}")
    assert old["state"] == "cancelled"

    # Without references a Cancel names nothing to cancel; an Alert still needs its content.
    status, error, _ = await api.post_warning({"msg_type": "Cancel", "status": "Exercise"})
    assert (status, error["error"]["code"]) == (422, "missing_references")
    status, error, _ = await api.post_warning({"status": "Exercise", "references": [reference]})
    assert (status, error["error"]["code"], error["error"]["field"]) == (
        422,
        "validation_error",
        "level",
    )


async def test_cap_ignored_notes_reach_the_audit_log(api: Api) -> None:
    zip_code = "<geocode><valueName>ZIP</valueName><value>726000</value></geocode></area>"
    xml = cap_alert("CAP-N1", [COUNTY[:6]]).replace(b"</area>", zip_code.encode())
    status, body, _ = await api.call(
        "POST", "/v1/warnings", data=xml, headers={"Content-Type": "application/cap+xml"}
    )
    assert status == 202, body
    assert len(body["ignored"]) == 1
    assert "ZIP=726000" in body["ignored"][0]
    _, audit, _ = await api.call("GET", "/v1/audit?limit=1")
    entry = audit["entries"][0]
    assert (entry["action"], entry["target"]) == ("warning.alert", body["id"])
    assert entry["detail"]["cap_ignored"] == body["ignored"]

    # A JSON warning has nothing to note.
    _, json_body, _ = await api.post_warning()
    _, audit, _ = await api.call("GET", "/v1/audit?limit=1")
    assert audit["entries"][0]["target"] == json_body["id"]
    assert "cap_ignored" not in audit["entries"][0]["detail"]


async def test_idempotent_repost_returns_the_same_warning(api: Api) -> None:
    key = {"Idempotency-Key": "storm-2026-07-12-1"}
    body = red_warning()
    first = await api.post_warning(body, headers=key)
    before = await api.table_counts()
    again = await api.post_warning(body, headers=key)
    assert first[0] == again[0] == 202
    assert again[1]["id"] == first[1]["id"]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert again[2]["Location"] == first[2]["Location"]
    assert await api.table_counts() == before
    audit = api.sql("SELECT target FROM audit_log WHERE action = 'warning.alert'")
    assert audit == [(first[1]["id"],)]

    # Same key, different body: refused, nothing created.
    status, error, _ = await api.post_warning(red_warning(headline="另一个"), headers=key)
    assert status == 409
    assert error["error"]["code"] == "idempotency_key_reused"
    assert await api.table_counts() == before

    # The key belongs to the token: another token may use the same key for its own warning.
    status, other, _ = await api.post_warning(body, headers=key, role=ApiRole.ADMIN)
    assert status == 202
    assert other["id"] != first[1]["id"]


async def test_update_supersedes_the_old_warning_and_its_pending_deliveries(api: Api) -> None:
    _, first, _ = await api.post_warning(red_warning(area_codes=[COUNTY]))
    old_plan = await api.planned(first["id"])
    status, update, headers = await api.call(
        "POST",
        f"/v1/warnings/{first['id']}/update",
        role=ApiRole.DUTY_OFFICER,
        json={"level": "red", "headline": "升级：商州区暴雨红色预警", "area_codes": [TOWN]},
    )
    assert status == 202, update
    assert headers["Location"] == f"/v1/warnings/{update['id']}"
    assert update["msg_type"] == "Update"
    assert update["id"] != first["id"]

    _, old, _ = await api.call("GET", f"/v1/warnings/{first['id']}")
    assert old["state"] == "superseded"
    assert old["delivery_counts"] == {"superseded": old_plan["total"]}
    _, new, _ = await api.call("GET", f"/v1/warnings/{update['id']}")
    assert new["references"] == [f"{SENDER},{first['identifier']},{_cap_time(first['sent'])}"]
    assert new["headline"] == "升级：商州区暴雨红色预警"
    new_plan = await api.planned(update["id"])
    assert new_plan["by_audience"] == expected_red_plan(api, [TOWN])

    # The old warning is no longer active: a second update is refused.
    status, error, _ = await api.call(
        "POST", f"/v1/warnings/{first['id']}/update", json={"level": "orange"}
    )
    assert (status, error["error"]["code"]) == (409, "not_active")


async def test_cancel_stops_pending_deliveries_and_tells_the_devices(api: Api) -> None:
    _, first, _ = await api.post_warning(red_warning())
    old_plan = await api.planned(first["id"])
    status, cancel, _ = await api.call(
        "POST",
        f"/v1/warnings/{first['id']}/cancel",
        role=ApiRole.DUTY_OFFICER,
        json={"note": "降雨已结束"},
    )
    assert status == 202, cancel
    assert cancel["msg_type"] == "Cancel"
    _, old, _ = await api.call("GET", f"/v1/warnings/{first['id']}")
    assert old["state"] == "cancelled"
    assert old["delivery_counts"] == {"cancelled": old_plan["total"]}

    cancel_plan = await api.planned(cancel["id"])
    assert cancel_plan["by_audience"] == expected_red_plan(api, [COUNTY], cancel=True)
    assert set(cancel_plan["by_audience"]) == {"device"}
    _, new, _ = await api.call("GET", f"/v1/warnings/{cancel['id']}")
    assert new["references"] == [f"{SENDER},{first['identifier']},{_cap_time(first['sent'])}"]
    assert new["note"] == "降雨已结束"

    # Cancelling again: the warning is no longer active.
    before = await api.table_counts()
    status, error, _ = await api.call("POST", f"/v1/warnings/{first['id']}/cancel")
    assert (status, error["error"]["code"]) == (409, "not_active")
    assert await api.table_counts() == before


async def test_cancel_without_a_body_and_idempotent_replay(api: Api) -> None:
    _, first, _ = await api.post_warning()
    key = {"Idempotency-Key": "cancel-1"}
    status, cancel, _ = await api.call("POST", f"/v1/warnings/{first['id']}/cancel", headers=key)
    assert status == 202, cancel
    before = await api.table_counts()
    # The warning is cancelled now, yet the replay answers as the first time did.
    status, again, headers = await api.call(
        "POST", f"/v1/warnings/{first['id']}/cancel", headers=key
    )
    assert (status, again["id"], headers["Idempotent-Replayed"]) == (202, cancel["id"], "true")
    assert await api.table_counts() == before


async def test_update_replay_and_key_reuse_on_another_warning(api: Api) -> None:
    _, a, _ = await api.post_warning()
    _, b, _ = await api.post_warning()
    key = {"Idempotency-Key": "update-1"}
    change = {"headline": "更新"}
    path = f"/v1/warnings/{a['id']}/update"
    status, update, _ = await api.call("POST", path, json=change, headers=key)
    assert status == 202
    status, again, _ = await api.call("POST", path, json=change, headers=key)
    assert (status, again["id"]) == (202, update["id"])
    # The same key and body on another warning is another request: a conflict.
    status, error, _ = await api.call(
        "POST", f"/v1/warnings/{b['id']}/update", json=change, headers=key
    )
    assert (status, error["error"]["code"]) == (409, "idempotency_key_reused")


async def test_list_pages_newest_first_with_filters(api: Api) -> None:
    ids = []
    for n in range(7):
        status = "Test" if n % 3 == 0 else "Exercise"
        _, body, _ = await api.post_warning(red_warning(status=status, headline=f"第{n}号"))
        ids.append(body["id"])
    seen: list[str] = []
    path = "/v1/warnings?limit=3"
    while True:
        status, page, _ = await api.call("GET", path, role=ApiRole.OPERATOR)
        assert status == 200
        assert len(page["warnings"]) <= 3
        seen += [w["id"] for w in page["warnings"]]
        if page["next"] is None:
            break
        path = f"/v1/warnings?limit=3&before={page['next']}"
    assert seen == ids[::-1]

    _, tests, _ = await api.call("GET", "/v1/warnings?status=Test")
    assert [w["id"] for w in tests["warnings"]] == [ids[6], ids[3], ids[0]]
    await api.call("POST", f"/v1/warnings/{ids[0]}/cancel")
    _, cancelled, _ = await api.call("GET", "/v1/warnings?state=cancelled&status=Test")
    assert [w["id"] for w in cancelled["warnings"]] == [ids[0]]


async def test_cap_export_round_trips(api: Api) -> None:
    _, body, _ = await api.post_warning(red_warning(area_codes=[COUNTY, VILLAGE]))
    async with api.client.get(
        f"/v1/warnings/{body['id']}/cap", headers=api.auth(ApiRole.OPERATOR)
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/cap+xml"
        xml = await response.read()
    parsed = parse_cap(xml).warning
    assert parsed.identifier == body["identifier"]
    assert parsed.sender == SENDER
    assert parsed.level.value == "red"
    assert parsed.area_codes == [COUNTY, VILLAGE]
    assert parsed.status.value == "Exercise"


async def test_events_are_paged_by_id(api: Api) -> None:
    _, body, _ = await api.post_warning()
    await api.planned(body["id"])
    await api.call("POST", f"/v1/warnings/{body['id']}/cancel")
    path = f"/v1/warnings/{body['id']}/events"
    status, first, _ = await api.call("GET", f"{path}?limit=2", role=ApiRole.OPERATOR)
    assert status == 200
    assert [e["state"] for e in first["events"]] == ["received", "planned"]
    assert first["more"] is True
    _, rest, _ = await api.call("GET", f"{path}?after={first['last_id']}&limit=1000")
    states = [e["state"] for e in rest["events"]]
    assert states[-1] == "cancelled"
    assert (
        states.count("cancelled")
        == 1
        + api.sql(
            "SELECT count(*) FROM deliveries d JOIN warnings w ON w.seq = d.warning_seq "
            "WHERE w.id = ?",
            (body["id"],),
        )[0][0]
    )
    assert rest["more"] is False


async def test_audit_log_pages_for_admins(api: Api) -> None:
    for _ in range(3):
        await api.post_warning()
    status, page, _ = await api.call("GET", "/v1/audit?limit=2")
    assert status == 200
    assert [e["action"] for e in page["entries"]] == ["warning.alert", "warning.alert"]
    assert page["entries"][0]["principal"] == TOKEN_NAMES[ApiRole.DUTY_OFFICER]
    _, rest, _ = await api.call("GET", f"/v1/audit?before={page['next']}")
    assert len(rest["entries"]) == 1
    assert rest["next"] is None


async def test_directory_summary(api: Api) -> None:
    status, body, _ = await api.call("GET", "/v1/directory/summary", role=ApiRole.INSTALLER)
    assert status == 200
    expected: dict[str, Any] = {
        t: api.sql(f"SELECT count(*) FROM {t}")[0][0]
        for t in ("areas", "grids", "households", "persons", "devices")
    }
    assert body == {"counts": expected}


def _cap_time(iso: str) -> str:
    return iso.replace("+00:00", "-00:00")
