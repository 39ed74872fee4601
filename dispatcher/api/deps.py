"""What the HTTP API needs from the rest of the daemon, and the keys it keeps them under."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from dispatcher.adapter import WebhookRoute
from dispatcher.config import ApiToken
from dispatcher.engine.types import AckOutcome, HouseholdConfirmation
from dispatcher.schedules.service import ScheduleService
from dispatcher.store.base import Store
from dispatcher.warning_service import Principal, WarningService


@dataclass(frozen=True, slots=True)
class ApiDeps:
    store: Store
    warnings: WarningService
    #: Called on every authenticated request, so a config reload can swap the tokens.
    tokens: Callable[[], Sequence[ApiToken]]
    #: Largest request body accepted (server.max_body_bytes); larger ones get 413.
    max_body_bytes: int
    #: Readiness for /readyz: the store is open and the planner is running.
    ready: Callable[[], bool]
    #: Where the API's metrics are registered and what /metrics exposes.
    registry: CollectorRegistry
    #: The engine's acknowledgement intake, for confirmations posted over HTTP (None: no
    #: engine runs, e.g. in API-only tests; the endpoint answers 503).
    confirm_household: Callable[[HouseholdConfirmation], Awaitable[AckOutcome]] | None = None
    #: The engine's adapter instances and their state (None: no engine runs).
    adapters: Callable[[], list[dict[str, object]]] | None = None
    #: ``[engine] device_heartbeat_timeout``: a device online but not heard from for longer
    #: is listed as silent (GET /v1/devices).
    device_heartbeat_timeout: float = 300.0
    #: Adapters' webhooks (provider callbacks), by adapter instance name: served at
    #: ``/hooks/<name>/<path>``, public (each handler checks the provider's signature).
    webhooks: Sequence[tuple[str, WebhookRoute]] = ()
    #: Scheduled test broadcasts and drills (None: the /v1/schedules endpoints answer 503).
    schedules: ScheduleService | None = None
    #: The body of GET /v1/nodes: the nodes on the database (None: the endpoint answers 503).
    nodes: Callable[[], Awaitable[dict[str, Any]]] | None = None


DEPS_KEY = web.AppKey("tocsin_api_deps", ApiDeps)
#: Who is calling, set by the auth middleware on requests to token-protected endpoints.
PRINCIPAL_KEY = web.RequestKey("tocsin_principal", Principal)
