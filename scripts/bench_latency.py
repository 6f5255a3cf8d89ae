"""Latency, idle cost and memory of a worker (issue targets: p99 produce → handler <= 1 ms at
20k msg/s; an idle worker <= 1 % of a core; RSS steady within 5 % over 10M messages).

Usage: python scripts/bench_latency.py [--rate 20000] [--seconds 5] [--messages 10000000] [--quick]

- latency: a producer process writes `--rate` msg/s (a batch each millisecond, each entry
  stamped with its send time); one agent in this process records send → handler time.
- idle: a `streammachine run` worker with two agents and nothing to do, CPU time over 10 s
  from /proc (its own utime + stime).
- memory: a `streammachine run` worker drains `--messages` entries (the producer keeps the
  stream capped, so Redis memory stays small); its RSS is printed every tenth of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from streammachine import App, Message  # noqa: E402
from streammachine.testing import RedisServer  # noqa: E402

PRODUCER = """
import sys, time, redis
url, rate, seconds, stream, maxlen = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
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
        pipe.xadd(stream, {"t": stamp, "p": "x" * 16}, maxlen=maxlen or None, approximate=True)
    pipe.execute()
    sent += per_ms
"""

IDLE_APP = """
from streammachine import App, Message
app = App(name="idle")

@app.agent("idle-a", group="g")
async def a(record: Message) -> None: ...

@app.agent("idle-b", group="g", concurrency=2)
async def b(record: Message) -> None: ...
"""


def producer(
    url: str, rate: int, seconds: float, stream: str, maxlen: int = 0
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", PRODUCER, url, str(rate), str(seconds), stream, str(maxlen)]
    return subprocess.Popen(args)


async def latency(url: str, rate: int, seconds: float) -> list[float]:
    app = App(name="latency", redis_url=url)
    samples: list[float] = []

    @app.agent("lat", group="g", count=100)
    async def handler(record: Message) -> None:
        samples.append(time.time() - float(record.message["t"]))

    await app.redis.connect()
    await app.redis.client.delete("lat")
    task = asyncio.create_task(app.run())
    await asyncio.sleep(1.0)  # groups created, consumers blocking
    proc = producer(url, rate, seconds, "lat")
    while proc.poll() is None:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    await app.shutdown()
    await task
    return samples


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(url: str, module: Path, target: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(module.parent)}
    cmd = [sys.executable, "-m", "streammachine", "run", target, "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def idle(url: str, tmp: Path, seconds: float = 10.0) -> float:
    module = tmp / "idle_app.py"
    module.write_text(IDLE_APP)
    proc = worker(url, module, "idle_app:app")
    try:
        time.sleep(3.0)  # started, groups created
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_s(proc.pid) - c0) / (time.monotonic() - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def memory(url: str, tmp: Path, n: int) -> list[tuple[int, float]]:
    module = tmp / "drain_app.py"
    module.write_text(
        "from streammachine import App, Message\napp = App(name='drain')\n\n"
        "@app.agent('drain', group='g', count=500)\nasync def h(record: Message) -> None: ...\n"
    )
    r = redis.Redis.from_url(url)
    r.delete("drain")
    proc = worker(url, module, "drain_app:app")
    points: list[tuple[int, float]] = []
    try:
        time.sleep(2.0)
        rate = 150_000
        feed = producer(url, rate, n / rate, "drain", maxlen=200_000)
        step, mark = n // 10, n // 10
        deadline = time.monotonic() + n / 20_000 + 60  # generous: never a test of speed
        while time.monotonic() < deadline:
            groups = r.xinfo_groups("drain") if r.exists("drain") else []
            done = int(groups[0].get("entries-read") or 0) if groups else 0
            if done >= mark:
                points.append((done, rss_mb(proc.pid)))
                mark += step
            if done >= n * 0.999 or (feed.poll() is not None and done >= n * 0.99):
                points.append((done, rss_mb(proc.pid)))
                break
            time.sleep(0.2)
        feed.wait()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        r.close()
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="1M messages for the memory run")
    args = parser.parse_args()
    n = 1_000_000 if args.quick else args.messages
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    import tempfile

    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        samples = sorted(asyncio.run(latency(server.url, args.rate, args.seconds)))
        p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99)]
        verdict = "met" if p99 <= 0.001 else "NOT met"
        print(
            f"latency at {args.rate:,} msg/s ({len(samples):,} messages): p50 {p50 * 1000:.3f} ms, "
            f"p99 {p99 * 1000:.3f} ms (target p99 <= 1 ms: {verdict})"
        )
        share = idle(server.url, Path(tmp))
        print(
            f"idle worker (3 consumers, no traffic): {share * 100:.2f} % of one core "
            f"(target <= 1 %: {'met' if share <= 0.01 else 'NOT met'})"
        )
        points = memory(server.url, Path(tmp), n)
        base = points[1][1] if len(points) > 1 else points[0][1]
        worst = max(abs(mb - base) / base for _, mb in points[1:]) if len(points) > 1 else 0.0
        trace = ", ".join(f"{done / 1e6:.1f}M: {mb:.1f} MB" for done, mb in points)
        print(f"worker RSS over {n:,} messages: {trace}")
        print(
            f"  drift after the first tenth: {worst:.1%} (target <= 5 %: "
            f"{'met' if worst <= 0.05 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
