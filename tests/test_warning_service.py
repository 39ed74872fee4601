"""WarningService: acceptance rules that need the clock or the store, Update/Cancel resolution,
idempotency, audit — each rejection changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from small_directory import (
    CITY,
    COUNTY_A,
    COUNTY_B,
    VILLAGE_A1a,
    VILLAGE_A1b,
    fill_small_directory,
)
from stores import StoreTarget

from dispatcher.config import ApiRole, CapConfig
from dispatcher.domain import Level, MsgType, Status, WarningRecord, WarningState
from dispatcher.store.base import IdempotencyClaim
from dispatcher.store.sql_store import SqlStore
from dispatcher.warning_input import CancelRequest, WarningChange, WarningInput, cap_reference
from dispatcher.warning_service import Principal, WarningRejected, WarningService

NOW = datetime(2026, 7, 12, 3, 0, tzinfo=UTC)
OFFICER = Principal("desk-1", ApiRole.DUTY_OFFICER)


class Harness:
    def __init__(self, store: SqlStore, target: StoreTarget) -> None:
        self.store = store
        self.target = target
        self.now = NOW.timestamp()
        self.queued: list[str] = []
        self.service = WarningService(
            store,
            CapConfig(sender="yjj@shangluo", default_expiry=3600, max_expiry=86400),
            on_created=self.queued.append,
            clock=lambda: self.now,
        )

    def counts(self) -> tuple[int, int, int]:
        conn = self.target.connect()
        try:
            return tuple(  # type: ignore[return-value]
                int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("warnings", "audit_log", "idempotency_keys")
            )
        finally:
            conn.close()


@pytest.fixture
async def harness(store_target: StoreTarget) -> AsyncIterator[Harness]:
    store = await store_target.open()
    fill_small_directory(store_target)
    yield Harness(store, store_target)
    await store.close()


def _input(**changes: object) -> WarningInput:
    fields: dict[str, object] = {
        "level": "red",
        "event": "暴雨",
        "headline": "暴雨红色预警",
        "area_codes": ["611002"],
        "status": "Exercise",
    }
    fields.update(changes)
    return WarningInput.model_validate(fields)


async def test_accepted_warning_gets_defaults_audit_and_is_queued(harness: Harness) -> None:
    sub = await harness.service.submit(_input(), principal=OFFICER)
    assert sub.created
    warning = sub.warning
    assert warning.area_codes == (COUNTY_A,)  # 6-digit GB2260 normalised
    assert warning.area_desc == "商州区"  # named from the directory when not given
    assert warning.sender == "yjj@shangluo"
    assert warning.expires == NOW + timedelta(hours=1)
    assert warning.identifier.startswith("tocsin-")
    assert warning.created_by == "desk-1"
    assert harness.queued == [warning.id]
    audit = await harness.store.list_audit(limit=10)
    assert [(a.principal, a.role, a.action, a.target) for a in audit] == [
        ("desk-1", "duty_officer", "warning.alert", warning.id)
    ]
    assert audit[0].detail["areas"] == [COUNTY_A]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"expires": NOW - timedelta(seconds=1)}, "expired"),
        ({"expires": NOW + timedelta(days=2)}, "expiry_too_far"),
        ({"status": "Draft"}, "draft_not_dispatched"),
        ({"area_codes": ["611002", "619999000000"]}, "unknown_area"),
        ({"msg_type": "Cancel"}, "missing_references"),
        (
            {"msg_type": "Cancel", "level": None, "event": None, "headline": None},
            "missing_references",
        ),
        ({"msg_type": "Update", "references": ["sender,identifier"]}, "bad_reference"),
        (
            {"msg_type": "Cancel", "references": ["x@y,nope,2026-07-12T03:00:00+08:00"]},
            "unknown_reference",
        ),
    ],
)
async def test_rejections_change_nothing(
    harness: Harness, changes: dict[str, object], code: str
) -> None:
    before = harness.counts()
    with pytest.raises(WarningRejected) as info:
        await harness.service.submit(_input(**changes), principal=OFFICER)
    assert info.value.code == code
    assert info.value.message
    assert harness.counts() == before
    assert harness.queued == []


async def test_idempotency_key_replays_and_conflicts(harness: Harness) -> None:
    claim = IdempotencyClaim("desk-1", "key-1", "hash-a")
    first = await harness.service.submit(_input(), principal=OFFICER, idempotency=claim)
    again = await harness.service.submit(_input(), principal=OFFICER, idempotency=claim)
    assert again.warning.id == first.warning.id
    assert not again.created
    assert harness.counts() == (1, 1, 1)
    with pytest.raises(WarningRejected) as info:
        await harness.service.submit(
            _input(headline="其他"),
            principal=OFFICER,
            idempotency=IdempotencyClaim("desk-1", "key-1", "hash-b"),
        )
    assert (info.value.code, info.value.http_status) == ("idempotency_key_reused", 409)
    # The same key from another token is another request.
    other = await harness.service.submit(
        _input(),
        principal=Principal("desk-2", ApiRole.DUTY_OFFICER),
        idempotency=IdempotencyClaim("desk-2", "key-1", "hash-a"),
    )
    assert other.created and other.warning.id != first.warning.id


async def test_duplicate_sender_identifier_is_409(harness: Harness) -> None:
    await harness.service.submit(_input(identifier="SL-2026-001"), principal=OFFICER)
    with pytest.raises(WarningRejected) as info:
        await harness.service.submit(_input(identifier="SL-2026-001"), principal=OFFICER)
    assert (info.value.code, info.value.http_status) == ("duplicate_identifier", 409)


async def test_update_keeps_references_and_supersedes(harness: Harness) -> None:
    old = (await harness.service.submit(_input(), principal=OFFICER)).warning
    new = (
        await harness.service.update(
            old.id, WarningChange(level=Level.ORANGE, area_codes=[CITY]), principal=OFFICER
        )
    ).warning
    assert new.msg_type is MsgType.UPDATE
    assert new.level is Level.ORANGE
    assert new.headline == old.headline  # carried over
    assert new.references == (cap_reference(old.sender, old.identifier, old.sent),)
    stored_old = await harness.store.get_warning(old.id)
    assert stored_old is not None and stored_old.state is WarningState.SUPERSEDED
    with pytest.raises(WarningRejected) as info:
        await harness.service.update(old.id, WarningChange(), principal=OFFICER)
    assert (info.value.code, info.value.http_status) == ("not_active", 409)


async def test_cancel_by_reference_and_status_must_match(harness: Harness) -> None:
    actual = (
        await harness.service.submit(
            _input(status="Actual", area_codes=[VILLAGE_A1a]), principal=OFFICER
        )
    ).warning
    ref = cap_reference(actual.sender, actual.identifier, actual.sent)
    with pytest.raises(WarningRejected) as info:
        await harness.service.submit(
            _input(status="Exercise", msg_type="Cancel", references=[ref]), principal=OFFICER
        )
    assert info.value.code == "status_mismatch"
    cancel = await harness.service.cancel(actual.id, CancelRequest(note="解除"), principal=OFFICER)
    assert cancel.warning.msg_type is MsgType.CANCEL
    assert cancel.warning.status is Status.ACTUAL
    assert cancel.warning.note == "解除"
    stored = await harness.store.get_warning(actual.id)
    assert stored is not None and stored.state is WarningState.CANCELLED
    with pytest.raises(WarningRejected) as again:
        await harness.service.cancel(actual.id, CancelRequest(), principal=OFFICER)
    assert again.value.code == "not_active"


async def test_unknown_warning_is_404(harness: Harness) -> None:
    with pytest.raises(WarningRejected) as info:
        await harness.service.cancel("nope", CancelRequest(), principal=OFFICER)
    assert (info.value.code, info.value.http_status) == ("not_found", 404)


def _cancel(*references: str, **fields: object) -> WarningInput:
    """A Cancel as a CAP producer sends it without <info>: references, status, maybe a note."""
    return WarningInput.model_validate(
        {"msg_type": "Cancel", "status": "Exercise", "references": list(references), **fields}
    )


def _ref(warning: WarningRecord) -> str:
    return cap_reference(warning.sender, warning.identifier, warning.sent)


async def test_cancel_with_only_references_takes_the_cancelled_warnings_content(
    harness: Harness,
) -> None:
    alert = (
        await harness.service.submit(
            _input(
                area_codes=[VILLAGE_A1a],
                area_desc="东村",
                description="预计有强降水",
                instruction="请转移",
                urgency="Expected",
                category="Geo",
                language="zh-TW",
                audio_url="https://audio.tocsin.example/a.mp3",
                expires=NOW + timedelta(hours=3),
            ),
            principal=OFFICER,
        )
    ).warning
    harness.now += 600
    sub = await harness.service.submit(_cancel(_ref(alert), note="解除"), principal=OFFICER)
    assert sub.created
    cancel = sub.warning
    assert (cancel.msg_type, cancel.status, cancel.note) == (
        MsgType.CANCEL,
        Status.EXERCISE,
        "解除",
    )
    assert cancel.references == (_ref(alert),)
    assert (cancel.level, cancel.event, cancel.headline) == (Level.RED, "暴雨", "暴雨红色预警")
    assert (cancel.description, cancel.instruction) == ("预计有强降水", "请转移")
    assert cancel.area_codes == (VILLAGE_A1a,)
    assert cancel.area_desc == "东村"
    assert (cancel.urgency, cancel.certainty, cancel.category, cancel.language) == (
        "Expected",
        "Likely",
        "Geo",
        "zh-TW",
    )
    assert cancel.audio_url is None  # a Cancel never plays the warning's message
    assert cancel.expires == alert.expires  # later than now + 30 min

    stored = await harness.store.get_warning(alert.id)
    assert stored is not None and stored.state is WarningState.CANCELLED
    assert harness.queued == [alert.id, cancel.id]
    audit = await harness.store.list_audit(limit=10)
    assert [(a.action, a.target) for a in audit] == [
        ("warning.cancel", cancel.id),
        ("warning.alert", alert.id),
    ]
    assert audit[0].detail["cancels"] == [alert.id]
    assert audit[0].detail["level"] == "red"
    assert audit[0].detail["areas"] == [VILLAGE_A1a]
    assert "cap_ignored" not in audit[0].detail


async def test_cancel_of_several_warnings_covers_all_their_areas(harness: Harness) -> None:
    first = (
        await harness.service.submit(
            _input(level="orange", area_codes=[VILLAGE_A1a, VILLAGE_A1b], area_desc="东村、西村"),
            principal=OFFICER,
        )
    ).warning
    second = (
        await harness.service.submit(
            _input(
                level="red",
                headline="另一个",
                area_codes=[COUNTY_B, VILLAGE_A1b],
                area_desc="洛南县",
                expires=NOW + timedelta(hours=5),
            ),
            principal=OFFICER,
        )
    ).warning
    cancel = (
        await harness.service.submit(_cancel(_ref(first), _ref(second)), principal=OFFICER)
    ).warning
    # Level and texts from the first reference, areas from both, expiry the latest.
    assert (cancel.level, cancel.headline) == (Level.ORANGE, "暴雨红色预警")
    assert cancel.area_codes == (VILLAGE_A1a, VILLAGE_A1b, COUNTY_B)
    assert cancel.area_desc == "东村、西村; 洛南县"
    assert cancel.expires == second.expires
    for warning in (first, second):
        stored = await harness.store.get_warning(warning.id)
        assert stored is not None and stored.state is WarningState.CANCELLED
    audit = await harness.store.list_audit(limit=1)
    assert audit[0].detail["cancels"] == [first.id, second.id]


async def test_cancel_keeps_what_it_gives_and_outlives_a_warning_about_to_expire(
    harness: Harness,
) -> None:
    alert = (
        await harness.service.submit(
            _input(area_codes=[VILLAGE_A1a], expires=NOW + timedelta(minutes=10)),
            principal=OFFICER,
        )
    ).warning
    cancel = (
        await harness.service.submit(
            _cancel(_ref(alert), headline="解除暴雨预警", description=""), principal=OFFICER
        )
    ).warning
    assert cancel.headline == "解除暴雨预警"
    assert cancel.description == ""
    assert cancel.event == "暴雨"
    assert cancel.expires == NOW + timedelta(minutes=30)


async def test_cancel_default_expiry_stays_within_max_expiry(harness: Harness) -> None:
    alert = (
        await harness.service.submit(_input(expires=NOW + timedelta(hours=20)), principal=OFFICER)
    ).warning
    # max_expiry lowered since the warning was accepted: the Cancel is not refused for it.
    stricter = WarningService(
        harness.store,
        CapConfig(sender="yjj@shangluo", default_expiry=600, max_expiry=3600),
        on_created=harness.queued.append,
        clock=lambda: harness.now,
    )
    cancel = (await stricter.submit(_cancel(_ref(alert)), principal=OFFICER)).warning
    assert cancel.expires == NOW + timedelta(hours=1)


async def test_info_less_cancel_keeps_the_reference_checks(harness: Harness) -> None:
    actual = (await harness.service.submit(_input(status="Actual"), principal=OFFICER)).warning
    before = harness.counts()
    with pytest.raises(WarningRejected) as mismatch:
        await harness.service.submit(_cancel(_ref(actual)), principal=OFFICER)  # an Exercise
    assert mismatch.value.code == "status_mismatch"
    with pytest.raises(WarningRejected) as unknown:
        await harness.service.submit(
            _cancel("yjj@shangluo,nope,2026-07-12T03:00:00-00:00"), principal=OFFICER
        )
    assert unknown.value.code == "unknown_reference"
    with pytest.raises(WarningRejected) as none:
        await harness.service.submit(_cancel(), principal=OFFICER)
    assert none.value.code == "missing_references"
    assert harness.counts() == before

    await harness.service.submit(_cancel(_ref(actual), status="Actual"), principal=OFFICER)
    with pytest.raises(WarningRejected) as again:
        await harness.service.submit(_cancel(_ref(actual), status="Actual"), principal=OFFICER)
    assert (again.value.code, again.value.http_status) == ("not_active", 409)


@pytest.mark.parametrize("msg_type", ["Alert", "Update"])
def test_only_a_cancel_may_leave_out_the_content(msg_type: str) -> None:
    with pytest.raises(ValidationError) as info:
        WarningInput.model_validate(
            {"msg_type": msg_type, "references": ["a,b,c"], "level": None, "headline": "x" * 201}
        )
    errors = info.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [
        (("level",), "missing"),
        (("event",), "missing"),
        (("headline",), "string_too_long"),
        (("area_codes",), "missing"),
    ]
    assert errors[0]["msg"] == "Field required"
    cancel = WarningInput.model_validate({"msg_type": "Cancel", "references": ["a,b,c"]})
    assert cancel.level is None and cancel.area_codes is None


async def test_notes_go_into_the_audit_entry(harness: Harness) -> None:
    notes = ("<info> in language en-US (line 10)", "geocode ZIP=726000 of '东村'")
    warning = (await harness.service.submit(_input(), principal=OFFICER, notes=notes)).warning
    audit = await harness.store.list_audit(limit=1)
    assert audit[0].target == warning.id
    assert audit[0].detail["cap_ignored"] == list(notes)
