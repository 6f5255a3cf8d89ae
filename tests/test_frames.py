"""DataFrames from XREAD output, pruning and TimeSeriesBuffer (pure unit tests, one on real Redis)."""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest
import redis as syncredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from streammachine.frames import (
    TimeSeriesBuffer,
    prune_old_dataframe_rows,
    streams_to_dataframe,
    streams_to_dataframe_fast,
)
from streammachine.frames import buffer as frames_buffer

BOTH = pytest.mark.parametrize("convert", [streams_to_dataframe, streams_to_dataframe_fast])
TEXT = pd.Series(["x"]).dtype

ENTRIES = [
    (b"1700000000000-0", {b"price": b"1.5", b"side": b"buy"}),
    (b"1700000000001-7", {b"price": b"2.5", b"size": b"3"}),
]
EXPECTED = pd.DataFrame(
    {
        "stream": pd.Series(["ticks", "ticks"], dtype=TEXT),
        "id": pd.Series(["1700000000000-0", "1700000000001-7"], dtype=TEXT),
        "timestamp_ms": np.array([1700000000000, 1700000000001], dtype=np.int64),
        "price": pd.Series(["1.5", "2.5"], dtype=TEXT),
        "side": pd.Series(["buy", None], dtype=TEXT),
        "size": pd.Series([None, "3"], dtype=TEXT),
    }
)


def flat(fields: dict[Any, Any]) -> list[Any]:
    return [x for kv in fields.items() for x in kv]


SHAPES = {
    "resp2": [[b"ticks", ENTRIES]],
    "resp2-flat-fields": [[b"ticks", [(i, flat(f)) for i, f in ENTRIES]]],
    "resp3": {b"ticks": ENTRIES},
    "resp3-nested": {b"ticks": [ENTRIES]},
    "resp3-raw": {"ticks": [[i.decode(), flat(f)] for i, f in ENTRIES]},
    "str": [
        [
            "ticks",
            [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in ENTRIES],
        ]
    ],
}


@BOTH
@pytest.mark.parametrize("shape", SHAPES)
def test_every_reply_shape_gives_the_same_frame(convert: Any, shape: str) -> None:
    assert_frame_equal(convert(SHAPES[shape]), EXPECTED)


@BOTH
def test_sequence_column_and_custom_meta_names(convert: Any) -> None:
    df = convert(SHAPES["resp2"], "s", "entry", "ts", include_sequence=True)
    assert list(df.columns) == ["s", "entry", "ts", "sequence", "price", "side", "size"]
    assert df["sequence"].dtype == np.int64 and df["sequence"].tolist() == [0, 7]
    assert df["ts"].dtype == np.int64


@BOTH
def test_columns_in_first_seen_order_across_streams_and_mixed_key_types(convert: Any) -> None:
    reply = [
        [b"a", [(b"1-0", {b"x": b"1"}), ("2-0", {"y": "2", b"x": "3"})]],
        ["b", [(b"3-0", [b"z", b"4", "y", b"5"])]],
    ]
    df = convert(reply)
    assert list(df.columns) == ["stream", "id", "timestamp_ms", "x", "y", "z"]
    assert df["stream"].tolist() == ["a", "a", "b"]
    assert df["x"].tolist()[:2] == ["1", "3"] and pd.isna(df["x"][2])
    assert df["y"].tolist()[1:] == ["2", "5"] and pd.isna(df["y"][0])


@BOTH
def test_a_field_named_like_a_meta_column_is_kept_under_a_prefix(convert: Any) -> None:
    reply = {"s": [("5-1", {"id": "mine", "stream": "x", "field_id": "taken", "sequence": "q"})]}
    df = convert(reply)
    assert df["id"].tolist() == ["5-1"] and df["stream"].tolist() == ["s"]
    assert df["field_field_id"].tolist() == ["mine"]  # field_id was taken by a real field
    assert df["field_id"].tolist() == ["taken"] and df["field_stream"].tolist() == ["x"]
    assert df["sequence"].tolist() == ["q"]  # no sequence meta column asked for
    df = convert(reply, include_sequence=True)
    assert df["sequence"].tolist() == [1] and df["field_sequence"].tolist() == ["q"]


@BOTH
@pytest.mark.parametrize(
    "bad_id",
    [
        b"abc",
        "17",
        "1-2-3",
        "-1-0",
        "1-",
        "99999999999999999999-0",
        "\uff11-0",
        b"\xff-1",
        "1-0\n2-0",
    ],
)
def test_a_bad_id_is_a_value_error_naming_it(convert: Any, bad_id: Any) -> None:
    reply = [[b"s", [(b"1-0", {b"a": b"1"}), (bad_id, {b"a": b"2"})]]]
    with pytest.raises(ValueError, match="bad stream entry id") as info:
        convert(reply)
    assert repr(bad_id) in str(info.value)


@BOTH
@pytest.mark.parametrize("empty", [None, [], {}, [[b"s", []]], {b"s": [[]]}, {b"s": None}])
def test_empty_input_gives_an_empty_frame_with_the_meta_columns(convert: Any, empty: Any) -> None:
    df = convert(empty, include_sequence=True)
    assert df.empty and list(df.columns) == ["stream", "id", "timestamp_ms", "sequence"]
    assert df["timestamp_ms"].dtype == np.int64 and df["stream"].dtype == TEXT


@BOTH
def test_deleted_entry_placeholders_are_skipped_and_bad_bytes_replaced(convert: Any) -> None:
    reply = [[b"s", [(None, None), (b"1-0", None), (b"2-0", {b"k\xff": b"v\xfe"})]]]
    df = convert(reply)
    assert df["id"].tolist() == ["1-0", "2-0"]
    assert df.columns[-1] == "k\ufffd" and df["k\ufffd"].tolist()[1] == "v\ufffd"


@BOTH
def test_malformed_replies_are_value_errors(convert: Any) -> None:
    for reply in ([b"s"], 42, [[b"s", [(b"1-0",)]]], [[b"s", [(b"1-0", [b"odd"])]]]):
        with pytest.raises(ValueError):
            convert(reply)


@BOTH
def test_dtypes_convert_columns_and_report_bad_values(convert: Any) -> None:
    reply = {b"t": [(b"1-0", {b"p": b"1.5", b"n": b"2", b"ok": b"true"}), (b"2-0", {b"p": b"3"})]}
    df = convert(reply, dtypes={"p": "float64", "n": "Int64", "ok": "boolean"})
    assert df["p"].tolist() == [1.5, 3.0]
    assert df["n"].dtype == "Int64" and df["n"].tolist() == [2, pd.NA]
    assert df["ok"].tolist() == [True, pd.NA]
    with pytest.raises(ValueError, match="'n' cannot be converted to int64"):
        convert(reply, dtypes={"n": "int64"})
    with pytest.raises(ValueError, match="'p' cannot be converted to bool"):
        convert(reply, dtypes={"p": "bool"})


class Tick(msgspec.Struct):
    price: float
    size: int = 0
    live: bool = True
    note: str | None = None
    id: int | None = None


@BOTH
def test_a_schema_gives_each_column_its_field_type_and_default(convert: Any) -> None:
    reply: Any = [[b"t", [(b"1-0", {b"price": b"1.5", b"size": b"7", b"id": b"9"}), (b"2-0", {})]]]
    assert convert(reply, schema=Tick)["price"].isna().tolist() == [False, True]

    class Count(msgspec.Struct):
        size: int  # required, and int64 cannot hold a missing value

    with pytest.raises(ValueError, match="'size' cannot be converted to int64"):
        convert(reply, schema=Count)
    reply[0][1][1] = (b"2-0", {b"price": b"2", b"live": b"false"})
    df = convert(reply, schema=Tick)
    assert df["price"].dtype == np.float64 and df["price"].tolist() == [1.5, 2.0]
    assert df["size"].dtype == np.int64 and df["size"].tolist() == [7, 0]  # default filled
    assert df["live"].dtype == bool and df["live"].tolist() == [True, False]
    assert df["note"].isna().all()  # a field absent from every entry still gets its column
    assert df["field_id"].dtype == "Int64" and df["field_id"].tolist() == [9, pd.NA]
    assert df["id"].tolist() == ["1-0", "2-0"]
    assert convert(None, schema=Tick)["size"].dtype == np.int64
    with pytest.raises(ValueError, match=r"msgspec\.Struct"):
        convert(reply, schema=dict)


# --- plain and fast give exactly the same frame ------------------------------------------------

KEYS = ["a", "b", "price", "id", "stream", "timestamp_ms", "sequence", "field_id", "é"]
values = st.one_of(
    st.text(alphabet=st.sampled_from("ab1.\n\x00-é€"), max_size=4),
    st.binary(max_size=3),  # often not UTF-8
    st.text(max_size=3).map(str.encode),
)


@st.composite
def replies(draw: st.DrawFn) -> Any:
    def entry() -> Any:
        ms, seq = draw(st.integers(0, 2**50)), draw(st.integers(0, 99))
        raw_id: Any = draw(st.sampled_from([f"{ms}-{seq}", f"0{ms}-{seq}"]))
        raw_id = raw_id.encode() if draw(st.booleans()) else raw_id
        keys = draw(st.lists(st.sampled_from(KEYS), max_size=4))
        pairs = [(k.encode() if draw(st.booleans()) else k, draw(values | st.none())) for k in keys]
        if draw(st.booleans()):
            return (raw_id, [x for kv in pairs for x in kv if kv[1] is not None])
        return (raw_id, dict(pairs))

    # "same": every entry has the same keys, key types and layout (the fast path); "sized": the
    # same number of keys and layout, but other keys (the fast path must notice); "mixed": anything.
    mode = draw(st.sampled_from(["same", "sized", "mixed"]))
    as_list = draw(st.booleans())

    def draw_keys() -> list[Any]:
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=size, max_size=size))
        return [k.encode() if draw(st.booleans()) else k for k in keys]  # b"a" and "a" may meet

    size = draw(st.integers(1, 3))
    shared_keys = draw_keys()

    def sized_entry(i: int) -> Any:
        keys = shared_keys if mode == "same" else draw_keys()
        pairs = [(k, draw(values)) for k in keys]
        fields = [x for kv in pairs for x in kv] if as_list else dict(pairs)
        return (f"{i}-{i % 2}".encode(), fields)

    streams = []
    for name in draw(st.lists(st.sampled_from(["s1", "s2", "s3"]), max_size=3, unique=True)):
        n = draw(st.integers(0, 6))
        entries = [entry() if mode == "mixed" else sized_entry(i) for i in range(n)]
        if entries and mode == "mixed" and draw(st.booleans()):
            entries.insert(draw(st.integers(0, len(entries))), (None, None))
        streams.append((name.encode() if draw(st.booleans()) else name, entries))
    shape = draw(st.sampled_from(["resp2", "resp3", "resp3-nested"]))
    if shape == "resp2":
        return [[name, entries] for name, entries in streams]
    if shape == "resp3":
        return dict(streams)
    return {name: [entries] for name, entries in streams}


def reference_frame(reply: Any, include_sequence: bool = False) -> pd.DataFrame:
    """The documented semantics, row by row: a dict per entry, then one frame of text columns."""

    def text(v: Any) -> str:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    pairs = list(reply.items()) if isinstance(reply, dict) else [(p[0], p[1]) for p in reply or []]
    meta = ["stream", "id", "timestamp_ms", *(["sequence"] if include_sequence else [])]
    rows: list[tuple[list[Any], dict[str, str | None]]] = []
    order: dict[str, None] = {}
    for name, entries in pairs:
        entries = entries or []
        first = entries[0] if entries else None
        if isinstance(first, list | tuple) and (not first or isinstance(first[0], list | tuple)):
            entries = [e for sub in entries for e in sub]  # redis-py's RESP3 nesting
        for raw_id, fields in entries:
            if raw_id is None:
                continue  # a deleted entry's placeholder
            id_ = text(raw_id)
            ms, seq = (int(part) for part in id_.split("-"))
            if fields is None:
                fields = {}
            pairs = (
                fields.items()
                if isinstance(fields, dict)
                else zip(fields[::2], fields[1::2], strict=True)
            )
            values: dict[str, str | None] = {}
            for k, v in pairs:
                values[text(k)] = None if v is None else text(v)  # b"a" then "a": the last wins
            order.update(dict.fromkeys(values))
            rows.append(([text(name), id_, ms, seq][: len(meta)], values))
    names: dict[str, str] = {}
    taken = {*meta, *order}
    for k in order:
        column = k
        if k in meta:
            column = f"field_{k}"
            while column in taken:
                column = f"field_{column}"
            taken.add(column)
        names[k] = column
    data = {m: [row[0][i] for row in rows] for i, m in enumerate(meta)}
    data.update({column: [row[1].get(k) for row in rows] for k, column in names.items()})
    return pd.DataFrame(
        {c: pd.Series(v, dtype="int64" if c in meta[2:] else TEXT) for c, v in data.items()}
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=replies(), include_sequence=st.booleans())
def test_fast_and_plain_frames_are_identical(reply: Any, include_sequence: bool) -> None:
    plain = streams_to_dataframe(reply, include_sequence=include_sequence)
    fast = streams_to_dataframe_fast(reply, include_sequence=include_sequence)
    assert_frame_equal(fast, plain)
    assert list(fast.columns[:3]) == ["stream", "id", "timestamp_ms"]
    # Both are one implementation now: hold it to the row-by-row semantics.
    assert_frame_equal(plain, reference_frame(reply, include_sequence))


@settings(max_examples=100, deadline=None)
@example(bad="1-0\n2-0", n=1)
@example(bad=b"9223372036854775807-9223372036854775807", n=0)
@given(bad=st.text(max_size=6) | st.binary(max_size=6), n=st.integers(0, 5))
def test_ids_are_accepted_exactly_when_well_formed(bad: Any, n: int) -> None:
    """The vectorised id parser against the rule written out: ASCII `<ms>-<seq>`, both below
    2**63; anything else is refused with a ValueError that names it."""
    reply = {"s": [(f"{i}-0", {"a": "1"}) for i in range(n)] + [(bad, {"a": "2"})]}
    text = bad.decode("utf-8", "replace") if isinstance(bad, bytes) else bad
    m = re.fullmatch(r"([0-9]+)-([0-9]+)", text)
    well_formed = m is not None and int(m[1]) < 2**63 and int(m[2]) < 2**63
    try:
        frame = streams_to_dataframe_fast(reply)
    except ValueError as exc:
        assert not well_formed, f"{bad!r} refused: {exc}"
        assert repr(bad) in str(exc), "the error names the bad id"
        return
    assert well_formed, f"{bad!r} accepted"
    assert m is not None
    assert frame["id"].tolist()[-1] == text
    assert int(frame["timestamp_ms"].tolist()[-1]) == int(m[1])


def test_a_large_uniform_reply_is_the_same_both_ways() -> None:
    entries = [(f"{i}-{i % 3}".encode(), {b"p": str(i).encode(), b"q": b"x"}) for i in range(5000)]
    reply = [[b"big", entries]]
    assert_frame_equal(streams_to_dataframe_fast(reply), streams_to_dataframe(reply))
    assert_frame_equal(streams_to_dataframe(reply), reference_frame(reply))


@pytest.mark.parametrize(
    "ids",
    [
        [b"1-0", b"2-0"],
        ["1-0", b"2-0"],  # mixed types
        [b"123456789012345678-999999999999999999", b"1-0"],  # 18 digits a part
        [b"9223372036854775807-0", b"0-9223372036854775807"],  # int64's limits
        [b"00000000000000000000000001-2"],  # long but small
    ],
)
def test_ids_of_every_length_and_type_parse_exactly(ids: list[Any]) -> None:
    reply = {b"s": [(i, {b"a": b"1"}) for i in ids]}
    df = streams_to_dataframe(reply, include_sequence=True)
    assert_frame_equal(df, reference_frame(reply, include_sequence=True))


@pytest.mark.parametrize(
    "bad", [b"-1-0", b"1--0", b"1-0-", b"1-\n0", b"1-0\n", b"\n1-0", b"12345678901234567890-0"]
)
def test_ids_the_bulk_check_must_reject(bad: bytes) -> None:
    # Each passes some of the cheap checks (digits, dashes and newlines only) but not all.
    reply = {b"s": [(b"1-0", {b"a": b"1"}), (bad, {b"a": b"2"}), (b"3-0", {b"a": b"3"})]}
    with pytest.raises(ValueError, match="bad stream entry id"):
        streams_to_dataframe(reply)


def test_text_values_are_kept_and_none_values_are_missing() -> None:
    reply = {"s": [("1-0", {"a": "x", "b": None}), ("2-0", {"a": "y", "b": "z"})]}
    df = streams_to_dataframe(reply)
    assert df["a"].tolist() == ["x", "y"] and pd.isna(df["b"][0]) and df["b"][1] == "z"
    assert_frame_equal(df, reference_frame(reply))


# --- pruning --------------------------------------------------------------------------------------


def test_prune_keeps_the_boundary_row_and_returns_a_new_frame() -> None:
    df = pd.DataFrame({"timestamp_ms": [1000, 1999, 2000, 3000], "v": [1, 2, 3, 4]})
    fresh = prune_old_dataframe_rows(df, 1.0, current_time=3.0)
    assert fresh["timestamp_ms"].tolist() == [2000, 3000] and fresh.index.tolist() == [2, 3]
    assert fresh is not df and len(df) == 4
    assert prune_old_dataframe_rows(df, 1.001, current_time=3.0)["v"].tolist() == [2, 3, 4]
    assert prune_old_dataframe_rows(df, 0.9995, current_time=3.0)["v"].tolist() == [4]
    assert prune_old_dataframe_rows(df, 0, current_time=0.0)["v"].tolist() == [1, 2, 3, 4]


def test_prune_uses_the_wall_clock_by_default() -> None:
    now_ms = int(time.time() * 1000)
    df = pd.DataFrame({"ts": [now_ms - 60_000, now_ms - 1_000, now_ms + 5_000]})
    assert prune_old_dataframe_rows(df, 30, "ts")["ts"].tolist() == df["ts"].tolist()[1:]


def test_prune_on_an_empty_frame_and_a_missing_column() -> None:
    empty = streams_to_dataframe_fast(None)
    assert prune_old_dataframe_rows(empty, 10).empty
    with pytest.raises(ValueError, match="no 'when' column"):
        prune_old_dataframe_rows(empty, 10, timestamp_column="when")


# --- TimeSeriesBuffer ------------------------------------------------------------------------------


def frame(ts: list[int], **cols: list[Any]) -> pd.DataFrame:
    return pd.DataFrame({"timestamp_ms": np.array(ts, dtype=np.int64), **cols})


def test_event_clock_buffer_prunes_from_the_newest_timestamp_inclusively() -> None:
    buf = TimeSeriesBuffer(10, clock="event")
    assert buf.last_timestamp is None and len(buf) == 0
    buf.append(frame([0, 5_000], v=[1, 2]))
    buf.append(frame([15_000, 12_000], v=[3, 4]))
    assert buf.last_timestamp == 15_000
    got = buf.get()
    assert got["v"].tolist() == [2, 3, 4] and got.index.tolist() == [0, 1, 2]
    assert len(buf) == 3
    buf.append(frame([1_000], v=[5]))  # late and too old: dropped, the newest seen stays 15 s
    assert buf.get()["v"].tolist() == [2, 3, 4] and buf.last_timestamp == 15_000
    buf.clear()
    assert len(buf) == 0 and buf.last_timestamp is None


def test_wall_clock_buffer_prunes_by_time_time() -> None:
    now_ms = int(time.time() * 1000)
    buf = TimeSeriesBuffer(30)
    buf.append(frame([now_ms - 120_000, now_ms - 1_000, now_ms - 90_000], v=[1, 2, 3]))
    assert buf.get()["v"].tolist() == [2]
    assert buf.last_timestamp == now_ms - 1_000


def test_max_rows_keeps_the_newest_rows_in_append_order() -> None:
    buf = TimeSeriesBuffer(3600, max_rows=3, clock="event")
    buf.append(frame([5, 1, 9], v=[1, 2, 3]))
    buf.append(frame([7, 2], v=[4, 5]))
    assert buf.get()["v"].tolist() == [1, 3, 4]  # timestamps 5, 9, 7: the three newest
    for i in range(500):
        buf.append(frame([100 + i], v=[i]))
    assert buf.get()["v"].tolist() == [497, 498, 499]
    assert buf._rows <= 2 * 3 + frames_buffer._PENDING_MAX  # memory stays bounded between reads


def test_buffer_keeps_columns_when_empty_and_rejects_bad_input() -> None:
    buf = TimeSeriesBuffer(1, clock="event")
    assert list(buf.get().columns) == ["timestamp_ms"]
    buf.append(frame([], v=[]))
    assert list(buf.get().columns) == ["timestamp_ms", "v"] and buf.last_timestamp is None
    with pytest.raises(ValueError, match="no 'timestamp_ms' column"):
        buf.append(pd.DataFrame({"t": [1]}))
    for age_s, max_rows in ((-1, None), (1, 0)):
        with pytest.raises(ValueError):
            TimeSeriesBuffer(age_s, max_rows=max_rows)
    with pytest.raises(ValueError, match="clock"):
        TimeSeriesBuffer(1, clock="cpu")  # type: ignore[arg-type]


def test_the_frame_get_returns_can_be_changed_without_touching_the_buffer() -> None:
    buf = TimeSeriesBuffer(60, clock="event")
    buf.append(frame([1, 2], v=[1, 2]))
    got = buf.get()
    got["extra"] = 0
    got.loc[0, "v"] = 99
    assert list(buf.get().columns) == ["timestamp_ms", "v"] and buf.get()["v"].tolist() == [1, 2]


def test_appends_are_concatenated_lazily_not_quadratically(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_concat = pd.concat

    def counting_concat(objs: list[pd.DataFrame], **kw: Any) -> Any:
        calls.append(sum(len(o) for o in objs))
        return real_concat(objs, **kw)

    monkeypatch.setattr(pd, "concat", counting_concat)
    buf = TimeSeriesBuffer(1e9, clock="event")
    n = 4096
    for i in range(n):
        buf.append(frame([i], v=[i]))
    assert len(calls) < n / 16  # one concat per 64 appends, plus merges of equal-sized chunks
    assert sum(calls) <= n * 8  # each row copied O(log n) times, not O(n)
    assert buf.get()["v"].tolist() == list(range(n))
    calls.clear()
    assert len(buf.get()) == n and calls == []  # cached: a second read concatenates nothing


# --- real Redis ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_real_xread_and_xreadgroup_output_converts(redis_url: str, protocol: int) -> None:
    r: Any = syncredis.Redis.from_url(redis_url, protocol=protocol)
    try:
        ids = [r.xadd("ticks", {"price": "1.5", "id": "own", "sym": "é"}) for _ in range(3)]
        ids.append(r.xadd("ticks", {"price": "2"}))
        r.xadd("other", {"x": "1"})
        reply = r.xread({"ticks": 0, "other": 0})
        r.xgroup_create("ticks", "g", "0")
        group_reply = r.xreadgroup("g", "c1", {"ticks": ">"})
        r.xdel("ticks", ids[1])  # still pending: its history entry comes back without fields
        history = r.xreadgroup("g", "c1", {"ticks": "0"})
        conn = r.connection_pool.get_connection()
        try:  # the raw reply, before redis-py's callbacks: fields as flat lists
            conn.send_command("XREAD", "STREAMS", "ticks", "other", "0", "0")
            raw = conn.read_response()
        finally:
            r.connection_pool.release(conn)
    finally:
        r.close()
    assert isinstance(reply, dict) == isinstance(raw, dict) == (protocol == 3)
    ids_text = [i.decode() for i in ids]
    kept = [i for i in ids_text if i != ids_text[1]]
    for data, ticks_ids, other_rows in [
        (reply, ids_text, 1),
        (group_reply, ids_text, 0),
        (history, ids_text, 0),
        (raw, kept, 1),
    ]:
        df = streams_to_dataframe_fast(data, include_sequence=True, dtypes={"price": "float64"})
        assert_frame_equal(
            df, streams_to_dataframe(data, include_sequence=True, dtypes={"price": "float64"})
        )
        assert df["stream"].tolist() == ["ticks"] * len(ticks_ids) + ["other"] * other_rows
        assert df["id"].tolist()[: len(ticks_ids)] == ticks_ids
        ticks = df[df["stream"] == "ticks"]
        assert (ticks["timestamp_ms"] == ticks["id"].str.split("-").str[0].astype("int64")).all()
        assert ticks["field_id"].iloc[0] == "own" and ticks["sym"].iloc[0] == "é"
        prices = ticks["price"].tolist()
        if data is history:  # the deleted entry keeps its row, with every field missing
            assert prices[0] == 1.5 and np.isnan(prices[1]) and prices[2:] == [1.5, 2.0]
        else:
            assert prices == [1.5] * (len(prices) - 1) + [2.0]
