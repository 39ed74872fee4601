"""Bearer-token authentication and role checks.

Tokens are compared by SHA-256 digest in constant time (:meth:`ApiToken.matches`), against
every configured token without stopping at a match, so timing tells nothing about which token
or how much of it matched. The token itself is never logged or echoed."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from dispatcher.api.deps import DEPS_KEY, PRINCIPAL_KEY
from dispatcher.api.errors import ApiError
from dispatcher.api.metrics import METRICS_KEY
from dispatcher.api.routing import endpoint_of
from dispatcher.config import ApiToken
from dispatcher.warning_service import Principal

_CHALLENGE = 'Bearer realm="tocsin"'
_INVALID_CHALLENGE = 'Bearer realm="tocsin", error="invalid_token"'
# Tokens from `tocsin token new` are ~43 URL-safe characters; anything far longer is not one.
_MAX_TOKEN_LENGTH = 512


def bearer_token(header: str | None) -> str:
    """The token from an ``Authorization: Bearer <token>`` header, or a 401."""
    if not header:
        raise ApiError(
            401,
            "unauthorized",
            "this endpoint needs an API token: send 'Authorization: Bearer <token>'",
            headers={hdrs.WWW_AUTHENTICATE: _CHALLENGE},
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "unauthorized",
            "the Authorization header must be 'Bearer <token>'",
            headers={hdrs.WWW_AUTHENTICATE: _INVALID_CHALLENGE},
        )
    return token


def identify(token: str, tokens: Sequence[ApiToken]) -> ApiToken | None:
    """The configured token matching ``token``; every token is checked whatever the outcome."""
    found: ApiToken | None = None
    candidate = token if len(token) <= _MAX_TOKEN_LENGTH else ""
    for configured in tokens:
        if configured.matches(candidate) and found is None and candidate:
            found = configured
    return found


def _invalid_token() -> ApiError:
    return ApiError(
        401,
        "invalid_token",
        "the API token is not valid",
        headers={hdrs.WWW_AUTHENTICATE: _INVALID_CHALLENGE},
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    endpoint = endpoint_of(request)
    if endpoint is None or endpoint.roles is None:
        return await handler(request)  # public endpoint, or a 404/405 about to be raised
    metrics = request.app[METRICS_KEY]
    try:
        token = bearer_token(request.headers.get(hdrs.AUTHORIZATION))
    except ApiError:
        metrics.auth_failures.labels(reason="missing").inc()
        raise
    matched = identify(token, request.app[DEPS_KEY].tokens())
    if matched is None:
        metrics.auth_failures.labels(reason="invalid").inc()
        raise _invalid_token()
    principal = Principal(matched.name, matched.role, matched.person_id)
    with structlog.contextvars.bound_contextvars(principal=principal.name):
        if principal.role not in endpoint.roles:
            metrics.auth_failures.labels(reason="forbidden").inc()
            allowed = ", ".join(sorted(role.value for role in endpoint.roles))
            raise ApiError(
                403,
                "forbidden",
                f"role {principal.role.value} may not call this endpoint (allowed: {allowed})",
            )
        request[PRINCIPAL_KEY] = principal
        return await handler(request)
