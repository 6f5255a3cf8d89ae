"""Chaos: the fault matrix (tests/matrix.py) on every Redis version, with counts; and a soak.

Usage:
    python scripts/chaos.py [--messages 20000] [--server 6.2 ...] [--quick]
    python scripts/chaos.py --soak 60 [--seed N] [--server 6.2]

For each server (default: every one installed; names as `streammachine.testing.server_binaries()`
gives them, "valkey" for Valkey, "8.10" for the build in /work/cache/redis-8.10) it starts a
throwaway server and runs every cell (each fault x per-message/batch x concurrency 1/4 x 1/2
workers, partitions, delayed outputs, and the default timeouts for the faults whose recovery waits
on claim_idle_ms), printing per cell: sent, outputs, lost, duplicated, claimed (inputs finally
handled by a process other than the first that handled them), dead, pending, and what proves the
fault bit. `--quick` runs the short form that `make test` runs. `--soak SECONDS` instead runs a
producer at a steady rate while random overlapping faults hit a 2-worker stage (tests/soak.py);
the seed is printed, and `--seed N` replays its schedule.

Exit status 1 if any cell loses, duplicates, leaves anything pending, exits badly on SIGTERM, or
cannot prove its fault struck.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streammachine.testing import SERVER_ENV, RedisServer, server_binaries  # noqa: E402
from tests.matrix import describe, long_form, run_cell, short_form  # noqa: E402
from tests.matrix_check import Result  # noqa: E402
from tests.soak import soak  # noqa: E402


def servers() -> dict[str, str]:
    """Every server binary here, by name ("valkey" also names the Valkey one)."""
    found = dict(server_binaries())
    for name in list(found):
        if name.startswith("valkey-"):
            found.setdefault("valkey", found[name])
    return found


def print_result(result: Result) -> None:
    print(("ok   " if result.ok else "FAIL ") + result.line(), flush=True)
    for line in [*result.notes, *result.unproven]:
        print("     " + line.replace("\n", "\n     "), flush=True)


def run_matrix(version: str, quick: bool, messages: int) -> int:
    cells = short_form() if quick else long_form(messages)
    print(f"== Redis {version} ({os.environ[SERVER_ENV]}): {len(cells)} cells", flush=True)
    results: list[Result] = []
    t0 = time.monotonic()
    with RedisServer(appendonly=True) as server:
        for cell in cells:
            try:
                result = run_cell(cell, server.url, restartable=server)
            except AssertionError as exc:
                result = Result(cell.id, unproven=[str(exc)])
            results.append(result)
            print_result(result)
    bad = [r for r in results if not r.ok]
    print(f"== Redis {version}: {len(results) - len(bad)}/{len(results)} cells ok "
          f"in {time.monotonic() - t0:.0f} s")  # fmt: skip
    if bad:
        print(describe(bad))
    return len(bad)


def run_soak(version: str, seconds: float, seed: int) -> int:
    print(f"== Redis {version} ({os.environ[SERVER_ENV]}): soak {seconds:.0f} s, seed {seed} "
          f"(replay: --soak {seconds:g} --seed {seed} --server {version})", flush=True)  # fmt: skip
    with RedisServer(appendonly=True) as server:
        try:
            result = soak(server, seconds, seed)
        except AssertionError as exc:
            result = Result(f"soak-seed{seed}", unproven=[str(exc)])
    print_result(result)
    print(f"== seed {seed}: {'ok' if result.ok else 'FAIL'}", flush=True)
    return 0 if result.ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--server", action="append", default=[], help="a server to run on (repeatable)"
    )
    parser.add_argument("--versions", default="", help="servers, comma-separated (old spelling)")
    parser.add_argument("--quick", action="store_true", help="the short form only")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS", help="run the soak")
    parser.add_argument("--seed", type=int, default=None, help="the soak's seed (default: random)")
    args = parser.parse_args()
    found = servers()
    wanted = args.server + [v for v in args.versions.split(",") if v]
    if not wanted:
        wanted = [v for v in found if v != "valkey"]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    failed = 0
    for version in wanted:
        if version not in found:
            print(f"== Redis {version}: not installed (known here: {', '.join(found)})")
            failed += 1
            continue
        os.environ[SERVER_ENV] = found[version]
        if args.soak:
            failed += run_soak(version, args.soak, seed)
        else:
            failed += run_matrix(version, args.quick, args.messages)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
