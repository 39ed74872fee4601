"""What the client commands (`tocsin warn`, `status`, `log`, `report`, `schedule`, `devices`)
share to talk to a running daemon's API: a request that returns the status and the decoded
body, and the one way an API refusal is printed."""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp


def session(*, read_timeout: float | None = None) -> aiohttp.ClientSession:
    """A session for one command; ``read_timeout`` for streams that must notice a dead peer."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
    return aiohttp.ClientSession(timeout=timeout)


async def request(
    method: str, url: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, Any]:
    """One request in its own session (30 s at most): the status and the body."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as client,
        client.request(method, url, headers=headers, data=body) as response,
    ):
        return response.status, await json_or_text(response)


async def get_json(
    client: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with client.get(url, headers=headers, params=params) as response:
        return response.status, await json_or_text(response)


async def json_or_text(response: aiohttp.ClientResponse) -> Any:
    """The body as JSON, or ``{"body": text}`` when it is not (a proxy's error page)."""
    try:
        return await response.json(content_type=None)
    except ValueError:
        return {"body": await response.text()}


def refused(command: str, body: Any) -> int:
    """Print an API refusal (``code (field): message``) for ``tocsin <command>``; exit 1."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        where = f" ({error['field']})" if error.get("field") else ""
        message = f"{error.get('code')}{where}: {error.get('message')}"
    else:
        message = json.dumps(body, ensure_ascii=False)
    print(f"tocsin {command}: {message}", file=sys.stderr)
    return 1
