"""Reading what a request carries: its body (bounded), JSON bodies as pydantic models, CAP XML,
query parameters and the Idempotency-Key header. Each problem becomes an :class:`ApiError`."""

from __future__ import annotations

import asyncio
import enum
import hashlib
from typing import Any, TypeVar

from aiohttp import hdrs, web
from pydantic import BaseModel, ValidationError

from dispatcher.api.errors import ApiError
from dispatcher.cap import CapError, ParsedCap, parse_cap
from dispatcher.store.base import IdempotencyClaim
from dispatcher.warning_service import Principal

M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=enum.Enum)

JSON_MEDIA_TYPE = "application/json"
#: CAP 1.2 is accepted under its registered type and the generic XML ones.
CAP_MEDIA_TYPES = ("application/cap+xml", "application/xml", "text/xml")
IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAX_IDEMPOTENCY_KEY = 200


class BodyKind(enum.Enum):
    EMPTY = "empty"
    JSON = "json"
    CAP = "cap"


def body_kind(request: web.Request, *, accept_cap: bool) -> BodyKind:
    """What the body is by its Content-Type; 415 for anything else."""
    if request.content_length == 0 or (request.content_length is None and not request.body_exists):
        return BodyKind.EMPTY
    declared = hdrs.CONTENT_TYPE in request.headers
    media_type = request.content_type.lower() if declared else ""
    if media_type == JSON_MEDIA_TYPE:
        return BodyKind.JSON
    if accept_cap and media_type in CAP_MEDIA_TYPES:
        return BodyKind.CAP
    accepted = JSON_MEDIA_TYPE + (" or " + ", ".join(CAP_MEDIA_TYPES) if accept_cap else "")
    shown = media_type or "(none)"
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {shown} is not accepted here; send {accepted}",
        field="Content-Type",
    )


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole body. A declared Content-Length over the limit is refused before reading;
    aiohttp's client_max_size (set to the same limit) stops a chunked body while reading."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(request.content_length, max_bytes)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, max_bytes) from None


def _too_large(size: int | None, max_bytes: int) -> ApiError:
    sent = f"{size} bytes" if size is not None else "more"
    return ApiError(
        413,
        "body_too_large",
        f"the request body is {sent}; the limit is {max_bytes} bytes",
        extra={"limit": max_bytes},
    )


def parse_json_model(body: bytes, model: type[M]) -> M:
    """Validate a JSON body: 400 when it is not JSON, 422 (first problem, and all of them) when
    it does not fit the model."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError(
                400, "malformed_json", f"the body is not valid JSON: {errors[0]['msg']}"
            ) from None
        problems = [
            {"field": _field_path(e["loc"]), "message": _message(e["msg"]), "type": e["type"]}
            for e in errors
        ]
        first = problems[0]
        where = f"{first['field']}: " if first["field"] else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ApiError(
            422,
            "validation_error",
            f"{where}{first['message']}{more}",
            field=first["field"] or None,
            extra={"errors": problems},
        ) from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith("function-"):  # pydantic's validator wrappers
            path += ("." if path else "") + part
    return path


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


async def parse_cap_body(body: bytes) -> ParsedCap:
    """A CAP 1.2 message. XML that is not well formed, or carries a DTD or entities, is a 400
    (``malformed_xml``); a well-formed message Tocsin cannot accept is a 422 (``invalid_cap``)."""
    try:
        # Schema validation is CPU work on untrusted input: keep it off the event loop.
        return await asyncio.to_thread(parse_cap, body)
    except CapError as exc:
        extra: dict[str, Any] = {}
        if exc.line is not None:
            extra["line"] = exc.line
        # CapError names an element path for every check past parsing; XML-level failures
        # (not well formed, DTD, entities, nesting, size) name none.
        if exc.field is None:
            raise ApiError(400, "malformed_xml", str(exc), extra=extra) from None
        raise ApiError(422, "invalid_cap", str(exc), field=exc.field, extra=extra) from None


def idempotency_claim(
    request: web.Request, principal: Principal, body: bytes
) -> IdempotencyClaim | None:
    """The claim for an ``Idempotency-Key`` header, if sent. The request hash covers the method,
    path and raw body, so one key reused on another endpoint or warning is a conflict."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= _MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"{IDEMPOTENCY_HEADER} must be 1 to {_MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            field=IDEMPOTENCY_HEADER,
        )
    digest = hashlib.sha256(f"{request.method} {request.rel_url.path}\n".encode())
    digest.update(body)
    return IdempotencyClaim(principal=principal.name, key=key, request_hash=digest.hexdigest())


def query_int(request: web.Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high or not raw.strip().lstrip("+-").isdigit():
        raise ApiError(
            400,
            "invalid_parameter",
            f"{name} must be a whole number from {low} to {high}",
            field=name,
        )
    return value


def query_enum(request: web.Request, name: str, kind: type[E]) -> E | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    for member in kind:
        if member.value == raw:
            return member
    allowed = ", ".join(str(m.value) for m in kind)
    raise ApiError(400, "invalid_parameter", f"{name} must be one of {allowed}", field=name)


def query_bool(request: web.Request, name: str, *, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw in ("true", "false"):
        return raw == "true"
    raise ApiError(400, "invalid_parameter", f"{name} must be true or false", field=name)


def query_text(request: web.Request, name: str, *, max_length: int) -> str | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        raw.encode("utf-8")  # lone surrogates from a malformed percent-encoding
    except UnicodeEncodeError:
        valid = False
    else:
        valid = 1 <= len(raw) <= max_length
    if not valid:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{name} must be 1 to {max_length} characters of text",
            field=name,
        )
    return raw
