"""Keyed partitions with one owner each (DESIGN.md "partitions"): every key's entries handled in
order across processes, a SIGKILLed owner's partitions taken over in order, a joining process
taking partitions without reordering, and never two owners of one partition at a time — on one
node and on a 3-master cluster, with real `streammachine run` processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as syncredis
from redis.cluster import RedisCluster as SyncCluster

from streammachine import keys
from streammachine.testing import RedisClusterServer, free_port
from tests.util import start_or_skip, wait_sync

APPS = Path(__file__).parent / "apps"
K, KEYS, PER_KEY = 4, 8, 250


@pytest.fixture(params=["node", "cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    if request.param == "node":
        url = request.getfixturevalue("redis_url")
        client = syncredis.Redis.from_url(url)
        yield url, client
        client.close()
        return
    cluster = start_or_skip(RedisClusterServer())
    client = SyncCluster(host="127.0.0.1", port=cluster.servers[0].port)
    try:
        yield cluster.url, client
    finally:
        client.close()
        cluster.close()


def _start(url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(APPS)}
    return subprocess.Popen(
        [sys.executable, "-m", "streammachine", "run", "keyed_app:app", "--log-format", "json",
         *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _send_all(r: Any, seqs: range = range(PER_KEY)) -> None:
    pipe = r.pipeline(transaction=False)
    for seq in seqs:  # interleaved keys, each key's entries in order
        for k in range(KEYS):
            key = f"k{k}"
            stream = f"ticks:p{zlib.crc32(key.encode()) % K}"  # App.route's choice
            pipe.xadd(stream, {"key": key, "seq": str(seq)})
    pipe.execute()


def _outputs(r: Any) -> list[tuple[int, dict[bytes, bytes]]]:
    out = []
    for p in range(K):
        out += [(p, f) for _, f in r.xrange(f"{{ticks:p{p}}}:out")]
    return out


def _count(r: Any) -> int:
    return sum(r.xlen(f"{{ticks:p{p}}}:out") for p in range(K))


class LeaseSampler:
    """Reads every partition's lease every 20 ms in a thread, remembering the owners seen."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self.samples: list[list[bytes | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with_owner = [self.r.get(keys.partition_lease("ticks", "keyed", i)) for i in range(K)]
            self.samples.append(with_owner)
            time.sleep(0.02)

    def __enter__(self) -> LeaseSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def _check(r: Any, pids: set[int]) -> None:
    """Every key's outputs exactly once and in order; per partition, one handling process at a
    time (the runs of one pid never overlap another's in time)."""
    by_key: dict[str, list[int]] = defaultdict(list)
    by_partition: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for p, f in _outputs(r):
        by_key[f[b"key"].decode()].append(int(f[b"seq"]))
        by_partition[p].append((float(f[b"t"]), int(f[b"pid"])))
    assert len(by_key) == KEYS
    for key, seqs in by_key.items():
        assert seqs == list(range(PER_KEY)), f"{key}: outputs out of order or not exactly once"
    for p, handled in by_partition.items():
        assert {pid for _, pid in handled} <= pids
        runs: list[tuple[int, float, float]] = []  # (pid, first, last) in output order
        for t, pid in handled:
            if runs and runs[-1][0] == pid:
                runs[-1] = (pid, runs[-1][1], t)
            else:
                runs.append((pid, t, t))
        for (_, _, end), (_, start, _) in itertools.pairwise(runs):
            assert start >= end, f"partition {p}: two processes handled it at once"


def test_per_key_order_across_processes_kill_and_join(target: tuple[str, Any]) -> None:
    url, r = target
    half = PER_KEY // 2
    _send_all(r, range(half))
    a, b = _start(url), _start(url)
    procs = [a, b]
    try:
        with LeaseSampler(r) as sampler:
            wait_sync(lambda: _count(r) >= KEYS * half * 0.4, 120, "40 % of the first half")
            a.send_signal(signal.SIGKILL)  # an owner dies mid-stream: b takes its partitions
            a.wait()
            c = _start(url)  # a process joins: partitions move to it cooperatively
            procs.append(c)
            wait_sync(
                lambda: any(f"-{c.pid}-" in (v or b"").decode() for v in sampler.samples[-1]),
                60,
                "the new process owning a partition",
            )
            _send_all(r, range(half, PER_KEY))
            wait_sync(lambda: _count(r) >= KEYS * PER_KEY, 120, "everything handled")
        pending = sum(r.xpending(f"ticks:p{i}", "keyed")["pending"] for i in range(K))
        assert pending == 0
        # the dead owner's leases were taken over: none is left to it at the end, and every
        # partition was seen owned by a live process (a handoff may leave one free a moment)
        final = [(v or b"").decode() for v in sampler.samples[-1]]
        assert all(f"-{a.pid}-" not in v for v in final), final
        live = (f"-{b.pid}-", f"-{c.pid}-")
        for i in range(K):
            owners = {(sample[i] or b"").decode() for sample in sampler.samples}
            assert any(o for o in owners if any(p in o for p in live)), (i, owners)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    handled_by = {int(f[b"pid"]) for _, f in _outputs(r)}
    assert c.pid in handled_by, "the process that joined handled entries"
    _check(r, {a.pid, b.pid, c.pid})


def _metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return None


def _owners(url: str) -> dict[str, str]:
    """stream → owner, as `streammachine streams --json` shows them."""
    proc = subprocess.run(
        [sys.executable, "-m", "streammachine", "streams", "ticks:p*", "--json", "--redis-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = {}
    for line in proc.stdout.splitlines():
        info = json.loads(line)
        for g in info["groups"]:
            if g["name"] == "keyed" and g.get("owner"):
                out[info["stream"]] = g["owner"]
    return out


def test_two_workers_of_one_run_share_the_partitions_in_order(redis_url: str) -> None:
    r = syncredis.Redis.from_url(redis_url)
    _send_all(r, range(10))
    port = free_port()
    proc = _start(redis_url, "--workers", "2", "--dashboard", "--dashboard-port", str(port))
    try:
        # Balanced once both workers are members: each owns 2 of the 4.
        def balanced() -> dict[str, str] | None:
            o = _owners(redis_url)
            return o if sorted(Counter(o.values()).values()) == [2, 2] else None

        owners = wait_sync(balanced, 60, "2 partitions per worker in `streams`")
        lines = [
            f'streammachine_partition_owner_info{{group="keyed",owner="{owner}",'
            f'stream="{stream}"}} 1.0'
            for stream, owner in owners.items()
        ]

        def shows_owners() -> bool:
            # The dashboard polls Redis: its first scrape may predate the balance.
            metrics = _metrics(port)
            return bool(metrics) and all(line in metrics for line in lines)

        wait_sync(shows_owners, 30, f"/metrics shows {lines}")
        _send_all(r, range(10, PER_KEY))
        wait_sync(lambda: _count(r) >= KEYS * PER_KEY, 120, "everything handled")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    pids = {int(f[b"pid"]) for _, f in _outputs(r)}
    assert len(pids) == 2, "both workers owned partitions"
    _check(r, pids)
    r.close()


# --- exclusive agents, and what others write into the ownership keys ------------------------------


async def test_an_exclusive_agent_runs_in_one_app_at_a_time_and_a_standby_takes_over(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    from streammachine import App, Message
    from streammachine.consume.ownership import ownership
    from streammachine.testing import TestApp
    from tests.util import eventually

    handled: list[tuple[str, str]] = []
    owned: list[str] = []
    members = keys.exclusive_members("jobs", "g")

    def make(name: str) -> App:
        app = App(name="excl")

        @app.agent("jobs", group="g", exclusive=True, lease_ms=500, name="jobs")
        async def work(record: Message) -> None:
            handled.append((name, record.message["n"]))

        async def on_owned(owner: Any, index: int) -> None:
            owned.append(name)

        app.agents[0].on_owned = on_owned
        return app

    first, second = make("first"), make("second")
    stops = {"first": anyio.Event(), "second": anyio.Event()}

    async def run(app: App, name: str) -> None:
        async with TestApp(app, url=redis_url):
            await stops[name].wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, first, "first")
        await eventually(lambda: owned == ["first"], 10, "the first app owning the stream")
        tg.start_soon(run, second, "second")
        await eventually(lambda: len(redis_sync.zrange(members, 0, -1)) == 2, 10)
        for n in range(20):
            await first.send("jobs", {"n": str(n)})
        await eventually(lambda: len(handled) == 20, 10)
        info = await ownership(first.redis.client, "jobs", "g")
        assert info.unowned == [] and len(info.members) == 2
        assert {who for who, _ in handled} == {"first"}, "the standby handled nothing"
        stops["first"].set()  # it drains and gives the stream up: the standby takes it at once
        await eventually(lambda: owned == ["first", "second"], 10, "the standby taking over")
        for n in range(20, 30):
            await second.send("jobs", {"n": str(n)})
        await eventually(lambda: len(handled) == 30, 10)
        stops["second"].set()
    assert [int(n) for _, n in handled] == list(range(30)), "in order, each once"
    assert {who for who, n in handled if int(n) >= 20} == {"second"}
    assert redis_sync.xpending("jobs", "g")["pending"] == 0


async def test_ownership_says_which_partitions_have_no_live_owner(
    redis_url: str, redis_sync: syncredis.Redis
) -> None:
    from streammachine.consume.ownership import ownership

    client = syncredis.Redis.from_url(redis_url)
    members = keys.partition_members("s", "g")
    live, stale = "h-1-aaaaaa", "h-2-bbbbbb"
    now_ms = int(redis_sync.time()[0] * 1000)
    redis_sync.zadd(members, {live: now_ms + 60_000, stale: now_ms - 1})
    redis_sync.set(keys.partition_lease("s", "g", 0), f"{live}/18c0a1b2c3d4e5f6-0123456789abcdef")
    redis_sync.set(keys.partition_lease("s", "g", 1), f"{stale}/18c0a1b2c3d4e5f6-0123456789abcdef")
    redis_sync.set(keys.partition_lease("s", "g", 2), "garbage")
    redis_sync.rpush(keys.partition_lease("s", "g", 3), "x")
    import redis.asyncio as aioredis

    aclient = aioredis.Redis.from_url(redis_url)
    try:
        info = await ownership(aclient, "s", "g", 5)
    finally:
        await aclient.aclose()
        client.close()
    assert info.owners == {0: live, 1: None, 2: None, 3: None, 4: None}
    assert info.unowned == [1, 2, 3, 4]
    assert len(info.problems) == 2, info.problems  # the garbage value and the list


async def test_garbage_in_the_ownership_keys_is_repaired_said_once_and_stalls_nothing(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Another tenant's writes: members that are no process id or never expire, a list where a
    lease lives, leases without expiry or with a far one. Before, one such member stopped every
    partition (the cause logged at debug level) and a fake member owned partitions for ever."""
    from streammachine import App, Message
    from streammachine.consume.ownership import ownership
    from streammachine.testing import TestApp
    from tests.util import eventually

    members = keys.partition_members("kt", "g")
    far = 9e15
    redis_sync.zadd(members, {b"\xff\xfe": far, "0000-fake": far, "ghost-1-abcdef": far})
    redis_sync.rpush(keys.partition_lease("kt", "g", 0), "x")
    redis_sync.set(keys.partition_lease("kt", "g", 1), "garbage")  # no expiry
    redis_sync.set(keys.partition_lease("kt", "g", 2), "garbage", px=10**12)  # ~30 years
    app = App(name="tampered")
    seen: list[str] = []

    @app.agent("kt", group="g", partitions=4, lease_ms=1000)
    async def work(record: Message) -> None:
        seen.append(record.message["n"])

    async with TestApp(app, url=redis_url):
        for n in range(40):
            await app.send("kt", {"n": str(n)}, key=str(n))
        await eventually(lambda: len(seen) == 40, 30, "every partition consumed")
        info = await eventually(lambda: _no_unowned(ownership(app.redis.client, "kt", "g", 4)), 10)
        assert info.problems == []
        scores = redis_sync.zrange(members, 0, -1, withscores=True)
        assert [m for m, _ in scores] == [m.encode() for m in info.members], "fakes expired"
        now_ms = redis_sync.time()[0] * 1000
        assert all(score <= now_ms + 2000 for _, score in scores), "expiry capped"
    assert sorted(seen, key=int) == [str(n) for n in range(40)]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = [
        "3 members expiring after the lease TTL",
        "not a process id: '\ufffd\ufffd'",
        "not a process id: '0000-fake'",
        "lease:0 held a list",
        "lease:1 had no expiry",
        "lease:2 had no expiry",
    ]
    for what in expected:
        assert [w for w in warned if what in w], (what, warned)
    assert len(warned) == len(set(warned)), f"each problem said once: {warned}"


async def _no_unowned(pending: Any) -> Any:
    info = await pending
    return info if not info.unowned else None


async def test_a_consumer_that_saw_its_lease_lapse_stops_and_a_new_one_picks_up() -> None:
    """A batch dropped because the lease lapsed (a busy loop) stays pending with its consumer:
    `holds` must stay false for that consumer, even once the lease is renewed again, so that a
    new one — which handles its own pending entries first — takes over, after `on_owned`."""
    from streammachine.connection import RedisConnection
    from streammachine.consume.partitions import PartitionOwner
    from tests.util import eventually

    made: list[Any] = []
    owned: list[int] = []

    class Consumer:
        def __init__(self, stream: str, index: int, **kw: Any) -> None:
            self.holds = kw["ownership"].holds
            made.append(self)

        async def run(self, stop: anyio.Event) -> None:
            while self.holds() and not stop.is_set():
                await anyio.sleep(0.01)

    async def on_owned(owner: PartitionOwner, index: int) -> None:
        owned.append(index)

    redis = RedisConnection(url="memory://")
    owner = PartitionOwner(redis, "s", "g", Consumer, ttl_s=2.0, on_owned=on_owned)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(owner.run, stop)
        await eventually(lambda: made and owner.serving(0), 10)
        first = made[0]
        owner.valid_until[0] = 0.0  # the loop was blocked past the lease's validity
        assert not first.holds()
        owner.valid_until[0] = anyio.current_time() + 60  # renewed again
        assert not first.holds(), "still false for the consumer that saw it lapse"
        await eventually(lambda: len(made) == 2 and owner.serving(0), 10, "a new consumer")
        assert made[1].holds() and owned == [0, 0]
        stop.set()
    await redis.close()


async def test_an_owner_takes_what_a_former_owners_late_read_left_with_a_live_consumer(
    redis_url: str,
) -> None:
    """A stalled former owner's read can reach Redis after the takeover: Redis delivers new
    entries to that consumer, whose process lives on (so no claim of stalled entries takes them)
    and which, its lease lost, never handles them. The owner takes them at its next claim pass,
    fencing that consumer, and handles each once."""
    from streammachine import App, Message
    from streammachine.presence.liveness import process_prefix
    from tests.util import eventually, running

    app = App(name="strays", redis_url=redis_url)
    handled: list[str] = []

    @app.agent("strays", group="g", partitions=1, claim_idle_ms=500, claim_interval_ms=100)
    async def handle(m: Message) -> None:
        handled.append(m.message["n"])

    r = syncredis.Redis.from_url(redis_url)
    zombie = f"{process_prefix()}former-0"  # a consumer of this (live) process
    async with running(app):
        r.xadd("strays:p0", {"n": "0"})
        await eventually(lambda: handled == ["0"], 10, "the owner serving (after its takeover)")
        pipe = r.pipeline(transaction=True)  # the late read takes them before the owner can
        for n in range(1, 21):
            pipe.xadd("strays:p0", {"n": str(n)})
        pipe.xreadgroup("g", zombie, {"strays:p0": ">"}, count=20)
        late = pipe.execute()[-1]
        assert len(late[0][1]) == 20, "the late read took the entries: the test bites"
        await eventually(lambda: len(handled) >= 21, 20, "the stranded entries handled")
        await eventually(lambda: not r.xpending_range("strays:p0", "g", "-", "+", 50), 10)
    assert handled == [str(n) for n in range(21)], "each once, in order"
    assert int(r.hget(keys.fence("strays:p0", "g"), zombie) or 0) >= 1, "the former was fenced"
    r.close()
