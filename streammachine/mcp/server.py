"""The MCP server: StreamMachine's streams, storage, objects, OHLC aggregators, Redis health and
the operator actions (pause, dead letters, pending, rewind, delayed entries, inspector, audit) as
tools an LLM client can call (the SDK, 2.x, is imported here and in `confirm`). This module wires
the SDK; the tools are in `tools`, `streams`, `storage`, `ops` and `ohlc`, the confirmations in
`confirm`, the texts in `prompts`.

Safety model:
    - Every tool carries all four MCP annotations (readOnly, destructive, idempotent, openWorld).
      `read_only=True` (`streammachine mcp --read-only`) registers the read-only tools only.
    - The tools that delete or take away data (`CONFIRMED_TOOLS`: storage, objects, OHLC, and
      the operator tools that purge, edit, dead-letter, hand back, rewind or cancel) need a
      confirmation: a client that supports elicitation is asked (the user must accept
      `confirm: true`); any other client must pass `confirm: true`. Without it nothing changes.
      A dry run needs none. Every operator action is written to the audit trail as `mcp`.
    - Bad arguments, Redis errors (unreachable, WRONGTYPE, NOGROUP) and refusals are error results
      (`isError`) with a message that names the argument or says what to do; never a crash, never
      a success. Passwords never appear in results or messages.
    - Results are JSON with output schemas, ids and values as text, bounded in entries and bytes;
      a cut result says so in `note` (and `stream_read` returns a `next` cursor).
    - `obj_get` unpickles only values signed with `STREAMMACHINE_SECRET_KEY`.

Example:
    >>> server = create_server("redis://localhost:6379/0", read_only=True)  # doctest: +SKIP
    >>> anyio.run(serve, server)  # stdio  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, ToolAnnotations
from pydantic import ConfigDict

from ..exceptions import ConfigError
from ..settings import Settings
from ..urls import validate_url
from . import prompts as texts
from .confirm import confirmed_tools
from .ohlc import OhlcTools
from .ops import CONFIRMED, OpsTools, mcp_client
from .storage import StorageTools
from .streams import StreamTools
from .tools import CALL_TIMEOUT_S, Tools
from .windows import WindowTools

__all__ = ["CONFIRMED_TOOLS", "TOOLS", "create_server", "serve", "tidy_validation_error"]

# name: (title, readOnlyHint, destructiveHint, idempotentHint); openWorldHint is False for all:
# every tool acts on this one Redis and this process, never on an open set of outside systems.
TOOLS: dict[str, tuple[str, bool, bool, bool]] = {
    "stream_send": ("Send a message to a stream", False, False, False),
    "stream_send_batch": ("Send messages to a stream", False, False, False),
    "stream_read": ("Read stream entries", True, False, True),
    "stream_info": ("Describe a stream", True, False, True),
    "stream_list": ("List streams", True, False, True),
    "stream_pending": ("Pending entries of consumer groups", True, False, True),
    "stream_dead_letters": ("Dead letters of a stream", True, False, True),
    "storage_read": ("Read a storage key", True, False, True),
    "storage_write": ("Write a storage key", False, True, True),
    "storage_delete": ("Delete a storage key", False, True, True),
    "storage_keys": ("List storage keys", True, False, True),
    "table_list": ("List tables", True, False, True),
    "table_get": ("Read keys of a table", True, False, True),
    "storage_clear": ("Delete every storage key of a namespace", False, True, True),
    "health_check": ("Check Redis health", True, False, True),
    "redis_info": ("Redis server INFO", True, False, True),
    "redis_ping": ("Ping Redis", True, False, True),
    "obj_get": ("Read a stored object", True, False, True),
    "obj_list": ("List stored objects", True, False, True),
    "obj_delete": ("Delete stored objects", False, True, True),
    "ohlc_create": ("Create an OHLC aggregator", False, False, True),
    "ohlc_update": ("Add a tick to an OHLC aggregator", False, False, False),
    "ohlc_get_candles": ("Candles of a symbol", True, False, True),
    "ohlc_get_completed": ("Completed candles of a symbol", True, False, True),
    "ohlc_flush": ("Remove (and emit) completed candles", False, True, True),
    "ohlc_clear": ("Clear an OHLC aggregator", False, True, True),
    "ohlc_stats": ("OHLC aggregator statistics", True, False, True),
    "ohlc_list": ("List OHLC aggregators", True, False, True),
    "app_instances": ("Running StreamMachine instances", True, False, True),
    "agents_list": ("Agents and their paused state", True, False, True),
    "agent_pause": ("Pause an agent everywhere", False, False, True),
    "agent_resume": ("Resume a paused agent", False, False, True),
    "dead_show": ("One dead letter, decoded and raw", True, False, True),
    "dead_retry": ("Send dead letters back", False, False, False),
    "dead_edit_retry": ("Edit a dead letter and send it back", False, True, False),
    "dead_purge": ("Delete dead letters", False, True, True),
    "pending_dead_letter": ("Dead-letter pending entries", False, True, True),
    "pending_hand_back": ("Hand pending entries back to their group", False, True, True),
    "group_rewind": ("Rewind a consumer group", False, True, True),
    "scheduled_list": ("Delayed entries waiting", True, False, True),
    "scheduled_promote": ("Deliver delayed entries now", False, False, True),
    "scheduled_cancel": ("Cancel delayed entries", False, True, True),
    "stream_inspect": ("Browse a stream, decoded and raw", True, False, True),
    "audit_log": ("What operators did", True, False, True),
    "windows_list": ("Window agents: open windows, watermark, late", True, False, True),
}
#: The tools that delete or take away data and so need a confirmation.
CONFIRMED_TOOLS = ("storage_delete", "storage_clear", "obj_delete", "ohlc_clear", *CONFIRMED)

ToolFn = Callable[..., Awaitable[Any]]

# -- errors ---------------------------------------------------------------------------------------


def _strict(tool: Tool) -> Tool:
    """`tool` validating its arguments strictly against its input schema: `"10"` is not an
    integer, and an argument the schema does not name is refused (`additionalProperties: false`)
    rather than ignored, so a client's mistake is reported instead of half-obeyed."""
    base = tool.fn_metadata.arg_model
    config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)
    strict: type[ArgModelBase] = type(
        base.__name__, (base,), {"model_config": config, "__module__": base.__module__}
    )
    tool.fn_metadata.arg_model = strict
    tool.parameters = strict.model_json_schema(by_alias=True)
    return tool


def _guard(tools: Tools, name: str, fn: ToolFn) -> ToolFn:
    """`fn` with a time limit, and every failure turned into an error result that says why."""

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with anyio.fail_after(tools.timeout_s):
                return await fn(*args, **kwargs)
        except Exception as exc:
            raise ToolError(tools.failure(name, exc)) from None

    return call


_INVALID = re.compile(r"^(Error executing tool \w+: )\d+ validation errors? for \w+\n(.*)$", re.S)
_DETAIL = re.compile(r"\s*\[type=[^,\]]*(?:, input_value=(.*?), input_type=\w+)?\]\s*$")


def tidy_validation_error(text: str) -> str:
    """Pydantic's report on bad tool arguments as one line per argument, e.g.
    `Error executing tool stream_read: argument 'count': Input should be <= 1000 (got 5000)`."""
    m = _INVALID.match(text)
    if m is None:
        return text
    lines = [ln for ln in m.group(2).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    problems = []
    for loc, msg in zip(lines[::2], lines[1::2], strict=False):
        detail = _DETAIL.search(msg)
        got = f" (got {detail.group(1)})" if detail and detail.group(1) else ""
        text = _DETAIL.sub("", msg).strip()
        if text == "Extra inputs are not permitted":
            text, got = "this tool has no such argument (see its input schema)", ""
        problems.append(f"argument {loc.strip()!r}: {text}{got}")
    return m.group(1) + "; ".join(problems) if problems else text


async def _tidy_errors(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
    result = await call_next(ctx)  # the wire form: a dict
    if isinstance(result, dict) and result.get("isError"):
        for block in result.get("content") or []:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                block["text"] = tidy_validation_error(block["text"])
    return result


async def _client_name(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
    """Note who calls (the name its `initialize` gave), so the audit trail can say it."""
    try:
        info = ctx.session.client_params.client_info
        name = f"{info.name} {info.version}".strip()
    except Exception:  # no session, no client info: anonymous
        name = ""
    token = mcp_client.set(name[:200])
    try:
        return await call_next(ctx)
    finally:
        mcp_client.reset(token)


# -- the server -----------------------------------------------------------------------------------


def _prompt_names_checked(prompts: list[str]) -> Any:
    """A middleware answering `prompts/get` of an unknown name with the names there are (the
    SDK's own answer is "Internal server error")."""

    async def check(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if ctx.method == "prompts/get":
            name = (ctx.params or {}).get("name")
            if name not in prompts:
                raise MCPError(
                    INVALID_PARAMS,
                    f"no prompt named {name!r}: this server's prompts are {', '.join(prompts)}",
                )
        return await call_next(ctx)

    return check


def _register_prompts(server: MCPServer[Any], read_only: bool) -> list[str]:
    """Register the prompts; returns their names."""
    names = ", ".join(texts.PATTERNS)

    @server.prompt(
        name="streammachine-guide",
        title="StreamMachine guide",
        description="How StreamMachine works, what each tool of this server does, how to start.",
    )
    def streammachine_guide(task: str = "") -> str:
        return texts.guide(read_only, task)

    @server.prompt(
        name="stream-processing-patterns",
        title="Stream processing patterns",
        description=f"Common StreamMachine patterns with working code: {names}.",
    )
    def stream_processing_patterns(pattern: str = "") -> str:
        try:
            return texts.patterns(pattern)
        except ValueError as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from None

    return ["streammachine-guide", "stream-processing-patterns"]


def create_server(
    url: str | None = None,
    *,
    read_only: bool = False,
    settings: Settings | None = None,
    timeout_s: float = CALL_TIMEOUT_S,
) -> MCPServer[Any]:
    """An MCP server with StreamMachine's tools, resources and prompts, for one Redis.

    Args:
        url: the Redis URL (default: `REDIS_URL`, else `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`).
        read_only: register only the read-only tools.
        settings: the settings to use (default: `Settings.current()`).
        timeout_s: the time limit of one tool call.

    Raises:
        ConfigError: the URL is not a Redis URL.

    Example:
        >>> server = create_server("memory://", read_only=True)
        >>> server.name
        'streammachine'
    """
    from .. import __version__

    settings = settings or Settings.current()
    url = validate_url(url or settings.resolve_url())
    if timeout_s <= 0:
        raise ConfigError(f"timeout_s must be > 0, not {timeout_s!r}")
    names = [n for n, hints in TOOLS.items() if hints[1] or not read_only]
    tools = Tools(url, settings, read_only, timeout_s, names)
    store, ohlc, ops = StorageTools(tools), OhlcTools(tools), OpsTools(tools)
    confirmed = confirmed_tools(store, ohlc, ops)
    providers = (tools, StreamTools(tools), store, ohlc, ops, WindowTools(tools))
    registered = []
    for name in names:
        title, ro, destructive, idempotent = TOOLS[name]
        hints = ToolAnnotations(
            title=title,
            read_only_hint=ro,
            destructive_hint=destructive,
            idempotent_hint=idempotent,
            open_world_hint=False,
        )
        operation = next(getattr(p, name) for p in providers if hasattr(p, name))
        tool = Tool.from_function(
            _guard(tools, name, confirmed.get(name, operation)),
            name=name,
            title=title,
            description=" ".join((operation.__doc__ or "").split()),
            annotations=hints,
            structured_output=True,
        )
        registered.append(_strict(tool))
    # MCPServer() calls logging.basicConfig(); a library must not configure logging, so while it
    # runs the root logger has a handler and that call does nothing.
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    try:
        server: MCPServer[Any] = MCPServer(
            "streammachine",
            title="StreamMachine",
            version=__version__,
            instructions=texts.instructions(read_only),
            lifespan=tools.lifespan,
            tools=registered,
        )
    finally:
        root.removeHandler(placeholder)
    server.resource(
        "streammachine://config", name="config", title="StreamMachine configuration",
        description="Settings and environment (secrets masked), tools and limits.",
        mime_type="application/json",
    )(tools.config)  # fmt: skip
    server.resource(
        "streammachine://status", name="status", title="StreamMachine status",
        description="Redis health and version, streams, app instances, storage, OHLC.",
        mime_type="application/json",
    )(tools.status)  # fmt: skip
    prompts = _register_prompts(server, read_only)
    server.middleware.append(_client_name)
    server.middleware.append(_tidy_errors)
    server.middleware.append(_prompt_names_checked(prompts))
    return server


async def serve(
    server: MCPServer[Any],
    transport: Literal["stdio", "http"] = "stdio",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
) -> None:
    """Serve `server` over stdio (protocol only on stdout) or streamable HTTP at `/mcp`.

    Example:
        >>> anyio.run(serve, create_server())  # doctest: +SKIP
    """
    if transport == "stdio":
        await server.run_stdio_async()
    elif transport == "http":
        import uvicorn

        # log_config=None: uvicorn logs through the logging the caller set up (the CLI: stderr).
        app = server.streamable_http_app(host=host)
        await uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None)).serve()
    else:
        raise ConfigError(f"transport must be 'stdio' or 'http', not {transport!r}")
