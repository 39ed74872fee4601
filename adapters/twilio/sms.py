"""The ``twilio_sms`` adapter: warnings as text messages, confirmed by a reply.

Each message is created with ``messages.create_async`` and a status callback naming its
delivery (``…/hooks/<name>/status?d=<delivery id>``), so a callback that beats the create's
answer still finds its delivery. ``delivered`` marks it delivered; ``undelivered`` and
``failed`` fail it, retried or not by Twilio's error code. A reply of a confirm word (``1``,
``收到``, ``Y``) from the person's number acknowledges their open delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import structlog
from aiohttp import web
from twilio.rest.api.v2010.account.message import MessageInstance

from adapters.sms_text.replies import masked, normalise_reply
from adapters.sms_text.segments import count_segments, fit
from adapters.twilio.base import TwilioAdapterBase
from adapters.twilio.client import call_twilio
from adapters.twilio.errors import delivery_error
from adapters.twilio.pacing import SenderPool
from adapters.twilio.settings import TwilioSmsSettings
from adapters.twilio.webhooks import (
    EMPTY_TWIML,
    delivery_id_of,
    error_code_of,
    twiml,
)
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

#: The end of a person's text: kept when a long text is shortened.
CONFIRM_TAIL = "收到请回复1。"
#: Message statuses that say nothing new (the create already made the delivery "sent").
_IN_FLIGHT = frozenset({"accepted", "scheduled", "queued", "sending", "sent", "receiving"})
#: Twilio's validity period limit (seconds) for messages through a messaging service.
_MAX_VALIDITY = 36000
#: Longest a send waits for a sender's token before answering Retry.
_MAX_SENDER_WAIT = 2.0


class TwilioSmsAdapter(TwilioAdapterBase):
    kind: ClassVar[str] = "twilio_sms"
    channels: ClassVar[frozenset[Channel]] = frozenset({Channel.SMS})
    settings_model: ClassVar[type[TwilioSmsSettings]] = TwilioSmsSettings
    description: ClassVar[str] = (
        "SMS through Twilio: UCS-2 Chinese text, status callbacks, replies 1/收到/Y confirm"
    )

    def __init__(self, *, name: str, settings: TwilioSmsSettings) -> None:
        super().__init__(name=name, settings=settings)
        self.settings = settings
        self._pool = (
            SenderPool(settings.senders, rate=settings.sender_rate) if settings.senders else None
        )
        self._confirm = {normalise_reply(word) for word in settings.confirm_words}
        self._status_url = settings.hook_url(name, "status")

    # -- pacing -----------------------------------------------------------------------------
    def send_rate(self) -> SendRate:
        if self._pool is not None:
            return SendRate(self._pool.total_rate, max(1, len(self._pool.senders)))
        rate = self.settings.messaging_service_rate
        return SendRate(rate, max(1, int(rate)))

    def room(self) -> int | None:
        return None

    def _numbers_to_check(self) -> Sequence[str]:
        return self.settings.senders

    # -- sending ----------------------------------------------------------------------------
    async def send(self, batch: Sequence[Dispatch]) -> Sequence[Outcome]:
        self._require_client()
        return await asyncio.gather(*(self._send_one(d) for d in batch))

    async def _send_one(self, dispatch: Dispatch) -> Outcome:
        client = self._require_client()
        text = fit(dispatch.text, self.settings.max_segments, keep_tail=CONFIRM_TAIL)
        segments = count_segments(text)
        args: dict[str, Any] = {"to": dispatch.address, "body": text}
        detail: dict[str, Any] = {"segments": segments.count, "encoding": segments.encoding}
        if self._pool is not None:
            sender = await self._sender(dispatch.address)
            if sender is None:
                return Retry("every sender is at its rate", after=self._pool.seconds_until_free())
            args["from_"] = detail["from"] = sender
        else:
            args["messaging_service_sid"] = self.settings.messaging_service_sid
            left = int(dispatch.warning.expires.timestamp() - time.time())
            args["validity_period"] = max(1, min(_MAX_VALIDITY, left))
        args["status_callback"] = (
            f"{self._status_url}?d={dispatch.delivery_id}"
            if dispatch.delivery_id > 0
            else self._status_url
        )
        async with self._requests:
            result = await call_twilio(
                lambda: client.messages.create_async(**args), seconds=self._account.request_timeout
            )
        if isinstance(result, (Retry, Failed)):
            return _with_detail(result, detail)
        message: MessageInstance = result
        detail["sid"] = message.sid
        detail["twilio_segments"] = _int(message.num_segments)
        detail["status"] = message.status
        return Accepted(reference=message.sid or "", detail=detail)

    async def _sender(self, recipient: str) -> str | None:
        """A sender with a token. The engine keeps to the senders' total rate, so waiting is
        short (a token due a moment later); a long wait means the rate was set wrong."""
        if self._pool is None:
            return None
        for _ in range(3):
            sender = self._pool.take(recipient)
            if sender is not None:
                return sender
            wait = self._pool.seconds_until_free()
            if wait > _MAX_SENDER_WAIT:
                return None
            await asyncio.sleep(wait)
        return None

    async def poll_status(self, reference: str) -> Report | None:
        client = self._require_client()
        async with self._requests:
            result = await call_twilio(
                lambda: client.messages(reference).fetch_async(),
                seconds=self._account.request_timeout,
            )
        if isinstance(result, (Retry, Failed)):
            return None
        return self._status_report(
            None, reference, result.status or "", result.error_code, result.to or ""
        )

    # -- webhooks ---------------------------------------------------------------------------
    def webhooks(self) -> Sequence[WebhookRoute]:
        return (
            WebhookRoute("POST", "status", self._on_status),
            WebhookRoute("POST", "inbound", self._on_inbound),
        )

    async def _on_status(self, request: web.Request) -> web.StreamResponse:
        context, params = await self._signed(request)
        report = self._status_report(
            delivery_id_of(request),
            params.get("MessageSid", ""),
            params.get("MessageStatus", ""),
            error_code_of(params),
            params.get("To", ""),
        )
        if report is not None:
            context.report(report)
        return web.Response(status=204)

    def _status_report(
        self, delivery_id: int | None, sid: str, status: str, code: int | None, to: str
    ) -> Report | None:
        if status in _IN_FLIGHT or not sid:
            return None
        detail: dict[str, Any] = {"sid": sid, "status": status}
        if status in ("delivered", "read"):
            return Report(
                ReportState.DELIVERED,
                delivery_id=delivery_id,
                reference=sid,
                from_address=to or None,
                detail=detail,
            )
        if status in ("undelivered", "failed", "canceled"):
            error = delivery_error(code, status)
            detail["error_code"] = error.code
            return Report(
                ReportState.FAILED,
                delivery_id=delivery_id,
                reference=sid,
                from_address=to or None,
                reason=f"SMS {status}: {error.describe()}",
                retryable=error.retryable,
                detail=detail,
            )
        log.info("unknown message status", adapter=self._name, status=status)
        return None

    async def _on_inbound(self, request: web.Request) -> web.StreamResponse:
        context, params = await self._signed(request)
        sender = params.get("From", "")
        body = params.get("Body", "")
        if not sender:
            return twiml(EMPTY_TWIML)
        if normalise_reply(body) not in self._confirm:
            # Not a confirmation (a question, STOP, a wrong number): kept in the daemon's log
            # for the duty officer, never an error.
            log.info(
                "reply not understood",
                adapter=self._name,
                sender=masked(sender),
                body=body[:160],
            )
            return twiml(EMPTY_TWIML)
        context.report(
            Report(
                ReportState.ACKNOWLEDGED,
                from_address=sender,
                detail={"reply": body[:40], "reply_sid": params.get("MessageSid", "")},
                # A reply Twilio posts again (its webhook retries, perhaps to another node)
                # is applied once: the store keeps the ids of the replies it applied.
                reply_id=params.get("MessageSid") or None,
            )
        )
        if self.settings.reply_confirmation:
            from twilio.twiml.messaging_response import MessagingResponse

            answer = MessagingResponse()
            answer.message(self.settings.reply_confirmation)
            return twiml(str(answer))
        return twiml(EMPTY_TWIML)


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _with_detail(outcome: Retry | Failed, detail: dict[str, Any]) -> Retry | Failed:
    merged = {**detail, **outcome.detail}
    if isinstance(outcome, Retry):
        return Retry(outcome.reason, after=outcome.after, detail=merged)
    return Failed(outcome.reason, detail=merged)
