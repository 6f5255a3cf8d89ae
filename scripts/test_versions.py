"""Run the real-server delivery tests (the fault matrix's short form, the liveness rules, the
reliability tests) once per Redis version in DESIGN.md: `make test-versions`.

Usage: python scripts/test_versions.py [VERSION ...]   (default: every one installed)

Each run sets STREAMMACHINE_REDIS_SERVER to that version's binary (see
`streammachine.testing.server_binaries`). Under STREAMMACHINE_REQUIRE_REDIS=1 (CI) a version that
is not installed is a failure, not a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streammachine.testing import SERVER_ENV, server_binaries  # noqa: E402

VERSIONS = ("6.2", "7.0", "8.2", "valkey-8.1")
TESTS = ["tests/test_faults.py", "tests/test_delivery.py", "tests/test_reliability.py"]


def main() -> int:
    wanted = sys.argv[1:] or list(VERSIONS)
    found = server_binaries()
    required = os.environ.get("STREAMMACHINE_REQUIRE_REDIS") == "1"
    failed: list[str] = []
    for version in wanted:
        binary = found.get(version)
        if binary is None:
            print(f"== Redis {version}: not installed", flush=True)
            if required:
                failed.append(f"{version} (not installed)")
            continue
        print(f"== Redis {version}: {binary}", flush=True)
        t0 = time.monotonic()
        env = {**os.environ, SERVER_ENV: binary}
        env.pop("REDIS_URL", None)
        cmd = [sys.executable, "-m", "pytest", "-q", *TESTS]
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        print(f"== Redis {version}: exit {code} in {time.monotonic() - t0:.0f} s", flush=True)
        if code != 0:
            failed.append(version)
    if failed:
        print("failed on: " + ", ".join(failed))
        return 1
    print("every Redis version passed: " + ", ".join(v for v in wanted if v in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
