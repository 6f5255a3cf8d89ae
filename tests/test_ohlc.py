"""FastOHLC: candles against an independent pandas reference and a plain-Python model of completion,
flushing and late ticks; the compiled and pure-Python kernels against each other; stream replies
of every shape, including real XREAD/XREADGROUP replies from a real Redis."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis as syncredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streammachine.exceptions import ConfigError, SerializationError
from streammachine.ohlc import (
    Candle,
    FastOHLC,
    create_ohlc_aggregator,
    format_candle_for_redis,
    interval_name,
    parse_interval,
    parse_stream_id_timestamp,
)
from streammachine.ohlc.candle import candle_aggregates, candle_from_window
from streammachine.state.windows import Engine, closed, tumbling, watermark_of, window_start

HAS_NUMBA = importlib.util.find_spec("numba") is not None
PATHS = [False, True] if HAS_NUMBA else [False]
T0 = 1_700_000_000_000
FIELDS = list(Candle._fields)


def reference(
    ticks: list[tuple[str, float, float, int]], interval_ms: int
) -> dict[str, list[Candle]]:
    """Candles by an independent route: pandas, sorted by (time, arrival), grouped."""
    if not ticks:
        return {}
    df = pd.DataFrame(ticks, columns=["symbol", "price", "volume", "ts"])
    df["arrival"] = np.arange(len(df))
    df = df.sort_values(["ts", "arrival"], kind="mergesort")
    df["start"] = (df["ts"] // interval_ms) * interval_ms
    g = df.groupby(["symbol", "start"], sort=True)
    out = g.agg(
        open=("price", "first"),
        high=("price", "max"),
        low=("price", "min"),
        close=("price", "last"),
        volume=("volume", "sum"),
        trade_count=("price", "size"),
        timestamp_ms=("ts", "max"),
    ).reset_index()
    result: dict[str, list[Candle]] = {}
    for row in out.to_dict("records"):
        candle = Candle(
            int(row["start"]), float(row["open"]), float(row["high"]), float(row["low"]),
            float(row["close"]), float(row["volume"]), int(row["trade_count"]),
            int(row["timestamp_ms"]),
        )  # fmt: skip
        result.setdefault(str(row["symbol"]), []).append(candle)
    return result


class Model:
    """The semantics written out plainly: dict candles, watermark, flushed ends, late ticks."""

    def __init__(self, intervals: list[int], grace_ms: int) -> None:
        self.intervals = intervals
        self.grace_ms = grace_ms
        self.candles: dict[tuple[str, int], dict[int, list[Any]]] = {}
        self.flushed_end: dict[tuple[str, int], int] = {}
        self.watermark: int | None = None
        self.late = 0
        self.ticks = 0

    def tick(self, symbol: str, price: float, volume: float, ts: int) -> None:
        self.ticks += 1
        self.watermark = ts if self.watermark is None else max(self.watermark, ts)
        late = False
        for iv in self.intervals:
            key = (symbol, iv)
            if ts < self.flushed_end.get(key, -(2**63)):
                late = True
                continue
            start = ts // iv * iv
            c = self.candles.setdefault(key, {}).get(start)
            if c is None:
                self.candles[key][start] = [ts, price, price, price, ts, price, volume, 1]
                continue
            first, o, h, lo, last, cl, v, n = c
            if ts < first:
                first, o = ts, price
            if ts >= last:
                last, cl = ts, price
            c[:] = [first, o, max(h, price), min(lo, price), last, cl, v + volume, n + 1]
        self.late += late

    def get(self, symbol: str, iv: int) -> list[Candle]:
        got = sorted(self.candles.get((symbol, iv), {}).items())
        return [Candle(s, c[1], c[2], c[3], c[5], c[6], c[7], c[4]) for s, c in got]

    def flush(self, symbol: str, iv: int, now_ms: int | None) -> list[Candle]:
        wm = self.watermark if now_ms is None else now_ms
        if wm is None:
            return []
        done = [c for c in self.get(symbol, iv) if c.candle_start_ms + iv + self.grace_ms <= wm]
        for c in done:
            del self.candles[(symbol, iv)][c.candle_start_ms]
        if done:
            end = done[-1].candle_start_ms + iv
            self.flushed_end[(symbol, iv)] = max(self.flushed_end.get((symbol, iv), end), end)
        return done


def feed(agg: FastOHLC, ticks: list[tuple[str, float, float, int]], how: str) -> None:
    if how == "tick":
        for i, (s, p, v, t) in enumerate(ticks):
            agg.update_tick(s.encode() if i % 2 else s, p, v, t)  # bytes and str: one symbol
    elif how == "arrays":
        if ticks:
            cols: list[Any] = list(zip(*ticks, strict=True))
            sym, px, vol, ts = (np.array(c) for c in cols)
            agg.update_arrays(sym, px, vol, ts)
    else:
        entries = [
            (f"{t}-{i}".encode(), {b"symbol": s.encode(), b"price": repr(p), b"volume": repr(v)})
            for i, (s, p, v, t) in enumerate(ticks)
        ]
        agg.process_stream_batch([[b"ticks", entries]], timestamp_field=None)


tick_lists = st.lists(
    st.tuples(
        st.sampled_from(["AAPL", "MSFT", "BTC-USD", "É"]),
        st.floats(1, 1000, allow_nan=False, allow_infinity=False),
        st.integers(0, 100).map(float),  # whole volumes: sums are exact in any order
        st.integers(0, 900_000),
    ),
    max_size=80,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ticks=tick_lists,
    intervals=st.sampled_from([[60000], [60000, 300000], [1000, 90000, 3600000], [7]]),
    how=st.sampled_from(["tick", "arrays", "stream"]),
    jit=st.sampled_from(PATHS),
)
def test_candles_equal_pandas_reference(
    ticks: list[tuple[str, float, float, int]], intervals: list[int], how: str, jit: bool
) -> None:
    if how == "stream":  # stream ids carry the time, which must not be negative
        ticks = [(s, p, v, t + T0) for s, p, v, t in ticks]
    agg = FastOHLC(intervals=intervals, jit=jit)
    feed(agg, ticks, how)
    assert agg.tick_count == len(ticks)
    for iv in intervals:
        ref = reference(ticks, iv)
        assert sorted(agg.symbols()) == sorted(ref)
        for symbol, candles in ref.items():
            assert agg.get_candles(symbol, iv) == candles
            assert agg.get_candles(symbol.encode(), iv) == candles


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("tick"), st.sampled_from("AB"), st.floats(1, 100), st.integers(-40_000, 5_000)
        ),
        st.tuples(st.just("flush"), st.sampled_from("AB"), st.sampled_from([None, 0, 30_000])),
        st.tuples(st.just("advance"), st.integers(0, 120_000)),
    ),
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from("AB"),
            st.floats(1, 1000, allow_nan=False, allow_infinity=False),
            st.integers(0, 100).map(float),  # whole volumes: sums are exact in any order
            st.integers(0, 12_000),  # how far the clock moves on
            st.integers(0, 40_000),  # how far behind the clock the tick is (at most the grace)
        ),
        max_size=80,
    ),
    grace_ms=st.sampled_from([0, 5000, 30000]),
    batch=st.integers(1, 9),
)
def test_candles_are_the_window_engines_tumbling_windows(
    steps: list[tuple[str, float, float, int, int]], grace_ms: int, batch: int
) -> None:
    """OHLC on the window engine: the engine's tumbling windows with `candle_aggregates` and
    FastOHLC (both kernels) close the same candles at the same watermark, batch by batch, and
    keep the same ones open, for ticks out of order within the grace (neither has late ones)."""
    iv = 10_000
    engine = Engine(tumbling(iv / 1000), candle_aggregates(), grace_ms=grace_ms, track=False)
    aggs = [FastOHLC(intervals=[iv], grace_ms=grace_ms, jit=j) for j in PATHS]
    closed_by_engine: list[tuple[str, Candle]] = []
    flushed: list[list[tuple[str, Candle]]] = [[] for _ in aggs]

    def flush() -> None:
        rows = engine.close()
        closed_by_engine.extend((r.key, candle_from_window(r.start, r.values)) for r in rows)
        for agg, out in zip(aggs, flushed, strict=True):
            out.extend((sym, c) for sym, _, c in agg.flush_completed())

    clock = T0
    for i, (sym, price, volume, advance, back) in enumerate(steps):
        clock += advance
        t = clock - min(back, grace_ms)
        assert engine.add(sym, t, {"price": repr(price), "volume": repr(volume)})
        for agg in aggs:
            agg.update_tick(sym, price, volume, t)
        if i % batch == batch - 1:
            flush()
    flush()
    held = sorted(
        (k, candle_from_window(s, engine._value(k, s))) for k, w in engine.keys.items() for s in w
    )
    assert engine.late == 0
    for agg, out in zip(aggs, flushed, strict=True):
        assert sorted(out) == sorted(closed_by_engine)
        assert sorted((s, c) for s in "AB" for c in agg.get_candles(s, iv)) == held
        assert agg.late_tick_count == 0 and agg.watermark_ms == engine.max_t


def test_a_candle_is_the_engines_tumbling_window_and_closes_at_its_watermark() -> None:
    """The bucketing and completion FastOHLC uses are the window engine's own functions."""
    for t, iv in ((61_000, 60_000), (-1, 60_000), (0, 7), (T0 + 123, 90_000)):
        (candle,) = _one_tick(t, iv).get_candles("X", iv)
        assert candle.candle_start_ms == window_start(t, iv) == (t // iv) * iv
    agg = FastOHLC(intervals=[60_000], grace_ms=5000)
    agg.update_tick("X", 1.0, 1.0, 30_000)
    for wm in (60_000, 64_999, 65_000):
        want = closed(0, 60_000, watermark_of(wm, 5000))
        assert bool(agg.get_completed_candles("X", 60_000, now_ms=wm)) == want
    assert [closed(0, 60_000, watermark_of(wm, 5000)) for wm in (64_999, 65_000)] == [False, True]


def _one_tick(t: int, iv: int) -> FastOHLC:
    agg = FastOHLC(intervals=[iv])
    agg.update_tick("X", 1.0, 1.0, t)
    return agg


@settings(max_examples=150, deadline=None)
@given(ops=ops, grace_ms=st.sampled_from([0, 5000, 30000]))
def test_completion_flush_and_late_ticks_follow_the_model(ops: list[Any], grace_ms: int) -> None:
    """Ticks out of order around a moving clock, flushes by watermark or by now_ms."""
    intervals = [10_000, 60_000]
    model = Model(intervals, grace_ms)
    aggs = [FastOHLC(intervals=intervals, grace_ms=grace_ms, jit=j) for j in PATHS]
    clock = T0
    for op in ops:
        if op[0] == "advance":
            clock += op[1]
        elif op[0] == "tick":
            _, sym, price, offset = op
            model.tick(sym, price, 1.0, clock + offset)
            for agg in aggs:
                agg.update_tick(sym, price, 1.0, clock + offset)
        else:
            _, sym, ahead = op
            now = None if ahead is None else clock + ahead
            for iv in intervals:
                want = model.flush(sym, iv, now)
                for agg in aggs:
                    assert agg.get_completed_candles(sym, iv, now_ms=now) == want
                    assert agg.flush_interval(sym, iv, now_ms=now) == want
    for agg in aggs:
        assert agg.late_tick_count == model.late
        assert agg.tick_count == model.ticks
        assert agg.watermark_ms == model.watermark
        for sym in "AB":
            for iv in intervals:
                assert agg.get_candles(sym, iv) == model.get(sym, iv)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_compiled_and_python_paths_give_identical_candles() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    sym = rng.integers(0, 30, n)
    ts = T0 + np.cumsum(rng.integers(0, 40, n)) - rng.integers(0, 3000, n)  # out of order
    px = 100 + rng.standard_normal(n).cumsum()
    vol = rng.random(n) * 10  # fractional: the sums must match bit for bit too
    names = np.array([f"S{i}" for i in range(30)])
    results = []
    for jit in (True, False):
        agg = FastOHLC(intervals=[1000, 60000, 3_600_000], grace_ms=500, jit=jit)
        assert agg.jit is jit
        half = n // 2
        agg.update_arrays(names[sym[:half]], px[:half], vol[:half], ts[:half])
        flushed = agg.flush_completed()
        for i in range(half, n):
            agg.update_tick(str(names[sym[i]]), float(px[i]), float(vol[i]), int(ts[i]))
        flushed += agg.flush_completed(now_ms=int(ts[-1]) - 20_000)
        held = {(s, iv): agg.get_candles(s, iv) for s in agg.symbols() for iv in agg.intervals}
        stats = agg.stats()
        stats.pop("jit")
        results.append((flushed, held, stats))
    assert results[0] == results[1]
    assert results[0][2]["late_tick_count"] > 0  # the run did exercise late ticks


def test_open_close_ties_follow_arrival_order() -> None:
    agg = FastOHLC(intervals=[60000])
    for price, ts in [(5.0, 1000), (1.0, 10), (2.0, 10), (9.0, 1000), (3.0, 500)]:
        agg.update_tick("X", price, 1.0, ts)
    (c,) = agg.get_candles("X", 60000)
    assert (c.open, c.high, c.low, c.close) == (1.0, 9.0, 1.0, 9.0)
    assert (c.trade_count, c.timestamp_ms, c.candle_start_ms, c.volume) == (5, 1000, 0, 5.0)


def test_completion_uses_the_watermark_grace_and_now_ms() -> None:
    agg = FastOHLC(intervals=[60000], grace_ms=10_000)
    agg.update_tick("X", 1.0, 1.0, 59_999)
    agg.update_tick("X", 2.0, 1.0, 69_999)  # watermark 69_999 < 60_000 + 10_000
    assert agg.get_completed_candles("X", 60000) == []
    assert len(agg.get_completed_candles("X", 60000, now_ms=70_000)) == 1
    agg.update_tick("Y", 3.0, 1.0, 70_000)  # another symbol moves the watermark for all
    assert [c.close for c in agg.get_completed_candles("X", 60000)] == [1.0]
    assert agg.flush_interval("X", 60000) == [Candle(0, 1.0, 1.0, 1.0, 1.0, 1.0, 1, 59_999)]
    assert agg.flush_interval("X", 60000) == []
    assert [c.candle_start_ms for c in agg.get_candles("X", 60000)] == [60000]


def test_a_late_tick_is_counted_and_never_recreates_a_flushed_candle() -> None:
    agg = FastOHLC(intervals=[60000, 300000])
    agg.update_tick("X", 1.0, 1.0, 10_000)
    agg.update_tick("X", 2.0, 1.0, 130_000)
    (flushed,) = agg.flush_interval("X", 60000)
    assert flushed.candle_start_ms == 0
    agg.update_tick("X", 7.0, 1.0, 59_000)  # its 1m candle went out; its 5m candle is open
    agg.update_tick(b"X", 7.0, 1.0, 61_000)  # after the flushed end: a new, older candle
    assert agg.late_tick_count == 1
    assert [c.candle_start_ms for c in agg.get_candles("X", 60000)] == [60000, 120000]
    assert agg.get_candles("X", 300000)[0].trade_count == 4
    assert agg.flush_interval("X", 60000, now_ms=10**15)[0].close == 7.0
    agg.update_tick("X", 8.0, 1.0, 125_000)
    assert agg.late_tick_count == 2 and agg.get_candles("X", 60000) == []
    assert agg.stats()["late_by_interval"] == {60000: 2, 300000: 0}


def test_symbols_intervals_and_errors() -> None:
    agg = create_ohlc_aggregator()
    assert agg.intervals == (60000, 300000) and agg.grace_ms == 0
    assert agg.get_candles("NEW", 60000) == [] and agg.flush_interval("NEW", 300000) == []
    with pytest.raises(ConfigError, match="not one of this aggregator's intervals"):
        agg.get_candles("NEW", 90000)
    with pytest.raises(ValueError):
        agg.get_completed_candles("NEW", 60)
    assert agg.get_candles("NEW", "1m") == []
    bads: list[Any] = [[], [60000, "1m"], [0], ["soon"]]
    for bad in bads:
        with pytest.raises(ConfigError):
            FastOHLC(intervals=bad)
    with pytest.raises(ConfigError):
        FastOHLC(grace_ms=-1)
    with pytest.raises(ConfigError, match="int timestamp_ms"):
        agg.update_tick("X", 1.0, 1.0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        agg.update_tick("X", "1.0", 1.0, 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="str or bytes"):
        agg.update_tick(5, 1.0, 1.0, 1)  # type: ignore[arg-type]
    agg.update_tick("X", 1.0, 1.0, 1)  # the failed calls left nothing half-written
    agg.update_tick("X", math.nan, 1.0, 2)
    agg.update_tick("X", 1.0, math.inf, 3)
    assert (agg.tick_count, agg.skipped_count) == (1, 2)
    assert agg.symbols() == ["X"]  # reads do not register symbols
    agg.clear()
    assert (agg.tick_count, agg.symbols(), agg.watermark_ms) == (0, [], None)


def test_update_arrays_inputs() -> None:
    n = 6
    px, vol = np.arange(1.0, n + 1), np.ones(n)
    ts = np.arange(n, dtype=np.int64) * 30_000
    want = None
    for symbols in (
        np.array(["A", "B"] * 3),
        np.array([b"A", b"B"] * 3),
        np.array(["A", b"B"] * 3, dtype=object),
        pd.Series(["A", "B"] * 3).to_numpy(dtype=object),
    ):
        agg = FastOHLC(intervals=[60000])
        assert agg.update_arrays(symbols, px, vol, ts) == n
        got = (agg.symbols(), agg.get_candles("A", 60000), agg.get_candles("B", 60000))
        assert want is None or got == want
        want = got
    agg = FastOHLC(intervals=[60000])
    codes = agg.symbol_codes(["B", "A"])
    assert codes.tolist() == [0, 1] and agg.symbol_code(b"A") == 1
    agg.update_arrays(np.array([1, 0, 1, 0, 1, 0]), px, vol, ts.astype("datetime64[ms]"))
    assert agg.update_arrays(np.array([], dtype=str), [], [], np.array([], np.int64)) == 0
    assert (sorted(agg.symbols()), agg.get_candles("A", 60000), agg.get_candles("B", 60000)) == want
    with pytest.raises(ConfigError, match="integer milliseconds"):
        agg.update_arrays(codes, [1.0, 1.0], [1.0, 1.0], [1.5, 2.5])
    with pytest.raises(ConfigError, match="one length"):
        agg.update_arrays(codes, [1.0], [1.0, 1.0], [1, 2])
    with pytest.raises(ConfigError, match="symbol code 2 at index 1 was not handed out"):
        agg.update_arrays(np.array([0, 2]), [1.0, 1.0], [1.0, 1.0], [1, 2])
    with pytest.raises(ConfigError, match="str or bytes, got NoneType"):
        agg.update_arrays(np.array(["A", None], dtype=object), [1.0] * 2, [1.0] * 2, [1, 2])


@pytest.mark.parametrize("jit", PATHS)
def test_many_candles_grow_the_pool_and_negative_times_floor(jit: bool) -> None:
    agg = FastOHLC(intervals=[1000, 7000], jit=jit)
    ts = np.arange(-5_000_000, 5_000_000, 997, dtype=np.int64)
    agg.update_arrays(
        np.zeros(len(ts), np.int64) + agg.symbol_code("Z"), ts * 1.0, np.ones(len(ts)), ts
    )
    candles = agg.get_candles("Z", 1000)
    assert len(candles) == len(reference([("Z", 0.0, 1.0, int(t)) for t in ts], 1000)["Z"])
    assert candles[0].candle_start_ms == -5_000_000 and candles[0].open == -5_000_000.0
    assert agg.stats()["candles"] == len(candles) + len(agg.get_candles("Z", 7000)) > 256


def ticks_reply(shape: str) -> Any:
    e1 = (b"1638360000000-0", {b"symbol": b"AAPL", b"price": b"150.5", b"volume": b"10"})
    e2 = (b"1638360001000-0", [b"symbol", b"AAPL", b"price", b"151", b"volume", b"2"])
    bad = [
        (b"1638360002000-0", {b"symbol": b"AAPL", b"price": b"n/a"}),
        (b"1638360002000-1", {b"symbol": b"AAPL"}),
        (b"1638360002000-2", {b"price": b"1"}),
        (b"1638360002000-3", {b"symbol": b"AAPL", b"price": b"1", b"volume": b"x"}),
        (b"1638360002000-4", None),
        (b"1638360002000-5", {b"symbol": b"AAPL", b"price": b"nan"}),
    ]
    entries = [e1, e2, *bad]
    if shape == "resp2":
        return [[b"ticks", entries]]
    if shape == "resp3":
        return {b"ticks": entries}
    if shape == "resp3-legacy":
        return {b"ticks": [entries]}
    if shape == "str":
        return [["ticks", [(i.decode(), _decoded(f)) for i, f in entries]]]
    return entries  # an XRANGE list


def _decoded(fields: Any) -> Any:
    if fields is None:
        return None
    if isinstance(fields, dict):
        return {k.decode(): v.decode() for k, v in fields.items()}
    return [x.decode() for x in fields]


@pytest.mark.parametrize("shape", ["resp2", "resp3", "resp3-legacy", "str", "xrange"])
def test_process_stream_batch_shapes_and_skipped_entries(shape: str) -> None:
    agg = FastOHLC(intervals=[60000])
    assert agg.process_stream_batch(ticks_reply(shape)) == 2
    assert agg.skipped_count == 6
    (c,) = agg.get_candles("AAPL", 60000)
    assert (c.open, c.close, c.volume, c.trade_count, c.timestamp_ms) == (
        150.5,
        151.0,
        12.0,
        2,
        1638360001000,
    )
    assert agg.process_stream_batch([]) == 0 and agg.process_stream_batch({}) == 0


def test_process_stream_batch_timestamp_field_and_custom_names() -> None:
    agg = FastOHLC(intervals=[60000])
    entries = [
        ("5-0", {"sym": "X", "px": "2", "qty": "3", "t": "120001"}),
        ("6-0", {"sym": "X", "px": "1", "qty": "1", "t": "120000.0"}),
        ("7-0", {"sym": "X", "px": "1", "qty": "1"}),  # no time: skipped
    ]
    n = agg.process_stream_batch(
        [["s", entries]],
        price_field="px",
        volume_field="qty",
        symbol_field="sym",
        timestamp_field="t",
    )
    assert (n, agg.skipped_count) == (2, 1)
    assert agg.get_candles("X", 60000) == [Candle(120000, 1.0, 2.0, 1.0, 2.0, 4.0, 2, 120001)]


# --- the columnar path of stream entries against the entry-by-entry path ----------------------

GOOD = {
    "symbol": [b"A", b"B", b"C\xc3\xa9", "A"],
    "price": [b"1.5", b"2", b"100.25", b" 3 ", b"1e2", b"nan", b"-inf", b"1_0", "4.5"],
    "volume": [b"1", b"0.5", b"7", b"inf"],
    "ts": [b"1000", b"1999", b"2500", b"7000", b"-3000", b"12000", "4000"],
}
GARBAGE = [b"", b"n/a", b"1.5.5", b"0x10", b"1e3", b"99999999999999999999", b"\xff", None, 7]


@st.composite
def entry_batches(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """Entries of one field layout (the columnar path), sometimes with bad ones among them."""
    keys = [
        k
        for k in draw(st.permutations(["symbol", "price", "volume", "ts", "x"]))
        if draw(st.integers(0, 9)) > 0  # now and then a field is missing from every entry
    ]
    keys += draw(st.lists(st.sampled_from(keys or ["x"]), max_size=1))  # now and then repeated
    as_bytes = draw(st.booleans())
    as_dict = draw(st.booleans())
    dirty = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    ids: list[Any] = []
    fields: list[Any] = []
    for i in range(draw(st.integers(0, 30))):
        ms = draw(st.sampled_from([1000, 1500, 2000, 6000, 6100, 11000, 3000]))
        raw_id: Any = f"{ms}-{i}"
        if draw(st.floats(0, 1)) < dirty:
            raw_id = draw(st.sampled_from(["abc", "123", "1-x", b"5-0"]))
        ids.append(raw_id.encode() if as_bytes and isinstance(raw_id, str) else raw_id)
        pairs = []
        for k in keys:
            good = GOOD.get(k, [b"z"])
            value = draw(st.sampled_from(GARBAGE if draw(st.floats(0, 1)) < dirty else good))
            pairs.append((k.encode() if as_bytes else k, value))
        if draw(st.floats(0, 1)) < dirty:
            pairs = pairs[: draw(st.integers(0, len(pairs)))]  # another layout
        entry: Any = dict(pairs) if as_dict else [x for kv in pairs for x in kv]
        if draw(st.floats(0, 1)) < dirty / 3:
            entry = draw(st.sampled_from([None, [b"odd"], {}]))
        fields.append(entry)
    return ids, fields


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(entry_batches(), min_size=1, max_size=3),
    timestamp_field=st.sampled_from([None, "ts"]),
    jit=st.sampled_from(PATHS),
)
def test_columnar_entries_give_the_candles_of_the_entry_by_entry_path(
    batches: list[tuple[list[Any], list[Any]]], timestamp_field: str | None, jit: bool
) -> None:
    from streammachine.ohlc.ticks import TickFields, ticks_one_by_one

    names = TickFields(timestamp=timestamp_field)
    columnar, one_by_one = (FastOHLC(intervals=[1000, 5000], jit=jit) for _ in range(2))
    for ids, fields in batches:
        taken = columnar._process_entries(ids, fields, names)
        b, before = one_by_one, one_by_one.tick_count
        out = (b._b_ts.append, b._b_px.append, b._b_vol.append)
        b._parse_skipped += ticks_one_by_one(
            ids, fields, names, b.symbol_code, out, b._b_sym.append
        )
        assert taken == b.tick_count - before
        # Flushing between batches makes later ticks late: both must count and drop them alike.
        assert columnar.flush_completed() == one_by_one.flush_completed()
    assert columnar.symbols() == one_by_one.symbols()
    assert columnar.stats() == one_by_one.stats()
    for symbol in columnar.symbols():
        for iv in (1000, 5000):
            assert columnar.get_candles(symbol, iv) == one_by_one.get_candles(symbol, iv)


def test_one_layout_of_entries_takes_the_columnar_path() -> None:
    from streammachine.ohlc.ticks import TickFields, tick_columns

    fields = [[b"symbol", b"A", b"price", b"1.5", b"volume", b"2", b"price", b"3"]] * 2
    cols = tick_columns([b"1-0", "2-5"], fields, TickFields())
    assert cols is not None and cols.prices.tolist() == [3.0, 3.0]  # a repeated key: the last
    assert cols.times.tolist() == [1, 2] and cols.volumes.tolist() == [2.0, 2.0]
    dicts = [{"symbol": "A", "price": "1", "ts": "9"}, {"ts": "8", "price": "2", "symbol": "B"}]
    cols = tick_columns(["1-0", "2-0"], dicts, TickFields(timestamp="ts"))
    assert cols is not None and cols.times.tolist() == [9, 8] and cols.volumes.tolist() == [0, 0]
    assert cols.symbols == ["A", "B"]
    for bad in (
        [[b"symbol", b"A", b"price", b"x"]],  # unparsable: the entry-by-entry path skips it
        [[b"symbol", b"A", b"price", b"1"], [b"price", b"1", b"symbol", b"A"]],  # two layouts
        [{"symbol": "A", "price": "1"}, {b"symbol": b"A", "price": "1"}],  # two kinds of key
        [None],
    ):
        assert tick_columns(["1-0"] * len(bad), bad, TickFields()) is None


def test_single_ticks_and_batches_keep_arrival_order() -> None:
    agg = FastOHLC(intervals=[60000])
    agg.update_tick("X", 1.0, 1.0, 100)
    agg.process_stream_batch([["s", [("100-0", {"symbol": "X", "price": "2"})]]])
    agg.update_tick("X", 3.0, 1.0, 100)
    agg.update_arrays(np.array(["X"]), [4.0], [1.0], [100])
    assert agg.get_candles("X", 60000)[0][1:5] == (1.0, 4.0, 1.0, 4.0)


def test_real_xread_and_xreadgroup_replies(redis_url: str, redis_sync: syncredis.Redis) -> None:
    rows = [
        ("AAPL", "150.25", "100"),
        ("MSFT", "300", "5"),
        ("AAPL", "149.5", "50"),
        ("AAPL", "oops", "1"),
    ]
    ids = [redis_sync.xadd("ticks", {"symbol": s, "price": p, "volume": v}) for s, p, v in rows]
    first_ms = parse_stream_id_timestamp(ids[0])
    resp3 = syncredis.Redis.from_url(redis_url, protocol=3, decode_responses=True)
    try:
        replies: list[Any] = [
            redis_sync.xread({"ticks": "0"}),
            resp3.xread({"ticks": "0"}),
            redis_sync.xrange("ticks"),
        ]
        redis_sync.xgroup_create("ticks", "ohlc", id="0")
        replies.append(redis_sync.xreadgroup("ohlc", "c1", {"ticks": ">"}))
    finally:
        resp3.close()
    for reply in replies:
        agg = FastOHLC(intervals=[60000])
        assert agg.process_stream_batch(reply) == 3
        assert agg.skipped_count == 1
        (c,) = agg.get_candles("AAPL", 60000)
        assert (c.open, c.close, c.volume, c.trade_count) == (150.25, 149.5, 150.0, 2)
        assert c.candle_start_ms == first_ms // 60000 * 60000
        assert agg.get_candles(b"MSFT", 60000)[0].close == 300.0


def test_parse_stream_id_timestamp() -> None:
    assert parse_stream_id_timestamp("1638360000000-0") == 1638360000000
    assert parse_stream_id_timestamp(b"1638360000000-12") == 1638360000000
    assert parse_stream_id_timestamp("1638360000000") == 1638360000000
    for bad in ("", "abc", "-1", "12-", "1-2-3", "1.5-0", b"\xff-0", "١٢-0"):
        with pytest.raises(SerializationError, match="not a Redis stream id") as info:
            parse_stream_id_timestamp(bad)
        assert repr(bad) in str(info.value)


def test_format_candle_for_redis() -> None:
    c = Candle(60000, 100.5, 101.0, 99.0, 100.0, 12.5, 3, 119_000)
    want = {
        "symbol": "AAPL", "interval_ms": "60000", "candle_start_ms": "60000", "open": "100.5",
        "high": "101.0", "low": "99.0", "close": "100.0", "volume": "12.5", "trade_count": "3",
        "timestamp_ms": "119000",
    }  # fmt: skip
    assert format_candle_for_redis(c, b"AAPL", 60000) == want
    assert format_candle_for_redis(c._asdict(), "AAPL", 60000) == want
    agg = FastOHLC(intervals=[60000])
    agg.update_tick("AAPL", 100.5, 12.5, 60_000)
    assert agg.get_candles_as_dicts("AAPL", 60000) == [
        dict(zip(FIELDS, agg.get_candles("AAPL", 60000)[0], strict=True))
    ]


def test_interval_names() -> None:
    names = {
        60000: "1m",
        300000: "5m",
        900000: "15m",
        3600000: "1h",
        90000: "90s",
        86400000: "1d",
        1500: "1500ms",
    }
    assert {ms: interval_name(ms) for ms in names} == names
    assert all(parse_interval(name) == ms for ms, name in names.items())
    with pytest.raises(ConfigError):
        interval_name(0)


@given(st.lists(st.integers(1, 10**10), unique=True, max_size=50))
def test_interval_names_are_unique(lengths: list[int]) -> None:
    names = [interval_name(ms) for ms in lengths]
    assert len(set(names)) == len(names)
    assert [parse_interval(n) for n in names] == lengths


def _run(code: str, **env: str) -> str:
    full = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_is_lazy_and_the_env_or_a_missing_numba_selects_python() -> None:
    code = (
        "import sys, streammachine.ohlc as o; a = 'numba' in sys.modules; "
        "agg = o.FastOHLC(); print(a, o._HAS_FAST_OHLC_CYTHON, agg.jit)"
    )
    assert _run(code, STREAMMACHINE_DISABLE_JIT="1") == "False False False"
    without_numba = (
        "import sys; sys.modules['numba'] = None\n"  # as if it were not installed
        "import streammachine.ohlc as o\n"
        "from streammachine.exceptions import NotAvailableError\n"
        "agg = o.FastOHLC(); agg.update_tick('A', 1.0, 1.0, 1)\n"
        "try:\n    o.FastOHLC(jit=True)\n"
        "except NotAvailableError:\n    print(agg.jit, o._HAS_FAST_OHLC_CYTHON, agg.tick_count)"
    )
    assert _run(without_numba) == "False False 1"
    if HAS_NUMBA:
        assert _run(code, STREAMMACHINE_DISABLE_JIT="0") == "False True True"


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_a_second_process_loads_the_compiled_kernel_from_the_cache(tmp_path: Any) -> None:
    code = (
        "import numpy as np; from streammachine.ohlc import FastOHLC, kernel; "
        "a = FastOHLC(intervals=[60000]); a.update_arrays(np.array(['A']), [1.0], [1.0], [1]); "
        "s = kernel.kernels(True).apply_batch.stats; print(len(s.cache_hits), len(s.cache_misses))"
    )
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "STREAMMACHINE_DISABLE_JIT": "0"}
    assert _run(code, **env) == "0 1"  # compiled and saved
    assert _run(code, **env) == "1 0"  # loaded, not compiled


def test_the_jit_switch_is_read_through_settings() -> None:
    """`STREAMMACHINE_DISABLE_JIT` reaches the kernel only through `Settings.disable_jit`: the
    settings a runner installs, or an App's, decide; the kernel modules never read the env."""
    code = (
        "from streammachine import App\n"
        "from streammachine.settings import Settings\n"
        "import streammachine.ohlc as o\n"
        "from_env = o.FastOHLC().jit\n"
        "app_off = App(settings=Settings(disable_jit=True)).ohlc('t').aggregator.jit\n"
        "app_on = App(settings=Settings(disable_jit=False)).ohlc('t').aggregator.jit\n"
        "Settings(disable_jit=True).install()\n"
        "print(from_env, app_off, app_on, o.FastOHLC().jit, o._HAS_FAST_OHLC_CYTHON)\n"
    )
    on = str(HAS_NUMBA)
    assert _run(code, STREAMMACHINE_DISABLE_JIT="1") == f"False False {on} False False"
    assert _run(code, STREAMMACHINE_DISABLE_JIT="0") == f"{on} False {on} False False"
    from streammachine.ohlc import aggregator, kernel, pykernel, store

    for module in (kernel, pykernel, store, aggregator):
        assert "os.environ" not in Path(module.__file__ or "").read_text(), module.__name__
