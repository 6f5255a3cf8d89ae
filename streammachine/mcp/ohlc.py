"""The OHLC tools of the MCP server and their output models, without the `mcp` SDK: candle
aggregators (`FastOHLC`) that live in the server process, shared by its sessions, kept in
`Tools.aggregators`; `server` registers them.

Example:
    >>> ohlc = OhlcTools(tools)  # doctest: +SKIP
    >>> await ohlc.ohlc_create("md", ["1m"])  # doctest: +SKIP
    AggregatorInfo(name='md', intervals_ms=[60000], intervals=['1m'], grace_ms=0, ...)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import anyio
from pydantic import BaseModel, Field, create_model

from ..ohlc.candle import Candle
from .tools import Bounded, ConfirmedBy, ToolFailure, Tools, fit, jsonable

__all__ = ["OhlcTools"]

MAX_AGGREGATORS = 100

AggName = Annotated[str, Field(pattern=r"^[\w.-]{1,64}$", description="Aggregator name.")]
Symbol = Annotated[str, Field(min_length=1, max_length=64, description="Symbol, e.g. 'AAPL'.")]
Interval = Annotated[int | str, Field(description="Interval in ms (60000) or a name ('1m').")]
NowMs = Annotated[
    int | None, Field(ge=0, description="Clock in ms for completeness; default: newest tick time.")
]
Drop = Annotated[bool, Field(description="Also remove the aggregator itself.")]

# -- output models ----------------------------------------------------------------------------


def _model_of(fields: type[Candle]) -> type[BaseModel]:
    """A pydantic model (a JSON object in the tools' output schema) with a NamedTuple's fields."""
    hints = get_type_hints(fields)
    spec: dict[str, Any] = {name: (hints[name], ...) for name in fields._fields}
    return create_model(fields.__name__, **spec)


if TYPE_CHECKING:
    CandleModel = BaseModel
else:
    # The fields of the one Candle (streammachine.ohlc.candle), not a copy of them.
    CandleModel = _model_of(Candle)


class AggregatorInfo(BaseModel):
    name: str
    intervals_ms: list[int]
    intervals: list[str]
    grace_ms: int
    symbols: int = 0
    tick_count: int = 0
    created: bool = False


class TickResult(BaseModel):
    name: str
    symbol: str
    tick_count: int
    watermark_ms: int | None


class CandlesResult(Bounded):
    name: str
    symbol: str
    interval_ms: int
    interval: str
    candles: list[CandleModel]
    emitted_to: str | None = None
    ids: list[str] = []


class ClearResult(BaseModel):
    name: str
    removed: bool
    confirmed_by: ConfirmedBy


class StatsResult(BaseModel):
    name: str
    stats: dict[str, Any]


class AggregatorList(BaseModel):
    aggregators: list[AggregatorInfo]


# -- the tools ------------------------------------------------------------------------------------


class OhlcTools:
    """The OHLC tools, over the server's `Tools` (its aggregators and connection).

    Example:
        >>> OhlcTools(tools).ohlc_list  # doctest: +SKIP
    """

    def __init__(self, tools: Tools) -> None:
        self.tools = tools
        self.aggregators = tools.aggregators
        self._lock: anyio.Lock | None = None

    def agg(self, name: str) -> Any:
        """The aggregator `name`; a `ToolFailure` naming the known ones when there is none."""
        found = self.aggregators.get(name)
        if found is None:
            known = ", ".join(sorted(self.aggregators)) or "none yet"
            raise ToolFailure(
                f"argument 'name': no OHLC aggregator {name!r} (known: {known}); ohlc_create it"
            )
        return found

    def lock(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    def _info(self, name: str, agg: Any, created: bool = False) -> AggregatorInfo:
        from ..ohlc import interval_name

        return AggregatorInfo(
            name=name, intervals_ms=list(agg.intervals),
            intervals=[interval_name(i) for i in agg.intervals], grace_ms=agg.grace_ms,
            symbols=len(agg.symbols()), tick_count=agg.tick_count, created=created,
        )  # fmt: skip

    async def ohlc_create(
        self,
        name: AggName,
        intervals: Annotated[Sequence[int | str], Field(min_length=1, max_length=10)] = (
            60000,
            300000,
        ),
        grace_ms: Annotated[int, Field(ge=0)] = 0,
    ) -> AggregatorInfo:
        """Create an in-memory OHLC candle aggregator (FastOHLC) with intervals in ms or names
        ('1m', '5m'). Calling it again with the same settings keeps the existing one."""
        from ..ohlc import FastOHLC, parse_interval

        found = self.aggregators.get(name)
        if found is not None:
            wanted = [parse_interval(i) for i in intervals]
            if list(found.intervals) != wanted or found.grace_ms != grace_ms:
                raise ToolFailure(
                    f"argument 'name': aggregator {name!r} exists with intervals "
                    f"{list(found.intervals)} and grace_ms {found.grace_ms}; use another name, "
                    "or ohlc_clear it with drop: true first"
                )
            return self._info(name, found)
        if len(self.aggregators) >= MAX_AGGREGATORS:
            raise ToolFailure(f"there are already {MAX_AGGREGATORS} aggregators; ohlc_clear some")
        agg = self.aggregators[name] = FastOHLC(intervals=intervals, grace_ms=grace_ms)
        return self._info(name, agg, created=True)

    async def ohlc_update(
        self,
        name: AggName,
        symbol: Symbol,
        price: Annotated[float, Field(allow_inf_nan=False)],
        volume: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0,
        timestamp_ms: Annotated[int | None, Field(ge=0, description="Default: now.")] = None,
    ) -> TickResult:
        """Add one trade (tick) to an aggregator; its candles use the tick's time (event time)."""
        agg = self.agg(name)
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        async with self.lock():
            agg.update_tick(symbol, price, volume, ts)
            return TickResult(
                name=name, symbol=symbol, tick_count=agg.tick_count, watermark_ms=agg.watermark_ms
            )

    def _candles(
        self, name: str, symbol: str, interval: int | str, rows: list[Any]
    ) -> CandlesResult:
        from ..ohlc import interval_name, parse_interval

        ms = parse_interval(interval)
        candles = [CandleModel(**c._asdict()) for c in rows]
        shown, over = fit(candles[-1000:][::-1])  # the newest fit, shown oldest first
        shown.reverse()
        over = over or len(candles) > 1000
        note = f"showing the newest {len(shown)} of {len(candles)} candles" if over else None
        return CandlesResult(
            name=name, symbol=symbol, interval_ms=ms, interval=interval_name(ms),
            candles=shown, truncated=over, note=note,
        )  # fmt: skip

    async def ohlc_get_candles(
        self, name: AggName, symbol: Symbol, interval_ms: Interval = 60000
    ) -> CandlesResult:
        """Every candle held for a symbol and interval, oldest first (open, high, low, close,
        volume, trade_count, candle_start_ms)."""
        agg = self.agg(name)
        async with self.lock():
            return self._candles(name, symbol, interval_ms, agg.get_candles(symbol, interval_ms))

    async def ohlc_get_completed(
        self, name: AggName, symbol: Symbol, interval_ms: Interval = 60000, now_ms: NowMs = None
    ) -> CandlesResult:
        """The completed candles (ready to emit) of a symbol and interval: those whose end (plus
        grace_ms) the watermark, or now_ms when given, has reached."""
        agg = self.agg(name)
        async with self.lock():
            rows = agg.get_completed_candles(symbol, interval_ms, now_ms)
            return self._candles(name, symbol, interval_ms, rows)

    async def ohlc_flush(
        self,
        name: AggName,
        symbol: Symbol,
        interval_ms: Interval = 60000,
        now_ms: NowMs = None,
        emit_to: Annotated[
            str | None, Field(min_length=1, description="Also XADD them to this stream.")
        ] = None,
    ) -> CandlesResult:
        """Remove the completed candles of a symbol and interval from memory and return them;
        with emit_to they are first appended to that stream (one entry per candle). A later
        tick for a flushed candle is counted as late and dropped."""
        from ..ohlc import format_candle_for_redis, parse_interval

        agg = self.agg(name)
        async with self.lock():
            wm = agg.watermark_ms if now_ms is None else now_ms
            ids: list[str] = []
            if emit_to is not None and wm is not None:
                ms = parse_interval(interval_ms)
                done = agg.get_completed_candles(symbol, ms, wm)
                rows = [format_candle_for_redis(c, symbol, ms) for c in done]
                ids = await self.tools.conn.pipeline_xadd(emit_to, rows)
            flushed = [] if wm is None else agg.flush_interval(symbol, interval_ms, wm)
            result = self._candles(name, symbol, interval_ms, flushed)
        # The ids of the candles shown (the newest, when the result was cut).
        result.emitted_to, result.ids = emit_to, ids[len(ids) - len(result.candles) :]
        return result

    async def ohlc_clear(self, name: str, drop: bool, confirmed_by: ConfirmedBy) -> ClearResult:
        """Forget every candle, symbol and counter of an aggregator (drop: also remove it). Needs
        confirmation: the user is asked when the client supports it; else pass confirm: true."""
        agg = self.agg(name)
        async with self.lock():
            agg.clear()
            if drop:
                del self.aggregators[name]
        return ClearResult(name=name, removed=drop, confirmed_by=confirmed_by)

    async def ohlc_stats(self, name: AggName) -> StatsResult:
        """Counters of an aggregator: ticks, late and skipped ticks, symbols, candles held,
        watermark, whether the Numba kernel is active."""
        agg = self.agg(name)
        async with self.lock():
            return StatsResult(name=name, stats=jsonable(agg.stats()))

    async def ohlc_list(self) -> AggregatorList:
        """The OHLC aggregators of this server with their intervals, symbols and tick counts."""
        async with self.lock():
            return AggregatorList(
                aggregators=[self._info(n, a) for n, a in sorted(self.aggregators.items())]
            )
