"""Typed messages: decoding a msgspec Struct from a field map vs a packed payload, each beside its
untyped baseline in the same run.

    .venv/bin/python scripts/bench_typed.py [--rounds 5] [--messages 200000] [--quick] [--json]

- decode only (µs/msg, lower is better), alternating rounds of 200,000 decodes (20,000 with
  --quick): the hand-written baseline (field list → str dict → `msgspec.convert(strict=False)`)
  against `StructCodec` with "fields" and with "msgpack";
- end to end (msg/s): a prefilled stream (--messages ticks of 4 fields, or one packed field)
  drained through one agent, each variant through its own group: an untyped agent (the baseline)
  against `schema=Tick` with payload "fields" and "msgpack"; per-message handlers (COUNT 500)
  and batch handlers (COUNT 1000), each against its own untyped baseline.

--quick: 3,000 ticks, 2 rounds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import benchlib
import msgspec
import redis

from streammachine import App, Message
from streammachine.codec import StructCodec


class Tick(msgspec.Struct):
    symbol: str
    price: float
    volume: float
    ts: int


TICK = Tick("AAPL", 150.25, 100.0, 1_700_000_000_000)


def flat(payload: str) -> list[bytes]:
    out: list[bytes] = []
    for k, v in StructCodec(Tick, payload).encode(TICK).items():  # type: ignore[arg-type]
        out += [k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v]
    return out


def decode_bench(n: int, rounds: int) -> benchlib.Bench:
    fields, packed = flat("fields"), flat("msgpack")
    codecs = {p: StructCodec(Tick, p) for p in ("fields", "msgpack")}  # type: ignore[arg-type]

    def hand_written(entry: list[bytes]) -> Tick:
        it = iter(entry)
        return msgspec.convert(
            {k.decode(): v.decode() for k, v in zip(it, it, strict=False)}, Tick, strict=False
        )

    def timed(fn: Callable[[list[bytes]], Any], entry: list[bytes]) -> Callable[[], float]:
        def go() -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                fn(entry)
            return (time.perf_counter() - t0) / n * 1e6

        return go

    assert (
        hand_written(fields) == codecs["fields"].decode(fields) == codecs["msgpack"].decode(packed)
    )
    bench = benchlib.Bench(
        f"decode only, {n:,} ticks", "µs/msg", baselines=["hand-written convert (fields)"]
    )
    bench.run(
        {
            "hand-written convert (fields)": timed(hand_written, fields),
            "StructCodec fields": timed(codecs["fields"].decode, fields),
            "StructCodec msgpack": timed(codecs["msgpack"].decode, packed),
        },
        rounds,
    )
    return bench


def prefill(url: str, stream: str, n: int, payload: str) -> None:
    fields = StructCodec(Tick, payload).encode(TICK)  # type: ignore[arg-type]
    r = redis.Redis.from_url(url)
    r.delete(stream)
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for _ in range(start, min(n, start + 10_000)):
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()
    r.close()


async def run_agent(url: str, n: int, payload: str | None, batch: bool, group: str) -> float:
    app = App(name="bench", redis_url=url)
    stream = f"t-{payload or 'fields'}"
    typed: dict[str, Any] = {} if payload is None else {"schema": Tick, "payload": payload}
    if batch:

        @app.agent(stream, group=group, count=1000, batch=True, **typed)
        async def handle_batch(records: list[Message]) -> None:
            pass
    else:

        @app.agent(stream, group=group, count=500, **typed)
        async def handle(record: Message) -> None:
            pass

    agent = app.agents[0]
    task = asyncio.create_task(app.run())
    t0 = time.perf_counter()
    while agent.stats.processed < n:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    await app.shutdown()
    await task
    r = redis.Redis.from_url(url)
    r.xgroup_destroy(stream, group)
    r.close()
    return n / elapsed


def end_to_end(url: str, n: int, rounds: int, batch: bool) -> benchlib.Bench:
    counter = iter(range(1_000_000))
    kind = "batch handler, COUNT 1000" if batch else "per-message handler, COUNT 500"

    def variant(payload: str | None) -> Callable[[], float]:
        return lambda: asyncio.run(run_agent(url, n, payload, batch, f"g{next(counter)}"))

    bench = benchlib.Bench(f"end to end, {kind}", "msg/s", baselines=["untyped agent"])
    bench.run(
        {
            "untyped agent": variant(None),
            "schema=Tick, fields": variant("fields"),
            "schema=Tick, msgpack": variant("msgpack"),
        },
        rounds,
    )
    return bench


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--messages", type=int, default=200_000)
    args = benchlib.parse_args(__doc__, p)
    n = 3_000 if args.quick else args.messages
    benchlib.use_uvloop()
    benches = [decode_bench(20_000 if args.quick else 200_000, args.rounds)]
    with benchlib.redis_url() as url:
        for payload in ("fields", "msgpack"):
            prefill(url, f"t-{payload}", n, payload)
        benches += [end_to_end(url, n, args.rounds, batch) for batch in (False, True)]
        header = f"{benchlib.server_version(url)}; typed messages: {n:,} ticks of 4 fields"
    benchlib.report(args, benches, header)


if __name__ == "__main__":
    main()
