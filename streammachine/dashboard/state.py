"""The dashboard's state API (read-only): the app's tables and window agents, read with the
same functions as the CLI and MCP (`streammachine.state.browse`).

Routes: `GET /api/tables` (each table: partitioned or not, keys, TTL), `GET /api/tables/{name}`
(`prefix=`, `cursor=`, `limit=`: one page of keys with their values and the next cursor),
`GET /api/windows` (each window agent: kind, size, grace; per partition the watermark, its lag,
open windows and late entries) and `GET /api/windows/{name}` (`key=`, `limit=`: its open windows
with their current values). Every answer is JSON; a bad argument is a 400 that says what to do,
an unknown table or window a 404, Redis unreachable a 503. Auth is the dashboard's (`guard`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..exceptions import REDIS_FAILURES, ConfigError, StreamMachineError
from ..state.browse import find_tables, table_page, table_summaries, window_open, window_summaries
from ..urls import mask_url
from .guard import JSON

if TYPE_CHECKING:
    from ..app import App
    from ..connection import RedisConnection

__all__ = ["MAX_PAGE", "state_routes"]

#: The most keys (or windows) one page holds.
MAX_PAGE = 1000
READ_TIMEOUT_S = 10.0
_MAX_TEXT = 1024
# Besides Redis' own errors: redis-py's TypeError for a URL option its connection class does not
# take (raised at the first command), answered 503 like an unreachable server.
_FAILURES: tuple[type[BaseException], ...] = (*REDIS_FAILURES, StreamMachineError, TypeError)
Handler = Callable[[Request], Awaitable[Response]]


class NotFound(Exception):
    """Answered 404 with its message."""


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdecimal() or not 1 <= int(raw) <= MAX_PAGE:
        raise ConfigError(f"limit must be a whole number from 1 to {MAX_PAGE}, not {raw[:30]!r}")
    return int(raw)


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is not None and len(value) > _MAX_TEXT:
        raise ConfigError(f"{name} is longer than {_MAX_TEXT} characters")
    return value or None


def state_routes(conn: Callable[[], RedisConnection], app: App | None, url: str) -> list[Route]:
    """The state API's routes, over the dashboard's connection (`conn()`); with `app`, its
    declared tables are listed (with their TTL) even before they hold a key."""

    def answer(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def call(request: Request) -> Response:
            try:
                conn()  # a URL setting Redis cannot take is the server's problem: 503, not 400
            except StreamMachineError as exc:
                return JSON({"error": f"cannot use Redis at {mask_url(url)}: {exc}"}, 503)
            try:
                with anyio.fail_after(READ_TIMEOUT_S):
                    return JSON(await fn(request))
            except ConfigError as exc:
                return JSON({"error": str(exc)}, status_code=400)
            except NotFound as exc:
                return JSON({"error": str(exc)}, status_code=404)
            except _FAILURES as exc:  # TimeoutError (fail_after) is an OSError
                text = f"cannot read Redis at {mask_url(url)}: {exc or 'timeout'}"
                return JSON({"error": text}, status_code=503)

        return call

    def declared() -> dict[str, Any]:
        return dict(getattr(app, "tables", None) or {}) if app is not None else {}

    async def tables(request: Request) -> Any:
        return {"tables": await table_summaries(conn().client, declared())}

    async def table(request: Request) -> Any:
        name = request.path_params["name"]
        limit = _limit(request, 50)
        prefix, cursor = _text(request, "prefix") or "", _text(request, "cursor")
        client = conn().client
        if name not in declared():
            known = list(await find_tables(client))
            if name not in known:
                listed = ", ".join(known[:20]) or "none"
                raise NotFound(f"no table {name!r} here (tables: {listed}; see /api/tables)")
        return await table_page(client, name, prefix=prefix, after=cursor, limit=limit)

    async def windows(request: Request) -> Any:
        client = conn().client
        secs, micros = await client.time()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        return {"generated_at_ms": now_ms, "windows": await window_summaries(client, now_ms)}

    async def window(request: Request) -> Any:
        name = request.path_params["name"]
        limit = _limit(request, 100)
        found = await window_open(conn().client, name, key=_text(request, "key"), limit=limit)
        if found is None:
            raise NotFound(f"no window agent {name!r} has state here (see /api/windows)")
        return found

    return [
        Route("/api/tables", answer(tables)),
        Route("/api/tables/{name}", answer(table)),
        Route("/api/windows", answer(windows)),
        Route("/api/windows/{name}", answer(window)),
    ]
