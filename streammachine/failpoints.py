"""Failpoints: test hooks at the windows where a fault does the most harm, off unless the
environment turns them on (read once, at import: an unset variable costs one call and one
dict lookup per hook).

`STREAMMACHINE_FAILPOINTS` lists `name=action@nth`, comma-separated; `action` is `kill` (SIGKILL
this process) or `stall:<ms>` (block the whole process, as a GC pause or a frozen VM does), done
at the `nth` time (default 1) this process reaches the hook. With `STREAMMACHINE_FAILPOINT_DIR`
set, a failpoint fires once across every process sharing that folder (a restarted worker does
not fire it again), and each firing leaves the file `<dir>/<name>` holding the pid: the test's
proof that the dangerous path ran.

The hooks (see `streammachine.testing.failpoints_env`):

- `commit.applied`: a commit that rode with a read was applied by Redis and its reply arrived;
  the consumer has not acted on it yet (`consume/consumer.py`).
- `claim.taken`: the claim script moved another consumer's entries to this one, which has not read
  them yet (`consume/claims.py`).
- `mover.claimed`: the Cluster mover claimed due delayed entries into its in-flight set and has not
  appended them yet (`schedule/delayed.py`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

__all__ = ["DIR_ENV", "ENV", "failpoint", "parse"]

ENV = "STREAMMACHINE_FAILPOINTS"
DIR_ENV = "STREAMMACHINE_FAILPOINT_DIR"

log = logging.getLogger("streammachine.failpoints")


@dataclass(slots=True)
class _Point:
    action: str
    stall_ms: int
    nth: int
    hits: int = 0


def parse(text: str) -> dict[str, _Point]:
    """`"commit.applied=kill@3,claim.taken=stall:5000"` as failpoints; ValueError names a bad one."""
    points: dict[str, _Point] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, spec = item.partition("=")
        action, _, nth = spec.partition("@")
        kind, _, ms = action.partition(":")
        if not name or kind not in ("kill", "stall") or (kind == "stall") != ms.isdigit():
            raise ValueError(f"{ENV}: bad failpoint {item!r}; write name=kill@N or name=stall:MS@N")
        if nth and not nth.isdigit():
            raise ValueError(f"{ENV}: bad count in {item!r}; write @N with N >= 1")
        points[name.strip()] = _Point(kind, int(ms or 0), max(1, int(nth or 1)))
    return points


_POINTS = parse(os.environ.get(ENV, ""))
_DIR = os.environ.get(DIR_ENV, "")


def failpoint(name: str) -> None:
    """The hook: does nothing unless `name` is armed in `STREAMMACHINE_FAILPOINTS`."""
    if _POINTS:
        _fire(name)


def _fire(name: str) -> None:
    point = _POINTS.get(name)
    if point is None:
        return
    point.hits += 1
    if point.hits != point.nth or not _claim(name):
        return
    log.warning("failpoint %s: %s in process %d", name, point.action, os.getpid())
    if point.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(point.stall_ms / 1000)  # blocks the event loop on purpose: the whole process halts


def _claim(name: str) -> bool:
    """Leave the proof file; False when another process fired this failpoint already."""
    if not _DIR:
        return True
    try:
        fd = os.open(os.path.join(_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
