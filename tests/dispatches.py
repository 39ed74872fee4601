"""Warnings and dispatches as adapter tests hand them to an adapter: one builder each, with
keyword-only overrides on defaults that make a plain, valid one, so a test names only what
matters to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatcher.adapter import Dispatch, WarningContent
from dispatcher.domain import PERSON_CHANNELS, Audience, Channel, Level, MsgType, Status

#: The text of a dispatch unless a test gives its own.
TEXT = "【红色预警】商州区暴雨红色预警。立即转移。"


def make_warning(
    *,
    wid: str = "w1",
    status: Status = Status.ACTUAL,
    msg_type: MsgType = MsgType.ALERT,
    level: Level = Level.RED,
    event: str = "暴雨",
    headline: str = "商州区暴雨红色预警",
    description: str = "",
    instruction: str = "立即转移",
    area_codes: tuple[str, ...] = ("6110",),
    sent: datetime | None = None,
    lasting: timedelta = timedelta(hours=2),
    expires: datetime | None = None,
    references: tuple[str, ...] = (),
) -> WarningContent:
    """An Actual red heavy-rain Alert for 商州区 (area 6110), sent now (to the second) and in
    force for ``lasting`` after it, unless ``expires`` says otherwise."""
    sent = sent or datetime.now(UTC).replace(microsecond=0)
    return WarningContent(
        id=wid,
        status=status,
        msg_type=msg_type,
        level=level,
        event=event,
        headline=headline,
        description=description,
        instruction=instruction,
        area_codes=area_codes,
        sent=sent,
        expires=expires or sent + lasting,
        references=references,
    )


def make_dispatch(
    *,
    channel: Channel,
    address: str,
    delivery_id: int = 1,
    warning: WarningContent | None = None,
    audience: Audience | None = None,
    target_id: str | None = None,
    area_code: str = "611002101201",
    attempt: int = 1,
    text: str = TEXT,
) -> Dispatch:
    """A first try of ``warning`` (by default :func:`make_warning`'s) to ``address`` on
    ``channel``: to a person on the person channels, else to a device; the target is named
    after the address unless ``target_id`` is given."""
    if audience is None:
        audience = Audience.PERSON if channel in PERSON_CHANNELS else Audience.DEVICE
    return Dispatch(
        delivery_id=delivery_id,
        warning=warning or make_warning(),
        channel=channel,
        audience=audience,
        target_id=address if target_id is None else target_id,
        address=address,
        area_code=area_code,
        attempt=attempt,
        text=text,
    )
