"""The operations behind the MCP server's tools, without the `mcp` SDK: the server's state (Redis
URL, settings, connection), the size limits, the masking of secrets, the translation of errors
into messages that say what to do, the Redis and instance tools with their output models, and the
config and status resources. `streams`, `storage`, `ops` and `ohlc` hold the other tools, and
`results` what every result shares; `server` wires them all into the SDK.

A tool is an async method whose signature (pydantic-annotated arguments) and docstring become the
MCP tool's input schema and description, and whose pydantic return type its output schema. A tool
refuses with `ToolFailure`; any exception is turned into a message by `Tools.failure`.

Example:
    >>> tools = Tools("memory://", Settings(), read_only=True, timeout_s=15.0)
    >>> tools.masked_url
    'memory://'
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

import anyio
from pydantic import BaseModel, Field
from redis.exceptions import AuthenticationError, ResponseError

from ..admin import queries as sm_queries
from ..admin.instances import list_instances
from ..codec import as_text
from ..connection import LoopClient, RedisConnection
from ..exceptions import REDIS_FAILURES, StreamMachineError
from ..settings import Settings
from ..state.storage import Storage
from ..urls import mask_url, url_secrets
from .results import (
    CALL_TIMEOUT_S,
    MAX_FIELDS,
    MAX_RESULT_BYTES,
    MAX_VALUE_CHARS,
    Bounded,
    Confirm,
    ConfirmedBy,
    ToolFailure,
    clip,
    clip_fields,
    fit,
    jsonable,
)

__all__ = [
    "CALL_TIMEOUT_S",
    "MAX_FIELDS",
    "MAX_RESULT_BYTES",
    "MAX_VALUE_CHARS",
    "Bounded",
    "Confirm",
    "ConfirmedBy",
    "ToolFailure",
    "Tools",
    "clip",
    "clip_fields",
    "fit",
    "jsonable",
]

log = logging.getLogger("streammachine.mcp")

_SECRET_NAME = re.compile(r"pass|auth|secret|token|credential|private", re.IGNORECASE)

# -- output models ----------------------------------------------------------------------------


class HealthResult(BaseModel):
    healthy: bool
    redis: str
    redis_url: str
    redis_version: str | None
    latency_ms: float
    instances: int


class InfoResult(Bounded):
    section: str | None
    info: dict[str, Any]
    hidden: list[str] = Field(
        default=[], description="Fields left out because they may hold secrets."
    )


class PingResult(BaseModel):
    pong: bool
    latency_ms: float


class Instance(BaseModel):
    id: str
    app: str | None
    host: str | None
    pid: int | None
    version: str | None
    started_at: float | None
    heartbeat_age_s: float | None
    fresh: bool
    agents: list[dict[str, Any]]
    timers: list[dict[str, Any]]


class InstancesResult(Bounded):
    instances: list[Instance]


# -- the state and the tools ----------------------------------------------------------------------


class Tools:
    """The server's state (Redis URL, settings, OHLC aggregators), the Redis and instance tools
    and the resources; `tool_names` are the tools the server offers (for the config resource).

    Example:
        >>> tools = Tools("redis://u:pw@db:6379/0", Settings(), read_only=False, timeout_s=15.0)
        >>> tools.scrub("AUTH pw failed")
        'AUTH *** failed'
    """

    def __init__(
        self,
        url: str,
        settings: Settings,
        read_only: bool,
        timeout_s: float,
        tool_names: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.settings = settings
        self.read_only = read_only
        self.timeout_s = timeout_s
        self.tool_names = list(tool_names)
        self.aggregators: dict[str, Any] = {}  # the OHLC aggregators (see ohlc)
        self._redis = LoopClient(url, settings=settings)
        self._users = 0
        # Every credential of the URL (userinfo and query forms), and those of REDIS_URL when
        # the server was given another URL: a server error may quote one back.
        found = url_secrets(url) + url_secrets(settings.redis_url or "")
        self._secrets = [s for s in (*found, settings.secret_key) if s]

    # -- plumbing

    @property
    def conn(self) -> RedisConnection:
        """This event loop's connection (redis-py connections belong to one loop)."""
        return self._redis.conn

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def scrub(self, text: str) -> str:
        """`text` with every known secret replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @asynccontextmanager
    async def lifespan(self, _server: Any) -> AsyncIterator[None]:
        """Check Redis when the first session starts; close the connection after the last."""
        self._users += 1
        if self._users == 1:
            try:
                with anyio.fail_after(2):
                    await self.conn.client.ping()
            except Exception as exc:  # the server still starts; each tool reports the error
                reason = self.scrub(str(exc)) or type(exc).__name__
                log.warning("Redis at %s does not answer yet: %s", self.masked_url, reason)
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                with anyio.CancelScope(shield=True):
                    await self._redis.close()

    def failure(self, name: str, exc: Exception) -> str:
        """The error result's text for tool `name` failing with `exc`, secrets masked."""
        if isinstance(exc, ToolFailure):
            return self.scrub(str(exc))
        if isinstance(exc, TimeoutError):
            return f"{name}: no answer from Redis at {self.masked_url} within {self.timeout_s:g} s"
        return self.scrub(self.explain(name, exc))

    def explain(self, name: str, exc: Exception) -> str:
        """What went wrong and what to do about it."""
        if isinstance(exc, AuthenticationError):
            return f"Redis at {self.masked_url} refused the credentials ({exc}); check REDIS_URL"
        if isinstance(exc, ResponseError):
            text = str(exc)
            if text.startswith("WRONGTYPE"):
                return f"{name}: a key holds another type than this tool needs ({text})"
            if text.startswith("NOGROUP"):
                return f"{name}: no such consumer group ({text}); see stream_info for the groups"
            return f"{name}: Redis refused the command: {text}"
        if isinstance(exc, REDIS_FAILURES):  # RedisUnavailableError is an OSError
            return (
                f"cannot reach Redis at {self.masked_url}: "
                f"{str(exc).rstrip('. ') or type(exc).__name__}. "
                "Start redis-server or point REDIS_URL (or --redis-url) at a reachable server."
            )
        if isinstance(exc, StreamMachineError | ValueError | TypeError):
            return f"{name}: {exc}"
        log.exception("MCP tool %s failed", name)
        return f"{name} failed: {type(exc).__name__}: {exc}"

    def storage(self, namespace: str | None) -> Storage:
        return Storage(namespace or self.settings.storage_namespace, redis=self.conn)

    # -- Redis

    async def health_check(self) -> HealthResult:
        """Check that Redis answers (PING), its version and latency, and count the registered
        app instances. An unreachable Redis is an error result."""
        c = self.conn.client
        try:
            info = await sm_queries.server_info(c)
        except Exception as exc:
            raise ToolFailure(f"unhealthy: {self.explain('health_check', exc)}") from None
        try:
            instances = len(await list_instances(c))
        except ResponseError:  # an ACL without SCAN: Redis itself is fine
            instances = 0
        return HealthResult(
            healthy=True, redis="connected", redis_url=self.masked_url, instances=instances, **info
        )

    async def redis_info(
        self,
        section: Annotated[
            str | None, Field(pattern=r"^[A-Za-z_]{1,32}$", description="e.g. server, memory.")
        ] = None,
    ) -> InfoResult:
        """Redis INFO, all of the default sections or one (server, clients, memory, persistence,
        stats, replication, cpu, keyspace, ...). Fields that may hold credentials are left out."""
        try:
            raw = await self.conn.client.info(section) if section else await self.conn.client.info()
        except ResponseError as exc:
            if "unknown command" in str(exc).lower() or self.conn.is_memory:
                raise ToolFailure(f"this Redis has no INFO command ({exc})") from None
            raise
        info, hidden = self.redact(raw)
        out: dict[str, Any] = {}
        used = 0
        for k, v in info.items():
            used += len(k) + len(json.dumps(v, default=str)) + 4
            if used > MAX_RESULT_BYTES:
                break
            out[k] = v
        over = len(out) < len(info)
        note = "too large: ask for one section" if over else None
        return InfoResult(section=section, info=out, hidden=hidden, truncated=over, note=note)

    def redact(self, info: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """INFO without the fields whose name or value could be a credential."""
        out: dict[str, Any] = {}
        hidden: list[str] = []
        for k, v in info.items():
            value = jsonable(v)
            text = json.dumps(value, default=str)
            if _SECRET_NAME.search(k) or any(s in text for s in self._secrets):
                hidden.append(k)
                continue
            out[k] = value
        return out, hidden

    async def redis_ping(self) -> PingResult:
        """PING Redis; returns the round-trip time."""
        t0 = time.perf_counter()
        pong = bool(await self.conn.client.ping())
        return PingResult(pong=pong, latency_ms=round((time.perf_counter() - t0) * 1000, 3))

    # -- instances

    async def app_instances(
        self,
        app: Annotated[str | None, Field(description="Only this app's instances.")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> InstancesResult:
        """Running StreamMachine processes (their heartbeat records in Redis): app, host, pid,
        version, heartbeat age, and each agent's stream, group and counters."""
        found = [i for i in await list_instances(self.conn.client) if app in (None, i.get("app"))]
        out = [_instance(r) for r in found[:limit]]
        kept, over = fit(out)
        cut = over or len(found) > limit
        note = f"showing {len(kept)} of {len(found)} instances" if cut else None
        return InstancesResult(instances=kept, truncated=cut, note=note)

    # -- resources

    def config(self) -> str:
        """Settings (Redis password and secret key masked), the relevant environment, the tools."""
        settings = asdict(self.settings)
        settings["redis_url"] = mask_url(settings["redis_url"]) if settings["redis_url"] else None
        settings["secret_key"] = "***" if settings["secret_key"] else None
        env = {
            k: ("***" if _SECRET_NAME.search(k) else self.scrub(mask_url(v)))
            for k, v in sorted(os.environ.items())
            if k.startswith(("REDIS_", "STREAMMACHINE_"))
        }
        from .. import __version__

        return json.dumps(
            {
                "version": __version__,
                "redis_url": self.masked_url,
                "read_only": self.read_only,
                "settings": settings,
                "environment": env,
                "tools": self.tool_names,
                "limits": {
                    "max_result_bytes": MAX_RESULT_BYTES,
                    "max_value_chars": MAX_VALUE_CHARS,
                    "call_timeout_s": self.timeout_s,
                },
            },
            indent=2,
        )

    async def status(self) -> str:
        """Redis health and version, stream count, app instances, storage and OHLC state."""
        from .. import __version__

        out: dict[str, Any] = {"server": {"version": __version__, "read_only": self.read_only}}
        c = self.conn.client
        try:
            with anyio.fail_after(self.timeout_s):
                info = await sm_queries.server_info(c)
                out["redis"] = {"healthy": True, "url": self.masked_url, **info}
                n = 0
                async for _ in c.scan_iter(count=1000, _type="stream"):
                    n += 1
                    if n >= 10000:
                        break
                out["streams"] = {"count": n, "capped": n >= 10000}
                instances = await list_instances(c, limit=100)
                out["instances"] = [
                    {"key": i["key"], "app": i.get("app"), "host": i.get("host"),
                     "pid": i.get("pid"), "age_s": i.get("heartbeat_age_s")}
                    for i in instances
                ]  # fmt: skip
                store = self.storage(None)
                out["storage"] = {"namespace": store.namespace, "keys": len(await store.keys())}
        except Exception as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else None
            out["redis"] = {
                "healthy": False,
                "url": self.masked_url,
                "error": reason or self.scrub(self.explain("status", exc)),
            }
        out["ohlc_aggregators"] = sorted(self.aggregators)
        return json.dumps(out, indent=2, default=str)


def _instance(r: Mapping[str, Any]) -> Instance:
    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) else None

    agents = []
    for a in list(r.get("agents") or [])[:50]:
        if isinstance(a, Mapping):
            raw_stats = a.get("stats")
            stats: Mapping[str, Any] = raw_stats if isinstance(raw_stats, Mapping) else {}
            keep = ("processed", "failed", "retried", "dead", "skipped")
            agents.append(
                {k: a.get(k) for k in ("name", "stream", "group", "concurrency")}
                | {k: stats.get(k) for k in keep}
            )
    pid = r.get("pid")
    return Instance(
        id=as_text(r.get("id", "")), app=r.get("app"), host=r.get("host"),
        pid=int(str(pid)) if str(pid).isdecimal() else None,
        version=r.get("version"), started_at=num(r.get("started_at")),
        heartbeat_age_s=num(r.get("heartbeat_age_s")), fresh=bool(r.get("fresh")),
        agents=jsonable(agents), timers=jsonable(list(r.get("timers") or [])[:50]),
    )  # fmt: skip
