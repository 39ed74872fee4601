"""What the SMS and voice adapters share: the client's lifecycle, the probe, the request cap,
the signature check, and asking Twilio for a message's or call's status."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import structlog
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from adapters.twilio.client import make_client
from adapters.twilio.settings import TwilioAccountSettings
from adapters.twilio.webhooks import SignatureCheck
from dispatcher.adapter import AdapterContext, AdapterNotReady, ProbeResult

log = structlog.get_logger(__name__)


class TwilioAdapterBase:
    max_batch: ClassVar[int] = 200

    def __init__(self, *, name: str, settings: TwilioAccountSettings) -> None:
        self._name = name
        self._account = settings
        self._context: AdapterContext | None = None
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None
        self._requests = asyncio.Semaphore(settings.max_concurrent_requests)
        self._signature = SignatureCheck(
            auth_token=settings.auth_token.get_secret_value(),
            public_url=str(settings.public_url),
            adapter=name,
        )

    @property
    def name(self) -> str:
        return self._name

    async def start(self, context: AdapterContext) -> None:
        # No request here: the daemon starts without network to Twilio (a probe checks the
        # credentials); sends retry until Twilio answers.
        self._client, self._http = make_client(self._account)
        self._context = context

    async def stop(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    async def _signed(self, request: web.Request) -> tuple[AdapterContext, Mapping[str, str]]:
        """The context to report to and the request's form, once its signature is checked;
        503 before the start (Twilio tries again), 403 for a bad signature."""
        context = self._context
        if context is None:
            raise web.HTTPServiceUnavailable(text="adapter not started")
        return context, await self._signature.form(request)

    def _require_client(self) -> Client:
        if self._client is None:
            raise AdapterNotReady(f"{self._name} is not started")
        return self._client

    # -- probe ------------------------------------------------------------------------------
    def _numbers_to_check(self) -> Sequence[str]:
        return ()

    async def probe(self) -> ProbeResult:
        client, http = make_client(self._account)
        try:
            try:
                account = await client.api.v2010.accounts(self._account.account_sid).fetch_async()
            except TwilioRestException as exc:
                return ProbeResult(
                    False,
                    f"Twilio refused the credentials: {exc.code or exc.status} {exc.msg}",
                    {"http_status": exc.status, "error_code": exc.code},
                )
            except Exception as exc:
                return ProbeResult(False, f"cannot reach Twilio: {type(exc).__name__}: {exc}")
            details: dict[str, Any] = {
                "account": account.friendly_name,
                "status": account.status,
                "api": str(self._account.api_base_url or "https://api.twilio.com"),
            }
            missing = []
            for number in self._numbers_to_check():
                found = await client.incoming_phone_numbers.list_async(phone_number=number)
                if not found:
                    missing.append(number)
            if missing:
                details["missing_numbers"] = missing
                return ProbeResult(
                    False, f"not numbers of this account: {', '.join(missing)}", details
                )
            ok = account.status == "active"
            return ProbeResult(ok, f"account {account.status}", details)
        finally:
            await http.close()
