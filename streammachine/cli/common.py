"""Options every command shares, and the one way the CLI reports a user mistake."""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from ..connection import RedisConnection

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0

RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="REDIS_URL",
        show_envvar=True,
        help="Redis URL (redis://, rediss://, unix://, memory://); default from REDIS_HOST/PORT/DB.",
    ),
]
LogLevel = Annotated[
    str,
    typer.Option(
        "--log-level", envvar="STREAMMACHINE_LOG_LEVEL", help="debug, info, warning, error."
    ),
]
LogFormat = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="STREAMMACHINE_LOG_FORMAT",
        help="text (Rich), json (one object per line) or auto (text on a terminal).",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="One JSON object per line, stable keys.")]


SHARED = ("redis_url", "log_level", "log_format")
F = TypeVar("F", bound=Callable[..., Any])


def command(group: typer.Typer, name: str, *, log_level: str = "warning") -> Callable[[F], F]:
    """Register `fn` as command `name` of `group` with the options every command shares, declared
    here once: `--redis-url`, `--log-level` (default `log_level`) and `--log-format`.

    Logging is set up (and the two log options checked) before the command runs; the command gets
    each of `redis_url`, `log_level`, `log_format` it has a parameter for (plain parameters: their
    declaration is this one).

    Example:
        >>> @command(app, "health")  # doctest: +SKIP
        ... def health(json_out: JsonOut = False, redis_url: str | None = None) -> None: ...
    """

    def register(fn: F) -> F:
        own = inspect.signature(fn, eval_str=True)
        wanted = [name for name in SHARED if name in own.parameters]
        kw = inspect.Parameter.KEYWORD_ONLY
        shared = [
            inspect.Parameter("redis_url", kw, default=None, annotation=RedisUrl),
            inspect.Parameter("log_level", kw, default=log_level, annotation=LogLevel),
            inspect.Parameter("log_format", kw, default="auto", annotation=LogFormat),
        ]
        params = [p for p in own.parameters.values() if p.name not in SHARED]
        params = [p.replace(kind=kw) for p in params] + shared

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in SHARED}
            setup(given["log_level"], given["log_format"])
            kwargs.update({name: given[name] for name in wanted})
            return fn(*args, **kwargs)

        signature = own.replace(parameters=params)
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        del run.__wrapped__  # typer must read this signature, not the function's own
        group.command(name)(run)
        return fn

    return register


class DefaultToList(TyperGroup):
    """A command group whose `list` is the default: `dead STREAM` means `dead list STREAM` (and,
    with `list_when_empty`, the bare group means `list`)."""

    list_when_empty = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        help_names = set(ctx.help_option_names)
        if args and args[0] not in self.commands and not help_names.intersection(args[:1]):
            args = ["list", *args]
        elif not args and self.list_when_empty:
            args = ["list"]
        return super().parse_args(ctx, args)


class ListWhenEmpty(DefaultToList):
    """`DefaultToList` that also lists when given nothing (`scheduled`)."""

    list_when_empty = True


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line on stderr and exit non-zero (user mistakes never show a traceback)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def resolve_url(redis_url: str | None) -> str:
    """The URL a command uses: the flag, else REDIS_URL, else REDIS_HOST/PORT/DB."""
    from ..settings import Settings
    from ..urls import validate_url

    if redis_url is not None:  # an explicit --redis-url '' is a mistake, not "use the default"
        return validate_url(redis_url)
    return validate_url(Settings.current().resolve_url())


def setup(log_level: str, log_format: str) -> None:
    """Validate the shared options and configure logging."""
    if log_format not in ("auto", "text", "json"):
        fail(f"--log-format must be text, json or auto, not {log_format!r}")
    if log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    from .logs import setup_logging

    setup_logging(log_level, log_format)


def with_redis(redis_url: str | None, fn: Callable[[RedisConnection], Awaitable[T]]) -> T:
    """Run `fn(conn)` on a fresh connection; a bad URL, an unreachable server, a wrong-type key
    or any StreamMachineError becomes one line on stderr and exit 1."""
    import anyio
    from redis.exceptions import RedisError, ResponseError

    from ..connection import RedisConnection
    from ..exceptions import StreamMachineError, map_redis_errors
    from ..process.runner import run_loop
    from ..urls import mask_url

    try:
        url = resolve_url(redis_url)
    except StreamMachineError as exc:
        fail(str(exc))

    async def main() -> T:
        conn = RedisConnection(url=url)
        try:
            with map_redis_errors(f"Redis at {mask_url(url)}"):
                try:
                    with anyio.fail_after(CONNECT_TIMEOUT_S):
                        await conn.client.ping()
                except TimeoutError:
                    raise TimeoutError(f"no answer within {CONNECT_TIMEOUT_S:g} s") from None
                return await fn(conn)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    try:
        return run_loop(main)
    except StreamMachineError as exc:
        fail(str(exc))
    except ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            fail(f"a key holds another type than the command needs ({exc}); check the name")
        fail(f"Redis refused the command: {exc}")
    except RedisError as exc:
        fail(f"Redis error: {exc}")


async def until_signal(body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` until it returns or SIGINT/SIGTERM arrives (then stop quietly)."""
    import signal

    import anyio

    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        await body()
        tg.cancel_scope.cancel()


# Characters a terminal acts on: C0 controls (ESC starts colour and cursor codes, CR rewrites a
# line), DEL, C1 controls (0x9b is a one-byte CSI on some terminals), the Unicode line separators
# and the bidirectional overrides that reorder what is shown ("Trojan Source").
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_LINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def safe(value: Any) -> str:
    """`value` as text a terminal shows as it is: every control character written as an escape
    (`\\x1b`, `\\n`), so data from Redis can neither colour nor move the cursor nor forge a line.

    Example:
        >>> safe("a\\x1b[31mb\\nc")
        'a\\\\x1b[31mb\\\\nc'
    """
    return _CONTROL.sub(_escape, value if isinstance(value, str) else str(value))


def out(line: str) -> None:
    """Write one line to stdout now (a closed pipe, as with `| head`, ends the command quietly).
    Control characters other than newlines and tabs are escaped (see `safe`): callers pass data
    through `safe` themselves where a newline in it must not start a line."""
    line = _CONTROL_BUT_LINES.sub(_escape, line)
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


#: Arrays and objects nested deeper than this in JSON given to the CLI are refused: deeper input is
#: almost always a mistake, and past Python's recursion limit it cannot even be parsed.
MAX_JSON_DEPTH = 64
#: The longest stream, group, consumer or storage key name the CLI accepts (the MCP tools' limit).
MAX_NAME_CHARS = 1024


def check_argv(argv: list[str]) -> None:
    """Refuse an argument that is not UTF-8 text, naming it: Python hands such bytes over as
    lone surrogates, which no Redis command can encode, so nothing could be done with it."""
    for n, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raw = repr(os.fsencode(arg))
            shown = raw if len(raw) <= 60 else raw[:57] + "..."
            fail(
                f"argument {n} ({shown}) is not UTF-8 text: names, fields and values given on "
                "the command line must be UTF-8",
                2,
            )


def check_name(what: str, value: str) -> str:
    """`value` if it can name a stream, group, consumer or key: not empty, not huge."""
    if not value:
        fail(f"the {what} is empty: give a name", 2)
    if len(value) > MAX_NAME_CHARS:
        fail(f"the {what} is {len(value)} characters long; the limit is {MAX_NAME_CHARS}", 2)
    return value


class TooDeep(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH."""

    def __init__(self) -> None:
        super().__init__(
            f"it is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects; flatten it"
        )


def parse_json(text: str) -> Any:
    """`json.loads(text)`, refusing nesting deeper than MAX_JSON_DEPTH with `TooDeep`."""
    import json

    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise TooDeep
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


def _plain(value: Any, depth: int = 0) -> Any:
    """`value` with what JSON cannot hold made text: NaN and ±infinity as "nan", "inf" and "-inf"
    (what the MCP tools return too), bytes as UTF-8, keys that are not text as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if depth > 2 * MAX_JSON_DEPTH:
        return repr(value)
    if isinstance(value, dict):
        return {_key(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    return value


def _key(key: Any) -> Any:
    if key is None or isinstance(key, str | int) or (isinstance(key, float) and math.isfinite(key)):
        return key  # json.dumps writes these keys itself
    if isinstance(key, bytes):
        from ..codec import as_text

        return as_text(key)
    return repr(key) if isinstance(key, float) else str(key)


_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def dumps(obj: Any) -> str:
    """One line of valid JSON (UTF-8 text, bytes decoded, non-finite floats as strings, anything
    else as str). Characters a terminal acts on are `\\uXXXX` escapes (JSON escapes the C0
    controls itself; DEL, C1 and bidi controls it would write raw): the same data, safe to show."""
    import json

    from ..codec import as_text

    text = json.dumps(_plain(obj), ensure_ascii=False, default=as_text, allow_nan=False)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
