"""WarningService: acceptance rules that need the clock or the store, Update/Cancel resolution,
idempotency, audit — each rejection changes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from small_directory import CITY, COUNTY_A, VILLAGE_A1a, fill_small_directory

from dispatcher.config import ApiRole, CapConfig
from dispatcher.domain import Level, MsgType, Status, WarningState
from dispatcher.store.base import IdempotencyClaim
from dispatcher.store.sqlite import SqliteStore
from dispatcher.warning_input import CancelRequest, WarningChange, WarningInput, cap_reference
from dispatcher.warning_service import Principal, WarningRejected, WarningService

NOW = datetime(2026, 7, 12, 3, 0, tzinfo=UTC)
OFFICER = Principal("desk-1", ApiRole.DUTY_OFFICER)


class Harness:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.now = NOW.timestamp()
        self.queued: list[str] = []
        self.service = WarningService(
            store,
            CapConfig(sender="yjj@shangluo", default_expiry=3600, max_expiry=86400),
            on_created=self.queued.append,
            clock=lambda: self.now,
        )

    def counts(self) -> tuple[int, int, int]:
        conn = sqlite3.connect(self.store.path)
        try:
            return tuple(  # type: ignore[return-value]
                conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("warnings", "audit_log", "idempotency_keys")
            )
        finally:
            conn.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    db = tmp_path / "t.db"
    store = await SqliteStore.open(db)
    fill_small_directory(db)
    yield Harness(store)
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
