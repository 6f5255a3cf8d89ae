"""Redis 8 native paths beside their fallbacks, on one Redis ≥ 8.6 server, in alternating rounds.

    .venv/bin/python scripts/bench_redis8.py [--server PATH] [--rounds 5] [--quick] [--json]

The server is the Redis 8.10 build at /work/cache/redis-8.10/redis-server, or --server (a
redis-server binary), or REDIS_URL when that is set and --server is not given.

- send, one entry per call (sends/s; --sends per round) and send_batch of 100 (entries/s;
  --entries per round), through `streammachine.produce.Producer`: XADD IDMP (Redis ≥ 8.6) against
  a plain XADD (no idempotency: the baseline) and against our marker script (the fallback used
  on older servers and Valkey: XADD + a marker key in one Lua call). Each variant writes its own
  stream, deleted after the round.
- claim: --pending entries pending for a dead consumer, taken over by another and acked, 500 at
  a time: XREADGROUP ... CLAIM min-idle-time (Redis ≥ 8.4, one call reads and claims) against
  XPENDING IDLE + XCLAIM (the fallback, the baseline). Each round uses fresh groups.

--quick: 300 sends, 2,000 entries, 2,000 pending, 2 rounds.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import benchlib
import redis
import redis.asyncio as aioredis

from streammachine.connection import RedisConnection
from streammachine.features import Features
from streammachine.produce import Producer

DEFAULT_SERVER = "/work/cache/redis-8.10/redis-server"
FIELDS = ["symbol", "AAPL", "price", "150.25", "volume", "100"]
BATCH = 100
COUNT = 500


class Pre86(RedisConnection):
    """A connection that reports a server without IDMP, so `Producer` takes the marker path."""

    async def features(self) -> Features:
        return Features("redis", (8, 2, 0))


def send_variants(url: str, n: int, batch: int) -> dict[str, Callable[[], float]]:
    """Variants writing `n` entries, `batch` per call; each returns entries/s."""
    counter = iter(range(1_000_000))

    async def plain(stream: str) -> None:
        client = aioredis.Redis.from_url(url)
        for start in range(0, n, batch):
            if batch == 1:
                await client.xadd(stream, dict(zip(FIELDS[::2], FIELDS[1::2], strict=True)))
                continue
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(min(batch, n - start)):
                    pipe.execute_command("XADD", stream, "*", *FIELDS)
                await pipe.execute()
        await client.aclose()

    def producer(conn_type: type[RedisConnection]) -> Callable[[str], Awaitable[None]]:
        async def go(stream: str) -> None:
            conn = conn_type(url=url)
            p = Producer(conn, "bench")
            for start in range(0, n, batch):
                await p.write(stream, [FIELDS] * min(batch, n - start), maxlen=None)
            await conn.client.aclose()

        return go

    def timed(fn: Callable[[str], Awaitable[None]]) -> Callable[[], float]:
        def run() -> float:
            stream = f"send-{next(counter)}"
            t0 = time.perf_counter()
            asyncio.run(fn(stream))
            rate = n / (time.perf_counter() - t0)
            r = redis.Redis.from_url(url)
            written = r.xlen(stream)
            r.delete(stream, *r.keys(f"*{stream}*"))  # the stream and the marker keys
            r.close()
            if written != n:
                raise SystemExit(f"{stream}: {written} entries written, {n} expected")
            return rate

        return run

    return {
        "plain XADD": timed(plain),
        "XADD IDMP (Producer)": timed(producer(RedisConnection)),
        "marker script (Producer)": timed(producer(Pre86)),
    }


def claim_variants(url: str, n: int) -> dict[str, Callable[[], float]]:
    """Variants taking over `n` entries pending for a dead consumer; each returns entries/s."""
    counter = iter(range(1_000_000))
    stream = "claim"

    def pending_group() -> str:
        group = f"g{next(counter)}"
        r = redis.Redis.from_url(url)
        r.xgroup_create(stream, group, id="0")
        r.xreadgroup(group, "dead", {stream: ">"}, count=n)
        r.close()
        time.sleep(0.005)  # idle past min-idle-time
        return group

    async def with_claim(client: Any, group: str) -> int:
        reply = await client.execute_command(
            "XREADGROUP", "GROUP", group, "live", "COUNT", COUNT, "CLAIM", 1,
            "STREAMS", stream, ">",
        )  # fmt: skip
        if not reply:
            return 0
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        ids = [e[0] for e in entries]
        if ids:
            await client.xack(stream, group, *ids)
        return len(ids)

    async def with_xclaim(client: Any, group: str) -> int:
        rows = await client.xpending_range(stream, group, "-", "+", COUNT, idle=1)
        ids = [row["message_id"] for row in rows]
        if not ids:
            return 0
        claimed = await client.xclaim(stream, group, "live", 1, ids)
        await client.xack(stream, group, *[entry_id for entry_id, _ in claimed])
        return len(claimed)

    def timed(step: Callable[[Any, str], Awaitable[int]]) -> Callable[[], float]:
        def run() -> float:
            group = pending_group()

            async def go() -> float:
                client = aioredis.Redis.from_url(url)
                done = 0
                t0 = time.perf_counter()
                while done < n:
                    got = await step(client, group)
                    if not got:
                        raise SystemExit(f"claim stalled after {done} of {n} entries")
                    done += got
                elapsed = time.perf_counter() - t0
                await client.aclose()
                return n / elapsed

            rate = asyncio.run(go())
            r = redis.Redis.from_url(url)
            r.xgroup_destroy(stream, group)
            r.close()
            return rate

        return run

    r = redis.Redis.from_url(url)
    r.delete(stream)
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for _ in range(start, min(n, start + 10_000)):
            pipe.execute_command("XADD", stream, "*", *FIELDS)
        pipe.execute()
    r.close()
    return {"XPENDING + XCLAIM": timed(with_xclaim), "XREADGROUP CLAIM": timed(with_claim)}


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--server", help=f"a redis-server ≥ 8.6 (default {DEFAULT_SERVER})")
    p.add_argument("--sends", type=int, default=5_000, help="single sends per round")
    p.add_argument("--entries", type=int, default=50_000, help="batched entries per round")
    p.add_argument("--pending", type=int, default=50_000, help="pending entries per round")
    args = benchlib.parse_args(__doc__, p)
    if args.quick:
        args.sends, args.entries, args.pending = 300, 2_000, 2_000
    binary = args.server or (None if os.environ.get("REDIS_URL") else DEFAULT_SERVER)
    if binary == DEFAULT_SERVER and not os.path.exists(binary):
        print(f"bench_redis8 skipped: no Redis 8.10 at {binary} (pass --server PATH)")
        return
    if binary is not None and not os.path.exists(binary):
        raise SystemExit(
            f"{binary}: no such redis-server; build Redis 8.10 there or pass --server PATH"
        )
    benchlib.use_uvloop()
    with benchlib.redis_url(binary) as url:
        r = redis.Redis.from_url(url)
        version = tuple(int(x) for x in r.info("server")["redis_version"].split(".")[:2])
        r.close()
        if version < (8, 6):
            raise SystemExit(f"{benchlib.server_version(url)}: needs Redis ≥ 8.6 (IDMP)")
        single = benchlib.Bench(
            f"send, one entry per call, {args.sends:,} sends", "sends/s", ["plain XADD"]
        )
        single.run(send_variants(url, args.sends, 1), args.rounds)
        batched = benchlib.Bench(
            f"send_batch of {BATCH}, {args.entries:,} entries", "entries/s", ["plain XADD"]
        )
        batched.run(send_variants(url, args.entries, BATCH), args.rounds)
        claim = benchlib.Bench(
            f"claim {args.pending:,} pending entries, {COUNT} a call, then XACK",
            "entries/s",
            ["XPENDING + XCLAIM"],
        )
        claim.run(claim_variants(url, args.pending), args.rounds)
        header = benchlib.server_version(url)
    benchlib.report(args, [single, batched, claim], header)


if __name__ == "__main__":
    main()
