"""Chaos: the fault matrix's long form (tests/matrix.py) on every Redis version, with counts.

Usage: python scripts/chaos.py [--messages 20000] [--versions 6.2,7.0,8.2,valkey-8.1] [--quick]

For each installed server version it starts a throwaway server and runs every cell (each fault x
per-message/batch x concurrency 1/4 x 1/2 workers, partitions, and the default timeouts for the
faults whose recovery waits on claim_idle_ms), printing per cell: sent, outputs, distinct,
duplicates, lost, dead, pending. Exit status 1 if any cell loses, duplicates or leaves pending.
`--quick` runs the short form that `make test` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streammachine.testing import SERVER_ENV, RedisServer, server_binaries  # noqa: E402
from tests.matrix import Result, describe, long_form, run_cell, short_form  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--versions", default="")
    parser.add_argument("--quick", action="store_true", help="the short form only")
    args = parser.parse_args()
    found = server_binaries()
    versions = [v for v in args.versions.split(",") if v] or list(found)
    cells = short_form() if args.quick else long_form(args.messages)
    failed = 0
    for version in versions:
        if version not in found:
            print(f"== Redis {version}: not installed")
            failed += 1
            continue
        os.environ[SERVER_ENV] = found[version]
        print(f"== Redis {version} ({found[version]}): {len(cells)} cells", flush=True)
        results: list[Result] = []
        t0 = time.monotonic()
        with RedisServer(appendonly=True) as server:
            for cell in cells:
                try:
                    result = run_cell(cell, server.url, restartable=server)
                except AssertionError as exc:
                    result = Result(cell.id, notes=[str(exc)], lost=-1)
                results.append(result)
                print(
                    ("ok   " if result.ok else "FAIL ") + result.line(), *result.notes, flush=True
                )
        bad = [r for r in results if not r.ok]
        failed += len(bad)
        print(f"== Redis {version}: {len(results) - len(bad)}/{len(results)} cells ok "
              f"in {time.monotonic() - t0:.0f} s")  # fmt: skip
        if bad:
            print(describe(bad))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
