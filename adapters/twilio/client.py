"""The twilio client as the adapters use it: async HTTP, the configured API address, quiet, and
one place that turns a refused or failed request into an outcome."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from adapters.twilio.errors import TwilioError, request_error
from adapters.twilio.settings import TwilioAccountSettings
from dispatcher.adapter import Failed, Retry

#: The Retry-After of the last 429 in this task (the exception twilio raises drops headers).
_RETRY_AFTER: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tocsin_twilio_retry_after", default=None
)

T = TypeVar("T")


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """twilio's async client without its per-request INFO logging (six lines a message, with
    phone numbers in them), remembering a 429's Retry-After for the outcome."""

    def log_request(self, kwargs: dict[str, Any]) -> None:
        pass

    def log_response(self, status_code: int, response: Any) -> None:
        pass

    async def request(
        self,
        method: str,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (twilio's signature)
        allow_redirects: bool = False,
    ) -> Response:
        if auth is not None:
            # As a header: aiohttp deprecates the BasicAuth twilio would build from it.
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        response = await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        if response.status_code == 429:
            _RETRY_AFTER.set(_seconds(response.headers))
        return response


def _seconds(headers: Any) -> float | None:
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def make_client(settings: TwilioAccountSettings) -> tuple[Client, AsyncTwilioHttpClient]:
    """A client for the account (no network until the first request) and its HTTP client,
    which the caller closes."""
    http = _HttpClient()
    client = Client(settings.account_sid, settings.auth_token.get_secret_value(), http_client=http)
    if settings.api_base_url is not None:
        # An edge or region (TWILIO_EDGE/TWILIO_REGION in the environment) would rewrite the
        # host of the fake server.
        client.edge = None
        client.region = None
        client.api.base_url = str(settings.api_base_url).rstrip("/")
    return client, http


async def call_twilio(request: Callable[[], Awaitable[T]], *, seconds: float) -> T | Retry | Failed:
    """Run one API request within ``seconds``; a refusal or a transport failure
    becomes the outcome it means."""
    token = _RETRY_AFTER.set(None)
    try:
        # Enforced here: twilio's async client does not apply its own timeout.
        async with asyncio.timeout(seconds):
            return await request()
    except TwilioRestException as exc:
        error = request_error(exc.status, exc.code, exc.msg)
        return outcome_of(error, after=_RETRY_AFTER.get(), status=exc.status)
    except TimeoutError:
        # The request may have reached Twilio: a retry can send twice (at-least-once; the
        # message carries the warning so a person sees it is the same).
        return Retry("Twilio did not answer in time", detail={"error": "timeout"})
    except aiohttp.ClientError as exc:
        return Retry(f"cannot reach Twilio: {exc}", detail={"error": type(exc).__name__})
    finally:
        _RETRY_AFTER.reset(token)


def outcome_of(error: TwilioError, *, after: float | None = None, status: int) -> Retry | Failed:
    detail = {"error_code": error.code, "http_status": status}
    if error.retryable:
        return Retry(error.describe(), after=after, detail=detail)
    return Failed(error.describe(), detail=detail)
