"""The dashboard's operator API: what an operator reads to decide (agents and their state, dead
letters with filters and one in detail, pending entries, delayed entries, the message inspector,
the audit trail) and `POST /api/actions/<name>`, which runs one action of the command layer
(`streammachine.admin.actions`) as the dashboard's operator (see `guard` for who may).

Every answer is JSON; a bad argument is a 400 that says what to do, Redis unreachable a 503.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..admin import actions as admin_actions
from ..admin.agents import list_agents
from ..admin.audit import Actor, read_audit
from ..admin.deadletters import DeadFilter, find_dead, show_dead
from ..admin.inspector import inspect_stream
from ..admin.pending import list_pending
from ..admin.scheduled import list_scheduled
from ..exceptions import REDIS_FAILURES, ConfigError, StreamMachineError
from ..urls import mask_url
from .guard import JSON, actor_name, bearer, check_action_request, same

if TYPE_CHECKING:
    from ..app import App
    from ..codec import StructCodec
    from ..connection import RedisConnection

__all__ = ["MAX_BODY_BYTES", "ops_routes"]

#: The largest action body read.
MAX_BODY_BYTES = 1_000_000
READ_TIMEOUT_S = 10.0

# Besides Redis' own errors: redis-py's TypeError for a URL option its connection class does not
# take (raised at the first command), answered 503 like an unreachable server.
_FAILURES: tuple[type[BaseException], ...] = (*REDIS_FAILURES, StreamMachineError, TypeError)
Handler = Callable[[Request], Awaitable[Response]]


def _int(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdecimal() or not 1 <= int(raw) <= high:
        raise ConfigError(f"{name} must be a whole number from 1 to {high}, not {raw[:30]!r}")
    return int(raw)


def _text(request: Request, name: str, required: bool = False) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and len(value) > 10_000:
        raise ConfigError(f"{name} is too long")
    if required and value is None:
        raise ConfigError(f"give {name}=…")
    return value


def ops_routes(
    conn: Callable[[], RedisConnection], operator_token: str | None, app: App | None, url: str
) -> list[Route]:
    """The operator API's routes, over the dashboard's connection (`conn()`)."""

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
            except ResponseError as exc:
                return JSON({"error": f"Redis refused: {exc}"}, status_code=400)
            except _FAILURES as exc:
                text = f"cannot read Redis at {mask_url(url)}: {exc or 'timeout'}"
                return JSON({"error": text}, status_code=503)

        return call

    async def session(request: Request) -> Any:
        operator = bool(operator_token) and same(
            bearer(request.scope), (operator_token or "").encode()
        )
        return {"actions": bool(operator_token), "operator": operator}

    async def agents(request: Request) -> Any:
        return {"agents": await list_agents(conn())}

    async def dead(request: Request) -> Any:
        stream = _text(request, "stream", required=True)
        assert stream is not None
        where = DeadFilter.parse(
            request.query_params.getlist("where"),
            _text(request, "error"),
            _text(request, "since"),
            _text(request, "until"),
        )
        page = await find_dead(
            conn(),
            stream,
            where,
            count=_int(request, "count", 50, 500),
            after=_text(request, "after"),
        )
        for d in page["entries"]:
            d["traceback"] = (d["traceback"] or "")[-2000:] or None
        return page

    async def dead_entry(request: Request) -> Any:
        stream, entry_id = _text(request, "stream", True), _text(request, "id", True)
        assert stream is not None and entry_id is not None
        found = await show_dead(conn(), stream, entry_id)
        if found is None:
            raise ConfigError(f"no dead letter {entry_id} of {stream}")
        return found

    async def pending(request: Request) -> Any:
        stream = _text(request, "stream", True)
        assert stream is not None
        return await list_pending(
            conn(), stream, _text(request, "group"),
            consumer=_text(request, "consumer"), count=_int(request, "count", 50, 500),
        )  # fmt: skip

    async def scheduled(request: Request) -> Any:
        return await list_scheduled(
            conn(), _text(request, "namespace") or "default",
            stream=_text(request, "stream"), count=_int(request, "count", 100, 1000),
        )  # fmt: skip

    async def inspect(request: Request) -> Any:
        stream = _text(request, "stream", True)
        assert stream is not None
        return await inspect_stream(
            conn(), stream, start=_text(request, "start"), end=_text(request, "end"),
            where=request.query_params.getlist("where"), count=_int(request, "count", 20, 200),
            newest_first=request.query_params.get("newest_first") in ("1", "true"),
            schema=_schema(app, stream),
        )  # fmt: skip

    async def audit(request: Request) -> Any:
        return {"actions": await read_audit(conn(), _int(request, "count", 50, 1000))}

    async def act(request: Request) -> Response:
        refused = check_action_request(request, operator_token)
        if refused is not None:
            return refused
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSON({"error": f"the body is over {MAX_BODY_BYTES} bytes"}, 413)
        actor = Actor("dashboard", actor_name(request))
        name = request.path_params["name"]

        async def run(_: Request) -> Any:
            return await admin_actions.perform(conn(), name, bytes(body), actor)

        return await answer(run)(request)

    return [
        Route("/api/session", answer(session)),
        Route("/api/agents", answer(agents)),
        Route("/api/dead", answer(dead)),
        Route("/api/dead/entry", answer(dead_entry)),
        Route("/api/pending", answer(pending)),
        Route("/api/scheduled", answer(scheduled)),
        Route("/api/inspect", answer(inspect)),
        Route("/api/audit", answer(audit)),
        Route("/api/actions/{name}", act, methods=["POST"]),
    ]


def _schema(app: App | None, stream: str) -> StructCodec | None:
    """The codec of the app's agent that reads `stream` (or its partitions), when it has one."""
    if app is None:
        return None
    for agent in app.agents:
        base = agent.config.stream
        if stream == base or (stream.startswith(base + ":p") and stream[len(base) + 2 :].isdigit()):
            codec = getattr(agent, "codec", None)
            if codec is not None:
                return codec  # type: ignore[no-any-return]
    return None
