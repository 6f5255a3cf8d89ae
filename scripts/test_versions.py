"""Run the real-server delivery tests (the fault matrix's short form, the liveness rules, the
reliability, commit, production and failpoint tests) once per server in DESIGN.md:
`make test-versions`.

Usage: python scripts/test_versions.py [VERSION ...]   (default: 6.2 7.0 8.2 8.10 valkey-8.1)

Each run sets STREAMMACHINE_REDIS_SERVER to that version's binary (see
`streammachine.testing.server_binaries`; Redis 8.10 comes from `scripts/build_redis.py`), after
checking what the binary says it is (`INFO server`), never trusting its name. On 6.2 the tests of
the 6.2-only paths run too, and must not skip. Under STREAMMACHINE_REQUIRE_REDIS=1 (CI) a version
that is not installed is a failure, not a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streammachine.testing import SERVER_ENV, server_binaries, server_version  # noqa: E402

VERSIONS = ("6.2", "7.0", "8.2", "8.10", "valkey-8.1")
TESTS = [
    "tests/test_faults.py",
    "tests/test_delivery.py",
    "tests/test_reliability.py",
    "tests/test_commit.py",
    "tests/test_produce.py",
    "tests/test_send_once.py",
    "tests/test_failpoints.py",
    "tests/test_partitions.py",
    "tests/test_schedule.py",
    "tests/test_window_faults.py",
]
#: Tests of paths only Redis 6.2 takes (it has no lag in XINFO GROUPS): they skip elsewhere.
ONLY_62 = [
    "tests/test_dashboard.py::test_lag_above_the_scan_limit_is_unknown_not_zero",
    "tests/test_queries.py::test_lag_beyond_the_scan_limit_is_none_not_a_wrong_number",
]


def skipped(junit: Path) -> list[str]:
    """The tests a junit XML report says were skipped."""
    root = ET.parse(junit).getroot()
    return [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("skipped") is not None
    ]


def run_one(version: str, binary: str) -> str | None:
    """The suite on one server; None when it passed, else why not."""
    try:
        actual = server_version(binary)
    except Exception as exc:  # a binary that does not start is that version's failure
        return f"{version} (does not start: {exc})"
    if not (actual == version or actual.startswith(version + ".")):
        return f"{version} ({binary} is {actual or 'unknown'})"
    print(f"== Redis {version}: {binary} (INFO says {actual})", flush=True)
    t0 = time.monotonic()
    env = {**os.environ, SERVER_ENV: binary}
    env.pop("REDIS_URL", None)
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", *TESTS], cwd=ROOT, env=env)
    why = None if code == 0 else f"{version} (exit {code})"
    if version == "6.2":
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "junit.xml"
            cmd = [sys.executable, "-m", "pytest", "-q", f"--junit-xml={junit}", *ONLY_62]
            code62 = subprocess.call(cmd, cwd=ROOT, env=env)
            skips = skipped(junit) if junit.exists() else ["(no report)"]
        if code62 != 0 or skips:
            why = f"6.2 (the 6.2-only tests: exit {code62}, skipped {skips})"
    print(f"== Redis {version}: {why or 'passed'} in {time.monotonic() - t0:.0f} s", flush=True)
    return why


def main() -> int:
    wanted = sys.argv[1:] or list(VERSIONS)
    found = server_binaries()
    required = os.environ.get("STREAMMACHINE_REQUIRE_REDIS") == "1"
    failed: list[str] = []
    for version in wanted:
        binary = found.get(version)
        if binary is None:
            hint = " (python scripts/build_redis.py builds it)" if version == "8.10" else ""
            print(f"== Redis {version}: not installed{hint}", flush=True)
            if required:
                failed.append(f"{version} (not installed)")
            continue
        why = run_one(version, binary)
        if why is not None:
            failed.append(why)
    if failed:
        print("failed on: " + ", ".join(failed))
        return 1
    print("every Redis version passed: " + ", ".join(v for v in wanted if v in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
