"""CLI start-up: `streammachine --help` against the 0.3 s target, and `run` time to ready.

Usage: python scripts/bench_cli.py [--runs N] [--quick]

Prints, best and median of N runs, each in a fresh process:
  * `python -c pass` (the interpreter alone: the baseline of this machine),
  * `python -c "import streammachine"`,
  * `streammachine --help`, against the 0.3 s target;
the heavy modules the CLI must not load for `--help` (pandas, numba, mcp, starlette...) with what
each would cost to import, and the slowest imports `--help` does make (`python -X importtime`);
and how long `streammachine run` takes to report READY=1 on NOTIFY_SOCKET, in one process vs as a
supervisor of 2 workers (needs a redis-server; skipped when none can be started).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET_S = 0.3
HEAVY = ("pandas", "numpy", "numba", "mcp", "starlette", "uvicorn", "prometheus_client")
#: What the commands that need them actually import, for the cost `--help` avoids.
HEAVY_IMPORTS = {"mcp": "mcp.server.mcpserver", "starlette": "starlette.applications"}
HELP_PROBE = (
    "import sys; sys.argv = ['streammachine', '--help']\n"
    "from streammachine.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
)


def cli_command() -> list[str]:
    """The installed console script when there is one, else `python -m streammachine`."""
    script = Path(sys.executable).with_name("streammachine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "streammachine"]


def timed(cmd: list[str], runs: int) -> tuple[float, float]:
    """Best and median wall time of `cmd` over `runs` fresh processes (one warm-up first)."""
    subprocess.run(cmd, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def importtime(code: str) -> dict[str, float]:
    """Cumulative import time in seconds of each top-level module `code` imports."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    cumulative: dict[str, float] = {}
    for line in out.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if cum.isdigit() and not name.startswith(" ") and "." not in name:
            cumulative[name] = int(cum) / 1e6
    return cumulative


def time_to_ready(url: str, folder: Path, args: list[str], runs: int) -> float:
    """Median seconds from starting `streammachine run` to READY=1 on a NOTIFY_SOCKET."""
    (folder / "benchapp.py").write_text(
        textwrap.dedent(
            """
            from streammachine import App, Message
            app = App(name="bench")

            @app.agent("bench-jobs", group="g")
            async def work(record: Message) -> None: ...
            """
        )
    )
    times = []
    for _ in range(runs):
        path = folder / "notify.sock"
        path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(60)
            env = {**os.environ, "REDIS_URL": url, "NOTIFY_SOCKET": str(path)}
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [*cli_command(), "run", "benchapp:app", "--log-level", "warning", *args],
                cwd=folder,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert sock.recv(64) == b"READY=1"
                times.append(time.perf_counter() - t0)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 runs")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    py = sys.executable

    print(f"start-up, best / median of {runs} fresh processes ({sys.platform}, {py})")
    base_best, base_med = timed([py, "-c", "pass"], runs)
    rows = [
        ("python -c pass (baseline)", base_best, base_med),
        ("python -c 'import streammachine'", *timed([py, "-c", "import streammachine"], runs)),
        ("streammachine --help", *timed([*cli_command(), "--help"], runs)),
    ]
    for label, best, med in rows:
        print(
            f"  {label:34} best {best * 1000:6.0f} ms  median {med * 1000:6.0f} ms"
            f"  (+{(med - base_med) * 1000:4.0f} ms over the interpreter)"
        )
    help_med = rows[-1][2]
    verdict = "OK" if help_med <= TARGET_S else "OVER"
    print(f"  --help median / 0.3 s target: {help_med / TARGET_S:.2f}x -> {verdict}")

    loaded = importtime(HELP_PROBE)
    bad = [m for m in HEAVY if m in loaded]
    print(f"\nheavy modules imported by --help: {', '.join(bad) if bad else 'none'}")
    startup = sum(importtime("pass").values())
    for module in HEAVY:
        statement = f"import {HEAVY_IMPORTS.get(module, module)}"
        found = importtime(statement)
        shown = f"{(sum(found.values()) - startup) * 1000:6.0f} ms" if module in found else "n/a"
        state = "LOADED" if module in bad else "not loaded"
        print(f"  {statement:34} {shown:>9}  ({state})")
    print("slowest imports of --help (cumulative):")
    for name, cost in sorted(loaded.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {name:28} {cost * 1000:6.0f} ms")

    from streammachine.exceptions import NotAvailableError, RedisUnavailableError
    from streammachine.testing import RedisServer

    try:
        server = RedisServer().start()
    except (NotAvailableError, RedisUnavailableError) as exc:
        print(f"\nrun time to READY=1: skipped ({exc})")
        return
    ready_runs = 2 if args.quick else 5
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            one = time_to_ready(server.url, folder, [], ready_runs)
            two = time_to_ready(server.url, folder, ["--workers", "2"], ready_runs)
    finally:
        server.close()
    print(f"\nrun time to READY=1 (median of {ready_runs}):")
    print(f"  one process (in the runner)  {one * 1000:6.0f} ms")
    print(f"  --workers 2 (supervisor)     {two * 1000:6.0f} ms  ({two / one:.1f}x)")


if __name__ == "__main__":
    main()
