"""The dashboard's state API (`/api/tables`, `/api/tables/{name}`, `/api/windows`,
`/api/windows/{name}`) against a real Redis with a real App: the exact counts sent, the
watermark and late entries of a partitioned window agent, paging, bad input, markup as data,
and the open-window values of every window kind as the engine computes them."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import redis as syncredis

from streammachine import App, Message, keys
from streammachine import windows as w
from streammachine.dashboard import create_dashboard
from streammachine.state.browse import window_open
from streammachine.state.windowing import WindowAgent
from tests.util import eventually, running

pytestmark = pytest.mark.anyio

XSS = "<script>alert(1)</script>"
SYMS = ["AAPL", "MSFT", "GOOG", "TSLA", "AMZN"]
CLICKS = {f"u{i}": i + 1 for i in range(5)}  # user → clicks sent
GRACE_MS = 1000


@contextlib.asynccontextmanager
async def dashboard(
    url: str, app: App | None = None, token: str | None = None
) -> AsyncIterator[httpx2.AsyncClient]:
    """The dashboard's Starlette app in this loop, through httpx2's ASGI transport."""
    dash = create_dashboard(url, app=app, token=token)
    transport = httpx2.ASGITransport(app=dash)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://dash") as client:
            yield client
    finally:
        await dash.state.backend.aclose()


def make_app(url: str) -> App:
    """Clicks counted per user in a table partitioned with its stream (2 partitions), trades in
    tumbling 10 s windows per symbol (2 partitions, 1 s grace), a TTL table, an empty one."""
    app = App(name="state", redis_url=url)
    counts = app.table("counts", default=0, schema=int, stream="clicks")
    app.table("notes", ttl_s=600)
    app.table("empty", default=0)

    @app.agent("clicks", group="g", partitions=2)
    async def count(record: Message) -> None:
        await counts.incr(record.message["user"])

    app.window(
        "trades", "bars", kind=w.tumbling(10), key="sym", time="ts", grace_s=GRACE_MS / 1000,
        agg={"n": w.count(), "qty": w.sum("qty")}, to="bars", partitions=2, lease_ms=2000,
    )  # fmt: skip
    return app


def partition_of(key: str) -> str:
    return keys.partition("trades", zlib.crc32(key.encode()) % 2)


async def send_traffic(app: App) -> None:
    """Clicks; per symbol 3 trades in [0, 10 s) (closed by the next), 3 in [20 s, 30 s) (open),
    then one at 5 s: late, its window closed (watermark 25 s - 1 s grace)."""
    for user, n in CLICKS.items():
        for _ in range(n):
            await app.send("clicks", {"user": user}, key=user, now=True)
    phases = [[1000, 2000, 3000], [25000, 21000, 22000], [5000]]
    for phase in phases:
        for sym in SYMS:
            for ts in phase:
                await app.send("trades", {"sym": sym, "ts": ts, "qty": ts // 1000}, key=sym,
                               now=True)  # fmt: skip


async def test_tables_and_windows_read_exactly_what_was_sent(redis_url: str) -> None:
    assert {partition_of(s) for s in SYMS} == {"trades:p0", "trades:p1"}, "both partitions used"
    app = make_app(redis_url)
    notes = app.tables["notes"]  # type: ignore[attr-defined]
    async with running(app), dashboard(redis_url, app=app) as client:
        await notes.set("evil", XSS)
        for i in range(25):
            await notes.set(f"k{i:03}", {"i": i})
        await send_traffic(app)

        async def settled() -> Any:
            tables = (await client.get("/api/tables")).json()["tables"]
            wins = (await client.get("/api/windows")).json()
            got = {t["table"]: t["keys"] for t in tables}
            bars = wins["windows"][0] if wins["windows"] else {}
            ok = got.get("counts") == len(CLICKS) and bars.get("late") == len(SYMS)
            return ok and bars.get("emitted") == len(SYMS) and (tables, wins)

        tables, wins = await eventually(settled, timeout_s=60, what="clicks and trades handled")

        # --- /api/tables: every declared table, with what the app says of it
        by_name = {t["table"]: t for t in tables}
        assert set(by_name) == {"counts", "notes", "empty"}
        assert by_name["counts"] | {"shards": 0} == {
            "table": "counts", "declared": True, "shards": 0, "partitioned": True,
            "keys": 5, "ttl_keys": 0, "ttl_ms": None, "stream": "clicks",
        }  # fmt: skip
        assert 1 <= by_name["counts"]["shards"] <= 2
        assert by_name["notes"]["keys"] == by_name["notes"]["ttl_keys"] == 26
        assert (by_name["notes"]["ttl_ms"], by_name["notes"]["partitioned"]) == (600_000, False)
        assert (by_name["empty"]["keys"], by_name["empty"]["shards"]) == (0, 0)

        # --- /api/tables/{name}: the counts per key equal the clicks sent
        page = (await client.get("/api/tables/counts")).json()
        assert {r["key"]: r["value"] for r in page["keys"]} == CLICKS
        assert page["next"] is None and page["matching"] == 5
        assert all(r["expires_in_ms"] is None for r in page["keys"])

        # paging: 25 keys with the prefix, 10 a page, in key order, no key twice
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"prefix": "k0", "limit": "10"} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/api/tables/notes", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["matching"] == 25
            seen += [r["key"] for r in body["keys"]]
            assert all(r["value"] == {"i": int(r["key"][1:])} for r in body["keys"])
            assert all(0 < r["expires_in_ms"] <= 600_000 for r in body["keys"])
            pages += 1
            cursor = body["next"]
            if cursor is None:
                break
        assert (seen, pages) == ([f"k{i:03}" for i in range(25)], 3)
        empty = (await client.get("/api/tables/empty")).json()
        assert (empty["keys"], empty["next"], empty["matching"]) == ([], None, 0)
        nothing = (await client.get("/api/tables/notes", params={"prefix": "zz"})).json()
        assert nothing["keys"] == []

        # markup in a value is data: escaped in the JSON bytes, exact once decoded
        response = await client.get("/api/tables/notes", params={"prefix": "evil"})
        assert response.headers["content-type"] == "application/json"
        assert b"<script>" not in response.content and b"\\u003cscript\\u003e" in response.content
        assert response.json()["keys"] == [
            {
                "key": "evil",
                "value": XSS,
                "expires_in_ms": response.json()["keys"][0]["expires_in_ms"],
            }
        ]

        # --- /api/windows: per partition, the watermark is the newest event time - grace
        [bars] = wins["windows"]
        assert {k: bars[k] for k in ("name", "group", "kind", "size_ms", "step_ms", "grace_ms",
                                     "emit", "to", "emitted", "late", "open_windows")} == {
            "name": "bars", "group": "bars", "kind": "tumbling(10)", "size_ms": 10_000,
            "step_ms": 10_000, "grace_ms": GRACE_MS, "emit": "close", "to": "bars",
            "emitted": len(SYMS), "late": len(SYMS), "open_windows": len(SYMS),
        }  # fmt: skip
        assert bars["aggs"] == {"n": "count()", "qty": "sum('qty')"}
        parts = {p["stream"]: p for p in bars["partitions"]}
        assert set(parts) == {"trades:p0", "trades:p1"}
        for stream, p in parts.items():
            mine = sum(1 for s in SYMS if partition_of(s) == stream)
            assert (p["max_event_ms"], p["watermark_ms"]) == (25_000, 25_000 - GRACE_MS)
            assert p["watermark_lag_ms"] == wins["generated_at_ms"] - p["watermark_ms"]
            assert (p["late"], p["open_windows"], p["open_keys"]) == (mine, mine, mine)

        # --- /api/windows/{name}: the open windows with their current values
        detail = (await client.get("/api/windows/bars")).json()
        assert detail["open_windows"] == len(SYMS) and not detail["truncated"]
        assert detail["errors"] == []
        assert detail["windows"] == [
            {"stream": partition_of(s), "key": s, "start": 20_000, "end": 30_000,
             "values": {"n": 3, "qty": 25 + 21 + 22}}
            for s in sorted(SYMS)
        ]  # fmt: skip
        one = (await client.get("/api/windows/bars", params={"key": "MSFT"})).json()
        assert [(x["key"], x["values"]) for x in one["windows"]] == [("MSFT", {"n": 3, "qty": 68})]
        two = (await client.get("/api/windows/bars", params={"limit": "2"})).json()
        assert [x["key"] for x in two["windows"]] == sorted(SYMS)[:2] and two["truncated"]
        none = (await client.get("/api/windows/bars", params={"key": "NOPE"})).json()
        assert none["windows"] == [] and none["open_windows"] == 0
    await app.aclose()

    # Without the app: the same tables from Redis alone (no TTL setting, partitions by shard)
    async with dashboard(redis_url) as client:
        tables = {t["table"]: t for t in (await client.get("/api/tables")).json()["tables"]}
        assert set(tables) == {"counts", "notes"}  # "empty" never held a key
        assert (tables["counts"]["keys"], tables["counts"]["declared"]) == (5, False)
        assert (tables["notes"]["ttl_keys"], tables["notes"]["ttl_ms"]) == (26, None)
        assert tables["counts"]["partitioned"] is True and tables["notes"]["partitioned"] is False


async def test_bad_input_is_a_400_and_unknown_names_a_404(redis_url: str) -> None:
    app = App(name="state", redis_url=redis_url)
    app.table("counts")
    async with dashboard(redis_url, app=app) as client:
        for bad in ("0", "-1", "abc", "1001", "1.5"):
            response = await client.get("/api/tables/counts", params={"limit": bad})
            assert response.status_code == 400, bad
            assert "limit must be a whole number from 1 to 1000" in response.json()["error"]
            response = await client.get("/api/windows/bars", params={"limit": bad})
            assert response.status_code == 400, bad
        long = await client.get("/api/tables/counts", params={"prefix": "x" * 2000})
        assert long.status_code == 400 and "prefix is longer" in long.json()["error"]
        missing = await client.get("/api/tables/nope")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no table 'nope' here (tables: none; see /api/tables)"}
        gone = await client.get("/api/windows/bars")
        assert gone.status_code == 404
        assert gone.json()["error"] == "no window agent 'bars' has state here (see /api/windows)"
        assert (await client.get("/api/windows")).json()["windows"] == []
        # declared but empty: a table, not a 404
        assert (await client.get("/api/tables/counts")).status_code == 200


async def test_the_state_api_needs_the_token(redis_url: str) -> None:
    async with dashboard(redis_url, token="s3cret") as client:
        for path in ("/api/tables", "/api/tables/x", "/api/windows", "/api/windows/x"):
            assert (await client.get(path)).status_code == 401, path
            auth = {"Authorization": "Bearer s3cret"}
            assert (await client.get(path, headers=auth)).status_code in (200, 404), path


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
async def test_open_window_values_are_the_engines_for_every_kind(
    kind: str, redis_url: str, redis_sync: syncredis.Redis, aredis: Any
) -> None:
    """The values `window_open` decodes from Redis equal the engine's own current values of
    the windows still open, for each kind and every built-in aggregate."""
    kinds = {"tumbling": w.tumbling(10), "hopping": w.hopping(10, 5), "sliding": w.sliding(10),
             "session": w.session(gap=3)}  # fmt: skip
    aggs = {"n": w.count(), "qty": w.sum("qty"), "hi": w.max("px"), "lo": w.min("px"),
            "avg": w.mean("px"), "open": w.first("px"), "close": w.last("px")}  # fmt: skip
    agent = WindowAgent("ticks", group="g", name="bars", kind=kinds[kind], agg=aggs, grace_s=2)
    engine = w.Engine(kinds[kind], agent.aggs, agent.grace_ms, track=True)
    for i in range(60):
        t = 1000 * i + (i * 7919) % 900
        engine.add(f"s{i % 3}", t, {"qty": str(i % 5 + 1), "px": str(100 + (i * 31) % 17)})
    current = {(r.key, r.start, r.end): r.values for r in engine.updates()}
    closed = {(r.key, r.start, r.end) for r in engine.close()}
    want = {k: v for k, v in current.items() if k not in closed}
    assert want, "some windows are still open"
    hash_key = keys.window("ticks", "g", "bars")
    state = {"~meta": agent.meta("ticks"), "~t": str(engine.max_t), "~late": "0", "~v": "1"}
    for key in engine.keys:
        raw = engine.dump(key)
        assert raw is not None
        state["k:" + key] = raw  # type: ignore[assignment]
    redis_sync.hset(hash_key, mapping=state)  # type: ignore[arg-type]
    got = await window_open(aredis.client, "bars", limit=1000)
    assert got is not None and got["errors"] == []
    assert {(x["key"], x["start"], x["end"]): x["values"] for x in got["windows"]} == want
    assert [x["stream"] for x in got["windows"]] == ["ticks"] * len(want)


async def test_a_reduce_value_is_null_and_unreadable_state_is_an_error(
    redis_url: str, redis_sync: syncredis.Redis, aredis: Any
) -> None:
    """`reduce(fn)` needs the app's function: its value reads back as None, the built-in
    aggregates beside it are computed; a key whose state is not the kind's is listed in
    `errors`, the others still shown."""
    agent = WindowAgent(
        "ticks", group="g", name="bars", kind=w.tumbling(10),
        agg={"n": w.count(), "users": w.reduce(lambda rows: len(rows))},
    )  # fmt: skip
    engine = w.Engine(agent.kind, agent.aggs, 0, track=False)
    for t in (1000, 2000, 3000):
        engine.add("a", t, {})
    state: dict[str, Any] = {"~meta": agent.meta("ticks"), "~t": "3000", "~late": "0"}
    state |= {"k:a": engine.dump("a"), "k:bad": b"\x01"}
    redis_sync.hset(keys.window("ticks", "g", "bars"), mapping=state)
    got = await window_open(aredis.client, "bars")
    assert got is not None
    assert got["windows"] == [
        {"stream": "ticks", "key": "a", "start": 0, "end": 10_000,
         "values": {"n": 3, "users": None}}
    ]  # fmt: skip
    [error] = got["errors"]
    assert "key 'bad'" in error and "tumbling" in error
