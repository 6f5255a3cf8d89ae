"""Latency and idle cost of a worker, each beside a hand-written baseline measured in the same run.

    .venv/bin/python scripts/bench_latency.py [--rounds 5] [--rates 5000,10000,20000] [--seconds 3]
        [--idle-s 20] [--quick] [--json]

- latency: a producer process writes each rate steadily (a batch each millisecond, every entry
  stamped with its send time) for --seconds per round. Two consumers wait on their own streams,
  each in its own process: a `streammachine run` worker with one exactly-once stage (one output
  per input, the output carrying send → handler time), and the baseline, a naive redis-py loop
  (XREADGROUP COUNT 100 BLOCK, then the outputs and the XACK in one pipeline). Rounds alternate
  which one the producer feeds; p50 and p99 of produce → handler, in ms (lower is better, so a
  ratio < 1 means faster than the loop). A consumer that falls behind shows as a high p50.
- idle: a `streammachine run` worker with one agent and nothing to do, against the naive loop
  blocking on an empty stream: % of one core over --idle-s seconds, from /proc/<pid>/stat (its
  children included).

--quick: 1,000 msg/s for 1 s, idle 2 s, 2 rounds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
import redis

PRODUCER = """
import sys, time, redis
url, rate, seconds, stream = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
r = redis.Redis.from_url(url)
per_ms = max(1, rate // 1000)
start = time.perf_counter()
sent = 0
total = int(rate * seconds)
while sent < total:
    due = start + sent / rate
    now = time.perf_counter()
    if due > now:
        time.sleep(due - now)
    pipe = r.pipeline(transaction=False)
    stamp = repr(time.time())
    for _ in range(min(per_ms, total - sent)):
        pipe.xadd(stream, {"t": stamp, "p": "x" * 16})
    pipe.execute()
    sent += per_ms
"""

NAIVE = """
import sys, time, redis
url, stream, out = sys.argv[1], sys.argv[2], sys.argv[3]
r = redis.Redis.from_url(url)
try:
    r.xgroup_create(stream, "g", id="$", mkstream=True)
except redis.ResponseError:
    pass
while True:
    reply = r.xreadgroup("g", "c", {stream: ">"}, count=100, block=1000)
    if not reply:
        continue
    pipe = r.pipeline(transaction=False)
    ids = []
    for entry_id, fields in reply[0][1]:
        pipe.xadd(out, {"ms": repr((time.time() - float(fields[b"t"])) * 1000)})
        ids.append(entry_id)
    pipe.xack(stream, "g", *ids)
    pipe.execute()
"""

STAGE_APP = """
import time
from streammachine import App, Message

app = App(name="latency")


@app.agent("lat-stage", group="g", count=100)
async def stage(record: Message) -> None:
    await app.send("lat-stage-out", {"ms": repr((time.time() - float(record.message["t"])) * 1000)})
"""

IDLE_APP = """
from streammachine import App, Message

app = App(name="idle")


@app.agent("idle", group="g")
async def idle(record: Message) -> None: ...
"""

STREAMS = {"naive loop": ("lat-naive", "lat-naive-out"), "stage": ("lat-stage", "lat-stage-out")}


def worker(url: str, folder: Path, module: str, text: str) -> subprocess.Popen[bytes]:
    (folder / f"{module}.py").write_text(text)
    path = os.pathsep.join([str(folder), str(benchlib.ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "streammachine", "run", f"{module}:app", "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def naive(url: str, stream: str, out: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", NAIVE, url, stream, out])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_consumer(r: redis.Redis, stream: str, timeout_s: float = 30.0) -> None:
    """Until group g exists on `stream` and a client is blocked in XREADGROUP (a blocked read
    creates no consumer on every server, so the client list tells)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if r.exists(stream) and any(g["name"] == b"g" for g in r.xinfo_groups(stream)):
            blocked = [c for c in r.client_list() if "b" in c.get("flags", "")]
            if any(c.get("cmd") == "xreadgroup" for c in blocked):
                return
        time.sleep(0.05)
    raise SystemExit(f"no consumer on {stream} after {timeout_s:.0f} s")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def one_round(url: str, variant: str, rate: int, seconds: float) -> tuple[float, float, float]:
    """Feed `variant` at `rate` for `seconds`: (p50 ms, p99 ms, share of inputs handled)."""
    stream, out = STREAMS[variant]
    r = redis.Redis.from_url(url)
    r.delete(out)
    total = int(rate * seconds)
    subprocess.run(
        [sys.executable, "-c", PRODUCER, url, str(rate), str(seconds), stream], check=True
    )
    deadline = time.monotonic() + seconds * 2 + 10
    while r.xlen(out) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    values = sorted(float(f[b"ms"]) for _, f in r.xrange(out))
    r.delete(out)
    r.xtrim(stream, maxlen=0)
    r.close()
    if not values:
        return float("inf"), float("inf"), 0.0
    return percentile(values, 0.5), percentile(values, 0.99), len(values) / total


def latency(url: str, folder: Path, args: object, rates: list[int]) -> list[benchlib.Bench]:
    r = redis.Redis.from_url(url)
    stage = worker(url, folder, "lat_stage", STAGE_APP)
    loop = naive(url, *STREAMS["naive loop"])
    benches = []
    try:
        for stream, _out in STREAMS.values():
            wait_consumer(r, stream)
        for rate in rates:
            p50: dict[str, list[float]] = {name: [] for name in STREAMS}
            handled: dict[str, list[float]] = {name: [] for name in STREAMS}

            def variant(
                name: str,
                rate: int = rate,
                p50: dict[str, list[float]] = p50,
                handled: dict[str, list[float]] = handled,
            ) -> Callable[[], float]:
                def go() -> float:
                    a, b, share = one_round(url, name, rate, args.seconds)  # type: ignore[attr-defined]
                    p50[name].append(a)
                    handled[name].append(share)
                    return b

                return go

            p99_bench = benchlib.Bench(
                f"p99 produce→handler at {rate:,} msg/s", "ms", baselines=["naive loop"]
            )
            p99_bench.run({name: variant(name) for name in STREAMS}, args.rounds)  # type: ignore[attr-defined]
            p50_bench = benchlib.Bench(
                f"p50 produce→handler at {rate:,} msg/s", "ms", baselines=["naive loop"]
            )
            p50_bench.results, p50_bench.rounds = p50, p99_bench.rounds
            for name, shares in handled.items():
                if min(shares) < 1:
                    p99_bench.notes[f"{name} fell behind"] = (
                        f"handled {min(shares):.0%} of the inputs within the wait in its worst round"
                    )
            benches += [p50_bench, p99_bench]
    finally:
        stop(stage)
        stop(loop)
        r.close()
    return benches


def idle_share(
    url: str, start: Callable[[], subprocess.Popen[bytes]], stream: str, s: float
) -> float:
    r = redis.Redis.from_url(url)
    proc = start()
    try:
        wait_consumer(r, stream)
        time.sleep(1.0)  # start-up done
        c0, t0 = benchlib.process_cpu_s(proc.pid), time.monotonic()
        time.sleep(s)
        return (benchlib.process_cpu_s(proc.pid) - c0) / (time.monotonic() - t0) * 100
    finally:
        stop(proc)
        r.close()


def main() -> None:
    p = benchlib.parser(__doc__)
    p.add_argument("--rates", default="5000,10000,20000", help="msg/s, comma-separated")
    p.add_argument("--seconds", type=float, default=3.0, help="producing time per round")
    p.add_argument("--idle-s", type=float, default=20.0, help="idle measuring time per round")
    args = benchlib.parse_args(__doc__, p)
    rates = [int(x) for x in args.rates.split(",")]
    if args.quick:
        rates, args.seconds, args.idle_s = [1000], 1.0, 2.0
    with benchlib.redis_url() as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        benches = latency(url, folder, args, rates)
        idle = benchlib.Bench(
            f"idle, % of one core over {args.idle_s:.0f} s", "% core", baselines=["naive loop"]
        )
        idle.run(
            {
                "naive loop": lambda: idle_share(
                    url, lambda: naive(url, "idle-naive", "idle-out"), "idle-naive", args.idle_s
                ),
                "worker, one agent": lambda: idle_share(
                    url, lambda: worker(url, folder, "idle_app", IDLE_APP), "idle", args.idle_s
                ),
            },
            args.rounds,
        )
        header = (
            f"{benchlib.server_version(url)}; lower is better (ratio < 1: faster than the loop)"
        )
    benchlib.report(args, [*benches, idle], header)


if __name__ == "__main__":
    main()
