"""CLI start-up: `streammachine --help` against the 0.3 s target, and `run` time to ready.

    .venv/bin/python scripts/bench_cli.py [--rounds 5] [--quick] [--json]

Prints, medians of alternating rounds, each run in a fresh process:
  * `python -c pass` (the interpreter alone: the baseline of this machine),
  * `python -c "import streammachine"`,
  * `streammachine --help`, against the 0.3 s target;
the heavy modules the CLI must not load for `--help` (pandas, numba, mcp, starlette...) with what
each would cost to import, and the slowest imports `--help` does make (`python -X importtime`);
and how long `streammachine run` takes to report READY=1 on NOTIFY_SOCKET, in one process vs as a
supervisor of 2 workers (needs a redis-server, or REDIS_URL; skipped when none can be started).
--quick: 2 rounds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import benchlib

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


def timed(cmd: list[str]) -> Callable[[], float]:
    """A variant: ms of wall time of `cmd` in a fresh process."""

    def go() -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return (time.perf_counter() - t0) * 1000

    return go


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


def time_to_ready(url: str, folder: Path, args: list[str]) -> float:
    """ms from starting `streammachine run` to READY=1 on a NOTIFY_SOCKET."""
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
            if sock.recv(64) != b"READY=1":
                raise SystemExit("streammachine run sent something else than READY=1")
            return (time.perf_counter() - t0) * 1000
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def main() -> None:
    args = benchlib.parse_args(__doc__)
    py = sys.executable
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "import streammachine": [py, "-c", "import streammachine"],
        "streammachine --help": [*cli_command(), "--help"],
    }
    for cmd in commands.values():  # warm the file cache
        subprocess.run(cmd, check=True, capture_output=True)
    startup = benchlib.Bench("start-up, a fresh process each", "ms", ["python -c pass"])
    startup.run({name: timed(cmd) for name, cmd in commands.items()}, args.rounds)
    help_med = benchlib.median(startup.results["streammachine --help"])
    startup.notes["--help median / 0.3 s target"] = f"{help_med / 1000 / TARGET_S:.2f}x"

    loaded = importtime(HELP_PROBE)
    bad = [m for m in HEAVY if m in loaded]
    startup.notes["heavy modules imported by --help"] = ", ".join(bad) if bad else "none"
    base = sum(importtime("pass").values())
    for module in HEAVY:
        statement = f"import {HEAVY_IMPORTS.get(module, module)}"
        found = importtime(statement)
        shown = f"{(sum(found.values()) - base) * 1000:.0f} ms" if module in found else "n/a"
        state = "LOADED" if module in bad else "not loaded"
        startup.notes[f"  {statement}"] = f"{shown} ({state} by --help)"
    slowest = sorted(loaded.items(), key=lambda kv: -kv[1])[:8]
    startup.notes["slowest imports of --help (cumulative)"] = ", ".join(
        f"{name} {cost * 1000:.0f} ms" for name, cost in slowest
    )
    benches = [startup]

    from streammachine.exceptions import NotAvailableError, RedisUnavailableError

    try:
        with benchlib.redis_url() as url, tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            ready = benchlib.Bench("run, start to READY=1", "ms", ["one process"])
            ready.run(
                {
                    "one process": lambda: time_to_ready(url, folder, []),
                    "--workers 2 (supervisor)": lambda: time_to_ready(
                        url, folder, ["--workers", "2"]
                    ),
                },
                args.rounds,
            )
            benches.append(ready)
    except (NotAvailableError, RedisUnavailableError) as exc:
        startup.notes["run time to READY=1"] = f"skipped ({exc})"
    benchlib.report(args, benches, f"{sys.platform}, {py}")


if __name__ == "__main__":
    main()
