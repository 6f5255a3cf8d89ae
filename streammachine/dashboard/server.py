"""The dashboard's Starlette app and its uvicorn server; it reads Redis only.

Routes: `/` (the page), `/static/*` (its scripts and style), `/api/status` (the snapshot as
JSON), `/api/history` (the last minutes of throughput, lag, pending and dead letters),
`/asyncapi.json` (the app's AsyncAPI document, when the dashboard runs inside an app),
`/healthz` (liveness), `/readyz` (Redis reachable, no instance late, no delayed backlog),
`/metrics` (Prometheus text), the operator API (`ops`: `/api/agents`, ..., `POST /api/actions/…`),
the state API (`state`: `/api/tables`, `/api/windows`, ...). Who may read and act: see `guard`.
"""

from __future__ import annotations

import contextlib
import errno
import html
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..admin.instances import list_instances, unowned_partitions
from ..connection import RedisConnection
from ..exceptions import REDIS_FAILURES, StreamMachineError
from ..schedule.backlog import backlog_problems, read_scheduled
from ..settings import DASHBOARD_TOKEN_ENV as TOKEN_ENV
from ..settings import Settings
from ..urls import mask_url
from .guard import JSON, Guard
from .history import History
from .metrics import render_metrics
from .ops import ops_routes
from .state import state_routes
from .status import collect_status, unavailable

if TYPE_CHECKING:
    from ..app import App

__all__ = ["TOKEN_ENV", "create_dashboard", "serve_dashboard"]

log = logging.getLogger("streammachine.dashboard")

#: Besides Redis' own errors, what a bad URL setting raises at the first command (redis-py's
#: TypeError for an option the connection class does not take): answered 503, never 500.
_READ_FAILURES: tuple[type[BaseException], ...] = (
    *REDIS_FAILURES,
    StreamMachineError,
    TypeError,
    ValueError,
)
#: How long one Redis read may take before the request answers "unavailable".
READ_TIMEOUT_S = 5.0
#: How long one snapshot serves every request (pages, API, scrapes).
SNAPSHOT_MAX_AGE_S = 1.0
#: How often the dashboard records a snapshot into its history, and how much it keeps.
HISTORY_INTERVAL_S = 2.0
HISTORY_WINDOW_S = 900.0
_NO_ASYNCAPI = (
    "this dashboard runs without an app (standalone `streammachine dashboard`), so it has no "
    "AsyncAPI document: run `streammachine asyncapi APP`, or serve the dashboard from the app "
    "(`streammachine run APP --dashboard`)"
)
_JS = "text/javascript"
_STATIC = {"app.js": _JS, "ops.js": _JS, "state.js": _JS, "style.css": "text/css"}


class _Backend:
    """The dashboard's own small Redis pool (created on first use in the serving loop) and the
    latest snapshot, shared by requests for `SNAPSHOT_MAX_AGE_S`, so many open pages and
    scrapers cost Redis one snapshot a second, not one each."""

    def __init__(self, redis_url: str, history: History, settings: Settings) -> None:
        self.url = redis_url
        self.history = history
        self.settings = settings
        self._conn: RedisConnection | None = None
        self._lock: anyio.Lock | None = None
        self._snapshot: dict[str, Any] | None = None
        self._taken_at = 0.0

    def conn(self) -> RedisConnection:
        """The dashboard's connection (a bad URL raises ConfigError here, answered 503)."""
        if self._conn is None:
            self._conn = RedisConnection(url=self.url, max_connections=4, settings=self.settings)
        return self._conn

    @property
    def client(self) -> aioredis.Redis:
        return self.conn().client

    async def status(self, max_age_s: float = SNAPSHOT_MAX_AGE_S) -> dict[str, Any]:
        self._lock = self._lock or anyio.Lock()
        async with self._lock:
            now = anyio.current_time()
            if self._snapshot is None or now - self._taken_at >= max_age_s:
                self._snapshot, self._taken_at = await self._read(), now
            return self._snapshot

    async def poll(self) -> None:
        """Record a snapshot into the history every interval, page open or not (forever:
        cancel it). The snapshot is the one requests share, so this adds no Redis load."""
        interval = self.history.interval_s
        while True:
            try:
                self.history.record(await self.status(min(SNAPSHOT_MAX_AGE_S, interval / 2)))
            except Exception:  # a bad record must not end the history
                log.exception("dashboard history: could not record a snapshot")
            await anyio.sleep(interval)

    async def _read(self) -> dict[str, Any]:
        try:
            with anyio.fail_after(READ_TIMEOUT_S):
                return await collect_status(self.client)
        except _READ_FAILURES as exc:  # TimeoutError (fail_after) is an OSError
            return unavailable(f"cannot read Redis at {mask_url(self.url)}: {exc or 'timeout'}")

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(*REDIS_FAILURES):
                await conn.close()


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text("utf-8")


def create_dashboard(
    redis_url: str,
    *,
    token: str | None = None,
    operator_token: str | None = None,
    allowed_hosts: frozenset[str] | None = None,
    settings: Settings | None = None,
    app: App | None = None,
    history_interval_s: float = HISTORY_INTERVAL_S,
    history_window_s: float = HISTORY_WINDOW_S,
) -> Starlette:
    """The dashboard as an ASGI app that reads everything from Redis at `redis_url`.

    Its history (`/api/history`) is recorded by a task that the ASGI lifespan starts (or
    `run_dashboard_server`, which runs uvicorn without a lifespan).

    Args:
        redis_url: the Redis the apps run on (any URL `RedisConnection` accepts).
        token: require this bearer token on every route but `/healthz` (default: the
            settings' `dashboard_token`, `STREAMMACHINE_DASHBOARD_TOKEN`; empty = no auth).
        operator_token: the token that allows actions (default: the settings'
            `dashboard_operator_token`; unset = read-only).
        allowed_hosts: answer only these `Host` names (and IP addresses and `localhost`);
            None = any (see `guard`).
        settings: where the defaults come from (default: `Settings.current()`, read here once).
        app: the App this dashboard runs in, for `/asyncapi.json` (404 without one).
        history_interval_s: seconds between the snapshots kept for the charts.
        history_window_s: how many seconds of them are kept.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_dashboard("redis://localhost:6379/0"), port=8000)  # doctest: +SKIP
    """
    settings = settings or (app.settings if app is not None else Settings.current())
    token = settings.dashboard_token if token is None else token
    operator = settings.dashboard_operator_token if operator_token is None else operator_token
    backend = _Backend(redis_url, History(history_interval_s, history_window_s), settings)
    asyncapi: list[dict[str, Any]] = []  # built on first request: agents are registered by then
    page = _asset("index.html")
    assets = {name: _asset(name) for name in _STATIC}

    async def index(request: Request) -> Response:
        # The page holds no data; a token given as ?token= is passed on to its assets.
        given = request.query_params.get("token", "") if token else ""
        suffix = html.escape("?token=" + quote(given, safe=""), quote=True) if given else ""
        return Response(page.replace("__ASSET_QUERY__", suffix), media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return PlainTextResponse("not found\n", status_code=404)
        return Response(assets[name], media_type=_STATIC[name])

    async def api_status(request: Request) -> Response:
        status = await backend.status()
        return JSON(status, status_code=200 if status["redis"]["ok"] else 503)

    async def api_history(request: Request) -> Response:
        raw = request.query_params.get("since")
        try:
            since = int(raw) if raw else None
        except ValueError:
            return JSON({"error": "since must be a time in ms, e.g. since=1700000000000"}, 400)
        return JSON(backend.history.as_dict(since))

    async def asyncapi_json(request: Request) -> Response:
        if app is None:
            return JSON({"error": _NO_ASYNCAPI}, status_code=404)
        if not asyncapi:
            from ..admin.asyncapi import asyncapi_document

            asyncapi.append(asyncapi_document(app))
        return JSON(asyncapi[0])

    async def healthz(request: Request) -> Response:
        return JSON({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            with anyio.fail_after(READ_TIMEOUT_S):
                await backend.client.ping()
                instances = await list_instances(backend.client)
        except _READ_FAILURES as exc:  # TimeoutError (fail_after) is an OSError
            reason = f"redis unreachable at {mask_url(redis_url)}: {exc or 'timeout'}"
            return JSON({"ready": False, "reason": reason}, status_code=503)
        late = [str(i.get("id")) for i in instances if not i.get("fresh")]
        if late:
            reason = f"instance heartbeat late: {', '.join(late)}"
            return JSON({"ready": False, "reason": reason}, status_code=503)
        try:
            with anyio.fail_after(READ_TIMEOUT_S):
                unowned, problems = await unowned_partitions(backend.client, instances)
                stuck, problems = backlog_problems(await read_scheduled(backend.client), problems)
        except _READ_FAILURES as exc:
            reason = f"redis unreachable at {mask_url(redis_url)}: {exc or 'timeout'}"
            return JSON({"ready": False, "reason": reason}, status_code=503)
        if unowned:
            stuck.insert(0, "partitions without a live owner: " + "; ".join(unowned))
        if stuck:
            return JSON({"ready": False, "reason": "; ".join(stuck), "problems": problems}, 503)
        body: dict[str, Any] = {"ready": True, "instances": len(instances)}
        if problems:
            body["problems"] = problems
        return JSON(body)

    async def metrics(request: Request) -> Response:
        # Redis down is a metric (streammachine_redis_up 0), not a failed scrape.
        body, content_type = render_metrics(await backend.status(), request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.poll)
            yield
            tg.cancel_scope.cancel()
        await backend.aclose()

    asgi = Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static),
            Route("/api/status", api_status),
            Route("/api/history", api_history),
            Route("/asyncapi.json", asyncapi_json),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *ops_routes(backend.conn, operator or None, app, redis_url),
            *state_routes(backend.conn, app, redis_url),
        ],
        lifespan=lifespan,
    )
    asgi.state.backend = backend
    asgi.state.token = token
    asgi.state.operator_token = operator or None
    asgi.add_middleware(
        Guard, token=token or None, operator_token=operator or None, allowed_hosts=allowed_hosts
    )
    return asgi


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the App (or the CLI) owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def run_dashboard_server(
    redis_url: str,
    host: str,
    port: int,
    stop: anyio.Event,
    token: str | None = None,
    *,
    operator_token: str | None = None,
    settings: Settings | None = None,
    app: App | None = None,
    history_interval_s: float = HISTORY_INTERVAL_S,
) -> bool:
    """Serve until `stop` is set; False (and one log line) when the port cannot be bound.

    Without a read token the server answers only `Host` names that cannot come from another
    site: IP addresses, `localhost`, and the settings' `dashboard_allowed_hosts` (see `guard`).
    """
    settings = settings or (app.settings if app is not None else Settings.current())
    try:
        # Bound here, not by uvicorn: uvicorn calls sys.exit() when a port is taken.
        sock = _bind(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.error("dashboard port %d is in use; running without the dashboard", port)
        else:
            log.error("dashboard cannot listen on %s:%d (%s); running without it", host, port, exc)
        return False
    token = settings.dashboard_token if token is None else token
    asgi = create_dashboard(
        redis_url,
        token=token,
        operator_token=operator_token,
        allowed_hosts=None if token else frozenset(settings.dashboard_allowed_hosts),
        settings=settings,
        app=app,
        history_interval_s=history_interval_s,
    )
    if host not in ("127.0.0.1", "::1", "localhost") and not asgi.state.token:
        log.warning("dashboard on %s has no token: set %s to require one", host, TOKEN_ENV)
    if asgi.state.operator_token:
        log.info("dashboard actions are on (an operator token is set)")
    config = uvicorn.Config(
        asgi, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = _Server(config)
    bound_port = sock.getsockname()[1]
    try:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await stop.wait()
                server.should_exit = True

            tg.start_soon(watch)
            tg.start_soon(asgi.state.backend.poll)  # no lifespan here, so it starts it
            log.info("dashboard at http://%s:%d/", host, bound_port)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()
    finally:
        sock.close()
        with anyio.CancelScope(shield=True):
            await asgi.state.backend.aclose()
    return True


async def serve_dashboard(
    redis_url: str,
    host: str,
    port: int,
    stop: anyio.Event,
    token: str | None = None,
    *,
    operator_token: str | None = None,
    settings: Settings | None = None,
    app: App | None = None,
    history_interval_s: float = HISTORY_INTERVAL_S,
) -> None:
    """Serve the dashboard on `host:port` until `stop` is set (an `App.background` task).

    Tokens and allowed hosts come from `settings` (default: the app's, else
    `Settings.current()`, read here at the entry), unless given.

    With `app` (as `App.run` passes itself) it also serves that app's `/asyncapi.json`;
    `history_interval_s` is how often it records the snapshot its charts are drawn from.

    A taken port is logged once (`dashboard port 8000 is in use; running without the
    dashboard`) and the call returns, so the app keeps running.

    Example:
        >>> app.background.append(  # doctest: +SKIP
        ...     functools.partial(serve_dashboard, "redis://localhost:6379/0", "127.0.0.1", 8000)
        ... )
    """
    try:
        await run_dashboard_server(
            redis_url, host, port, stop, token, operator_token=operator_token,
            settings=settings, app=app, history_interval_s=history_interval_s,
        )  # fmt: skip
    except Exception:  # the dashboard must never take the app down
        log.exception("the dashboard failed; the app keeps running without it")
