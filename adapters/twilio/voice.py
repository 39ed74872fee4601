"""The ``twilio_voice`` adapter: a call reads the warning in Mandarin and asks for a key press.

Each call is created with inline TwiML: ``<Gather numDigits="1">`` around the warning read
``repeat`` times, whose action (``…/hooks/<name>/gather?d=<delivery id>``) receives the key. ``1``
acknowledges; another key is asked again once. The call's final status callback
(``…/call-status?d=…``) marks it delivered (answered, with its duration) or failed (busy, no
answer, failed with Twilio's error code; busy and no answer are retried). New calls keep to the
account's calls per second and a cap on calls in progress, both before calling."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import structlog
from aiohttp import web
from twilio.twiml.voice_response import VoiceResponse

from adapters.twilio.base import TwilioAdapterBase
from adapters.twilio.client import call_twilio
from adapters.twilio.errors import delivery_error
from adapters.twilio.pacing import CallSlots
from adapters.twilio.settings import TwilioVoiceSettings
from adapters.twilio.webhooks import delivery_id_of, error_code_of, twiml
from dispatcher.adapter import (
    Accepted,
    Dispatch,
    Failed,
    Outcome,
    Report,
    ReportState,
    Retry,
    SendRate,
    WebhookRoute,
)
from dispatcher.domain import Channel

log = structlog.get_logger(__name__)

#: Final call statuses: the call's slot is free again.
_FINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
#: Not answered: worth calling again later.
_NOT_ANSWERED = {"busy": "the line was busy", "no-answer": "no answer", "canceled": "cancelled"}
CONFIRMED = "已确认收到，谢谢。"
PRESS_ONE = "确认收到请按1。"
NO_KEY = "未收到按键，再见。"
#: Longest call (seconds): the reading twice and the key press fit well within it.
TIME_LIMIT = 300


class TwilioVoiceAdapter(TwilioAdapterBase):
    kind: ClassVar[str] = "twilio_voice"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.VOICE})
    settings_model: ClassVar[type[TwilioVoiceSettings]] = TwilioVoiceSettings
    max_batch: ClassVar[int] = 50
    description: ClassVar[str] = (
        "Voice calls through Twilio: the warning read twice in Mandarin, press 1 to confirm"
    )

    def __init__(self, *, name: str, settings: TwilioVoiceSettings) -> None:
        super().__init__(name=name, settings=settings)
        self.settings = settings
        self.slots = CallSlots(settings.max_concurrent_calls, timeout=settings.call_slot_timeout)
        self._status_url = settings.hook_url(name, "call-status")
        self._gather_url = settings.hook_url(name, "gather")

    # -- pacing -----------------------------------------------------------------------------
    def send_rate(self) -> SendRate:
        return SendRate(self.settings.calls_per_second, 1)

    def room(self) -> int | None:
        return self.slots.free()

    def _numbers_to_check(self) -> Sequence[str]:
        return self.settings.callers

    # -- the call ---------------------------------------------------------------------------
    def _say(self, node: Any, text: str) -> None:
        node.say(text, language=self.settings.language, voice=self.settings.voice)

    def call_twiml(self, text: str, delivery_id: int) -> str:
        spoken = _for_speech(text)
        response = VoiceResponse()
        gather = response.gather(
            num_digits=1,
            action=_with_delivery(self._gather_url, delivery_id, prompt=1),
            method="POST",
            timeout=self.settings.gather_timeout,
        )
        for _ in range(self.settings.repeat):
            self._say(gather, spoken)
            gather.pause(length=1)
        # Reached only when no key was pressed: the call ends; the ladder decides what next.
        self._say(response, NO_KEY)
        response.hangup()
        return str(response)

    def _caller(self, recipient: str) -> str:
        callers = self.settings.callers
        return callers[zlib.crc32(recipient.encode()) % len(callers)]

    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        self._require_client()
        return await asyncio.gather(*(self._call(d) for d in batch))

    async def _call(self, dispatch: Dispatch) -> Outcome:
        client = self._require_client()
        if not self.slots.reserve():
            # room() keeps the engine from handing more calls than slots; this is a race.
            return Retry(f"{self.slots.limit} calls in progress (max_concurrent_calls)", after=5.0)
        caller = self._caller(dispatch.address)
        args: dict[str, Any] = {
            "to": dispatch.address,
            "from_": caller,
            "twiml": self.call_twiml(dispatch.text, dispatch.delivery_id),
            "status_callback": _with_delivery(self._status_url, dispatch.delivery_id),
            "status_callback_method": "POST",
            "status_callback_event": ["completed"],
            "timeout": self.settings.ring_timeout,
            "time_limit": TIME_LIMIT,
        }
        sid: str | None = None
        try:
            async with self._requests:
                result = await call_twilio(
                    lambda: client.calls.create_async(**args), seconds=self._account.request_timeout
                )
            if isinstance(result, (Retry, Failed)):
                return result
            sid = result.sid
            return Accepted(
                reference=sid or "",
                detail={"sid": sid, "from": caller, "status": result.status},
            )
        finally:
            self.slots.started(sid)

    async def poll_status(self, reference: str) -> Report | None:
        client = self._require_client()
        async with self._requests:
            result = await call_twilio(
                lambda: client.calls(reference).fetch_async(), seconds=self._account.request_timeout
            )
        if isinstance(result, (Retry, Failed)):
            return None
        params = {
            "CallSid": reference,
            "CallStatus": result.status or "",
            "CallDuration": str(result.duration or ""),
            "To": result.to or "",
        }
        return self._call_report(None, params)

    # -- webhooks ---------------------------------------------------------------------------
    def webhooks(self) -> Sequence[WebhookRoute]:
        return (
            WebhookRoute("POST", "call-status", self._on_call_status),
            WebhookRoute("POST", "gather", self._on_gather),
        )

    async def _on_call_status(self, request: web.Request) -> web.StreamResponse:
        context, params = await self._signed(request)
        status = params.get("CallStatus", "")
        sid = params.get("CallSid", "")
        if status in _FINAL and sid:
            self.slots.ended(sid)
        report = self._call_report(delivery_id_of(request), params)
        if report is not None:
            context.report(report)
        return web.Response(status=204)

    def _call_report(self, delivery_id: int | None, params: Mapping[str, str]) -> Report | None:
        status = params.get("CallStatus", "")
        sid = params.get("CallSid", "")
        if status not in _FINAL or not sid:
            return None
        to = params.get("To") or None
        detail: dict[str, Any] = {"sid": sid, "status": status}
        duration = params.get("CallDuration", "")
        if duration.isdigit():
            detail["duration"] = int(duration)
        if status == "completed":
            # Answered and heard (a key press, if any, acknowledged it already).
            return Report(
                ReportState.DELIVERED,
                delivery_id=delivery_id,
                reference=sid,
                from_address=to,
                detail=detail,
            )
        if status in _NOT_ANSWERED:
            return Report(
                ReportState.FAILED,
                delivery_id=delivery_id,
                reference=sid,
                from_address=to,
                reason=f"call {status}: {_NOT_ANSWERED[status]}",
                retryable=True,
                detail=detail,
            )
        error = delivery_error(error_code_of(params), status)
        detail["error_code"] = error.code
        return Report(
            ReportState.FAILED,
            delivery_id=delivery_id,
            reference=sid,
            from_address=to,
            reason=f"call failed: {error.describe()}",
            retryable=error.retryable,
            detail=detail,
        )

    async def _on_gather(self, request: web.Request) -> web.StreamResponse:
        context, params = await self._signed(request)
        digits = params.get("Digits", "")
        delivery_id = delivery_id_of(request)
        response = VoiceResponse()
        if digits == "1":
            context.report(
                Report(
                    ReportState.ACKNOWLEDGED,
                    delivery_id=delivery_id,
                    reference=params.get("CallSid") or None,
                    from_address=params.get("To") or None,
                    detail={"digits": digits, "sid": params.get("CallSid", "")},
                )
            )
            self._say(response, CONFIRMED)
        elif request.query.get("prompt") == "1" and delivery_id is not None:
            # Another key: ask once more, then let the call end.
            gather = response.gather(
                num_digits=1,
                action=_with_delivery(self._gather_url, delivery_id, prompt=2),
                method="POST",
                timeout=self.settings.gather_timeout,
            )
            self._say(gather, PRESS_ONE)
            self._say(response, NO_KEY)
        else:
            self._say(response, NO_KEY)
        response.hangup()
        return twiml(str(response))


def _with_delivery(url: str, delivery_id: int, *, prompt: int | None = None) -> str:
    """The callback URL naming the delivery (a test send from the CLI names none)."""
    query = [f"d={delivery_id}"] if delivery_id > 0 else []
    if prompt is not None:
        query.append(f"prompt={prompt}")
    return f"{url}?{'&'.join(query)}" if query else url


def _for_speech(text: str) -> str:
    # Brackets mark the level and status on a screen; read aloud they are a pause.
    return text.replace("【", "").replace("】", "，")
