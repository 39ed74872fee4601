"""Twilio's requests to the daemon: checked against ``X-Twilio-Signature`` before anything is
read from them.

The signature is an HMAC-SHA1, keyed with the auth token, of the URL Twilio called and the form
parameters (twilio's :class:`~twilio.request_validator.RequestValidator`). The URL Twilio called
is the configured public URL plus the path and query the daemon sees, so a reverse proxy in
front of the daemon changes nothing. Anything unsigned or tampered with gets 403 and changes
nothing."""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from aiohttp import web
from twilio.request_validator import RequestValidator

log = structlog.get_logger(__name__)

TWIML_CONTENT_TYPE = "application/xml"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class SignatureCheck:
    def __init__(self, *, auth_token: str, public_url: str, adapter: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._base = public_url.rstrip("/")
        self._adapter = adapter

    async def form(self, request: web.Request) -> Mapping[str, str]:
        """The request's form fields, or a 403 when the signature does not match them."""
        signature = request.headers.get("X-Twilio-Signature", "")
        form = await request.post()
        params = {key: str(value) for key, value in form.items()}
        url = self._base + str(request.rel_url)
        if not signature or not self._validator.validate(url, params, signature):
            log.warning(
                "webhook rejected: bad signature",
                adapter=self._adapter,
                path=request.path,
                signed=bool(signature),
                peer=request.remote,
            )
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
        return params


def delivery_id_of(request: web.Request) -> int | None:
    """The delivery id the adapter put in the callback URL (``?d=…``), covered by the
    signature."""
    raw = request.query.get("d")
    if raw is None or not raw.isdigit():
        return None
    value = int(raw)
    return value if value > 0 else None


def error_code_of(params: Mapping[str, str]) -> int | None:
    raw = params.get("ErrorCode", "")
    return int(raw) if raw.isdigit() else None


def twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type=TWIML_CONTENT_TYPE, charset="utf-8")
