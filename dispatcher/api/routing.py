"""The route table: each endpoint's method, path, handler and the API roles allowed to call it.

The app registers routes from it, the auth middleware enforces it, and the OpenAPI document is
checked against it, so the three cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from dispatcher.config import ApiRole

#: Every role may read warnings, plans, events and the directory summary.
ANY_ROLE: frozenset[ApiRole] = frozenset(ApiRole)
#: Posting, updating and cancelling warnings.
WARNING_WRITERS: frozenset[ApiRole] = frozenset({ApiRole.DUTY_OFFICER, ApiRole.ADMIN})
ADMIN_ONLY: frozenset[ApiRole] = frozenset({ApiRole.ADMIN})
#: The dispatch staff: every role but grid members (whose tokens only confirm visits).
STAFF_ROLES: frozenset[ApiRole] = frozenset(
    {ApiRole.DUTY_OFFICER, ApiRole.OPERATOR, ApiRole.INSTALLER, ApiRole.ADMIN}
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    #: The OpenAPI operationId and the aiohttp route name.
    name: str
    #: Roles allowed to call it; None means public (no token needed).
    roles: frozenset[ApiRole] | None


ENDPOINTS_KEY = web.AppKey("tocsin_api_endpoints", dict[str, Endpoint])


def endpoint_of(request: web.Request) -> Endpoint | None:
    """The endpoint the request was routed to; None for 404 and 405."""
    name = request.match_info.route.name
    if name is None:
        return None
    return request.app[ENDPOINTS_KEY].get(name)
