"""Accepting warnings: checks that need the store or the clock, Update/Cancel resolution,
idempotency and the audit trail. Used by the HTTP API and the CLI alike."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from dispatcher.config import ApiRole, CapConfig
from dispatcher.domain import MsgType, Status, WarningRecord, WarningState
from dispatcher.policy import PolicyRule, plan_rules_json
from dispatcher.store.base import (
    CreateResult,
    DuplicateWarning,
    IdempotencyClaim,
    IdempotencyConflict,
    Store,
)
from dispatcher.warning_input import (
    INFO_REQUIRED,
    CancelRequest,
    Category,
    Certainty,
    Urgency,
    WarningChange,
    WarningInput,
    cap_reference,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: A Cancel must still reach the devices when the warning it cancels is about to expire.
CANCEL_MIN_LIFETIME = timedelta(minutes=30)
_AREA_DESC_LIMIT = 1000  # WarningInput.area_desc


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: an API token's name and role, or the local CLI user."""

    name: str
    role: ApiRole
    #: The directory person behind a grid_member token.
    person_id: str | None = None


class WarningRejected(Exception):
    """A request that is understood but cannot be accepted; nothing was changed."""

    def __init__(
        self, code: str, message: str, *, http_status: int = 422, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.field = field


@dataclass(frozen=True, slots=True)
class Submission:
    warning: WarningRecord
    created: bool


class WarningService:
    def __init__(
        self,
        store: Store,
        cap: CapConfig,
        *,
        on_created: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._cap = cap
        self._on_created = on_created
        self._clock = clock

    async def submit(
        self,
        data: WarningInput,
        *,
        principal: Principal,
        idempotency: IdempotencyClaim | None = None,
        notes: Sequence[str] = (),
        plan_rules: tuple[PolicyRule, ...] | None = None,
    ) -> Submission:
        """Validate and store a new warning (Alert, Update or Cancel) and queue its plan.

        A Cancel may leave out the warning's content (a CAP Cancel without ``<info>``): what it
        omits is taken from the warnings it references, see :func:`_complete_cancel`.
        ``notes`` (what the CAP parser read past) go into the audit entry as ``cap_ignored``.
        ``plan_rules`` replace the level policy's rules when the warning is planned (a
        scheduled Test or Exercise, never an Actual warning); an Update or Cancel of such a
        warning keeps its rules, so it reaches (and stops) the same devices and people."""
        replayed = await self._replayed(idempotency)
        if replayed is not None:
            return replayed
        now = self._clock()
        now_dt = datetime.fromtimestamp(now, UTC)
        if data.status is Status.DRAFT:
            raise WarningRejected(
                "draft_not_dispatched", "Draft messages are not dispatched", field="status"
            )

        # References first: a Cancel's level, areas and expiry may come from its targets.
        targets: list[WarningRecord] = []
        if data.msg_type is not MsgType.ALERT:
            targets = await self._resolve_references(data)
        if data.msg_type is MsgType.CANCEL:
            latest_allowed = now_dt + timedelta(seconds=self._cap.max_expiry)
            data = _complete_cancel(data, targets, now_dt, latest_allowed)
        if plan_rules is not None and data.status not in (Status.TEST, Status.EXERCISE):
            raise WarningRejected(
                "plan_rules_not_allowed",
                "only a Test or Exercise warning may carry its own plan rules",
                field="status",
            )
        rules_json = plan_rules_json(plan_rules) if plan_rules is not None else None
        if rules_json is None and targets:
            rules_json = targets[0].plan_rules
        supersedes = [t.id for t in targets] if data.msg_type is MsgType.UPDATE else []
        cancels = [t.id for t in targets] if data.msg_type is MsgType.CANCEL else []

        expires = data.expires or (now_dt + timedelta(seconds=self._cap.default_expiry)).replace(
            microsecond=0
        )
        if expires <= now_dt:
            raise WarningRejected(
                "expired", f"expires {expires.isoformat()} is in the past", field="expires"
            )
        if (expires - now_dt).total_seconds() > self._cap.max_expiry:
            raise WarningRejected(
                "expiry_too_far",
                f"expires is more than {self._cap.max_expiry / 86400:g} days away",
                field="expires",
            )
        area_codes = _present(data.area_codes, "area_codes")
        unknown = await self._store.unknown_area_codes(area_codes)
        if unknown:
            shown = ", ".join(unknown[:20]) + (" …" if len(unknown) > 20 else "")
            raise WarningRejected(
                "unknown_area", f"unknown area code(s): {shown}", field="area_codes"
            )

        warning = WarningRecord(
            id=uuid.uuid4().hex,
            identifier=data.identifier or f"tocsin-{uuid.uuid4()}",
            sender=data.sender or self._cap.sender,
            sent=data.sent or now_dt.replace(microsecond=0),
            status=data.status,
            msg_type=data.msg_type,
            level=_present(data.level, "level"),
            event=_present(data.event, "event"),
            headline=_present(data.headline, "headline"),
            description=data.description,
            instruction=data.instruction,
            area_codes=tuple(dict.fromkeys(area_codes)),
            area_desc=data.area_desc or await self._area_names(area_codes),
            expires=expires,
            urgency=data.urgency.value,
            certainty=data.certainty.value,
            category=data.category.value,
            language=data.language,
            references=tuple(data.references),
            note=data.note,
            audio_url=data.audio_url,
            audio_sha256=data.audio_sha256,
            state=WarningState.ACTIVE,
            created_by=principal.name,
            plan_rules=rules_json,
        )
        try:
            result: CreateResult = await self._store.create_warning(
                warning,
                idempotency=idempotency,
                supersedes=supersedes,
                cancels=cancels,
                now=now,
            )
        except IdempotencyConflict as exc:
            raise _key_reused(exc) from None
        except DuplicateWarning as exc:
            raise WarningRejected(
                "duplicate_identifier",
                f"sender {warning.sender} already sent identifier {warning.identifier} "
                f"(warning {exc.warning_id})",
                http_status=409,
                field="identifier",
            ) from None

        if not result.created:
            existing = await self._store.get_warning(result.warning_id)
            if existing is None:  # idempotency rows reference stored warnings
                raise RuntimeError(f"idempotency key points at missing {result.warning_id}")
            return Submission(existing, created=False)

        await self._store.append_audit(
            principal=principal.name,
            role=principal.role.value,
            action=f"warning.{warning.msg_type.value.lower()}",
            target=warning.id,
            detail=_audit_detail(warning, supersedes, cancels, notes),
        )
        log.info(
            "warning accepted",
            warning_id=warning.id,
            msg_type=warning.msg_type.value,
            status=warning.status.value,
            warning_level=warning.level.value,
            areas=len(warning.area_codes),
            principal=principal.name,
        )
        self._on_created(warning.id)
        return Submission(warning, created=True)

    async def update(
        self,
        warning_id: str,
        change: WarningChange,
        *,
        principal: Principal,
        idempotency: IdempotencyClaim | None = None,
    ) -> Submission:
        replayed = await self._replayed(idempotency)
        if replayed is not None:
            return replayed
        old = await self._active_warning(warning_id)
        fields = change.model_dump(exclude_none=True)
        data = WarningInput(
            level=fields.get("level", old.level),
            event=fields.get("event", old.event),
            headline=fields.get("headline", old.headline),
            description=fields.get("description", old.description),
            instruction=fields.get("instruction", old.instruction),
            area_codes=fields.get("area_codes", list(old.area_codes)),
            area_desc=fields.get("area_desc", old.area_desc),
            expires=fields.get("expires", old.expires),
            urgency=fields.get("urgency", Urgency(old.urgency)),
            certainty=fields.get("certainty", Certainty(old.certainty)),
            category=Category(old.category),
            language=old.language,
            note=fields.get("note", ""),
            status=old.status,
            msg_type=MsgType.UPDATE,
            references=[cap_reference(old.sender, old.identifier, old.sent)],
            audio_url=old.audio_url,
            audio_sha256=old.audio_sha256,
        )
        return await self.submit(data, principal=principal, idempotency=idempotency)

    async def cancel(
        self,
        warning_id: str,
        request: CancelRequest,
        *,
        principal: Principal,
        idempotency: IdempotencyClaim | None = None,
    ) -> Submission:
        replayed = await self._replayed(idempotency)
        if replayed is not None:
            return replayed
        old = await self._active_warning(warning_id)
        # Only the reference: submit takes the content and expiry from the warning itself.
        data = WarningInput(
            note=request.note,
            status=old.status,
            msg_type=MsgType.CANCEL,
            references=[cap_reference(old.sender, old.identifier, old.sent)],
        )
        return await self.submit(data, principal=principal, idempotency=idempotency)

    async def _replayed(self, idempotency: IdempotencyClaim | None) -> Submission | None:
        """The warning an earlier request with this key created. Looked up before any other
        check, so a replay answers the same after that warning (or the one it replaced) was
        superseded, cancelled or expired; create_warning checks again for concurrent twins."""
        if idempotency is None:
            return None
        try:
            warning_id = await self._store.idempotent_warning_id(idempotency)
        except IdempotencyConflict as exc:
            raise _key_reused(exc) from None
        if warning_id is None:
            return None
        existing = await self._store.get_warning(warning_id)
        if existing is None:  # idempotency rows reference stored warnings
            raise RuntimeError(f"idempotency key points at missing {warning_id}")
        return Submission(existing, created=False)

    async def _area_names(self, codes: Sequence[str]) -> str:
        """The areas' names (e.g. "商州区、洛南县"), for a warning posted without areaDesc."""
        wanted = set(codes)
        areas = await self._store.areas_with_ancestors(list(codes))
        by_code = {a.code: a.name for a in areas if a.code in wanted}
        return "、".join(by_code.get(code, code) for code in codes)[:_AREA_DESC_LIMIT]

    async def _active_warning(self, warning_id: str) -> WarningRecord:
        old = await self._store.get_warning(warning_id)
        if old is None:
            raise WarningRejected("not_found", f"no warning {warning_id}", http_status=404)
        if old.state is not WarningState.ACTIVE:
            raise WarningRejected(
                "not_active",
                f"warning {warning_id} is {old.state.value}; only an active warning can be "
                "updated or cancelled",
                http_status=409,
            )
        return old

    async def _resolve_references(self, data: WarningInput) -> list[WarningRecord]:
        kind = data.msg_type.value
        if not data.references:
            raise WarningRejected(
                "missing_references",
                f"an {kind} must reference the warning it changes",
                field="references",
            )
        found: list[WarningRecord] = []
        for ref in data.references:
            parts = ref.split(",")
            if len(parts) != 3 or not all(parts):
                raise WarningRejected(
                    "bad_reference",
                    f"reference {ref!r} is not 'sender,identifier,sent'",
                    field="references",
                )
            target = await self._store.find_warning(parts[0], parts[1])
            if target is None:
                raise WarningRejected(
                    "unknown_reference",
                    f"{kind} references {parts[1]} from {parts[0]}, which Tocsin never received",
                    field="references",
                )
            if target.status is not data.status:
                raise WarningRejected(
                    "status_mismatch",
                    f"a {data.status.value} {kind} cannot change a {target.status.value} warning",
                    field="status",
                )
            if target.state is not WarningState.ACTIVE:
                raise WarningRejected(
                    "not_active",
                    f"referenced warning {target.id} is {target.state.value}",
                    http_status=409,
                    field="references",
                )
            found.append(target)
        return found


def _key_reused(exc: IdempotencyConflict) -> WarningRejected:
    return WarningRejected(
        "idempotency_key_reused",
        "this Idempotency-Key was already used with a different request body "
        f"(warning {exc.warning_id})",
        http_status=409,
    )


def _complete_cancel(
    data: WarningInput,
    cancelled: Sequence[WarningRecord],
    now_dt: datetime,
    latest_allowed: datetime,
) -> WarningInput:
    """A Cancel with what it left out taken from the warnings it cancels: level, texts and the
    other CAP fields from the first reference, the area codes (and descriptions) of all of
    them. Without an expiry it lasts until the latest of them expires, and at least
    :data:`CANCEL_MIN_LIFETIME`, so the devices hear it even when the warning is about to
    expire — but never past ``latest_allowed`` (cap.max_expiry), which would refuse it.
    Audio is never carried over: a Cancel must not play the warning's message."""
    if not cancelled:  # _resolve_references refuses a Cancel without references
        return data
    first = cancelled[0]
    inherited: dict[str, Any] = {
        "level": first.level,
        "event": first.event,
        "headline": first.headline,
        "description": first.description,
        "instruction": first.instruction,
        "area_codes": list(dict.fromkeys(code for w in cancelled for code in w.area_codes)),
        "area_desc": _joined_area_desc(cancelled),
        "urgency": Urgency(first.urgency),
        "certainty": Certainty(first.certainty),
        "category": Category(first.category),
        "language": first.language,
    }
    given = data.model_fields_set
    update = {
        name: value
        for name, value in inherited.items()
        # The required fields may also have been sent as null.
        if name not in given or (name in INFO_REQUIRED and getattr(data, name) is None)
    }
    if data.expires is None:
        latest = max(w.expires for w in cancelled)
        update["expires"] = min(max(latest, now_dt + CANCEL_MIN_LIFETIME), latest_allowed)
    return data.model_copy(update=update)


def _joined_area_desc(warnings: Sequence[WarningRecord]) -> str:
    descriptions = list(dict.fromkeys(w.area_desc for w in warnings if w.area_desc))
    joined = "; ".join(descriptions)
    if len(joined) > _AREA_DESC_LIMIT:
        joined = joined[: _AREA_DESC_LIMIT - 1] + "…"
    return joined


def _present(value: T | None, name: str) -> T:
    """A field WarningInput requires of every message but a Cancel, and that a Cancel has
    once :func:`_complete_cancel` filled it."""
    if value is None:
        raise RuntimeError(f"{name} is missing from an accepted {WarningInput.__name__}")
    return value


def _audit_detail(
    warning: WarningRecord, supersedes: list[str], cancels: list[str], notes: Sequence[str]
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "identifier": warning.identifier,
        "status": warning.status.value,
        "level": warning.level.value,
        "event": warning.event,
        "areas": list(warning.area_codes),
        "expires": warning.expires.isoformat(),
        "supersedes": supersedes,
        "cancels": cancels,
    }
    if notes:
        # What the CAP parser read past (other-language <info>, polygons, …).
        detail["cap_ignored"] = list(notes)
    if warning.plan_rules is not None:
        detail["plan_rules"] = json.loads(warning.plan_rules)
    return detail
