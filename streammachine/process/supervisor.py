"""The supervisor of an app's worker processes (`launch.run_app` picks it when one process will not
do). The runner does not run the app itself: it learns the app's agents from a throwaway child
(which on `--reload` also proves the new code imports before the old workers are stopped) and
starts workers as `python -m streammachine.process.worker --worker ...` children that import the
app again from its reference (spawned, never forked from a loaded app):

- `workers` regular workers run every agent without `processes=`; every worker runs the timers,
  and a lease in Redis picks the one process of the app (across workers and hosts) that runs the
  `scope="app"` ones, so a timer fires once per period however many workers and hosts there are
  (`scope="instance"` timers run in every worker);
- an agent with `processes=P` runs in P dedicated children, and in no regular worker.

Children report readiness to the runner with the sd_notify protocol on a private unix socket (the
runner tells systemd once all are ready), run in their own session so a terminal's Ctrl-C reaches
only the runner, which forwards it once (a second one forces), and stop if the runner vanishes.
A crashed worker is restarted with exponential backoff; a worker that cannot start stops the
runner with an error, except under `--reload`, where the runner waits for the next change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec

from ..exceptions import AppImportError, ConfigError, StreamMachineError
from ..settings import Settings
from .runner import notify_systemd
from .worker import (
    IMPORT_FAILED,
    REDIS_NOT_READY,
    ChildConfig,
    Layout,
    Spec,
    _Probe,
)

if TYPE_CHECKING:
    from anyio.abc import Process, TaskGroup


__all__ = ["Supervisor", "exit_reason"]

log = logging.getLogger("streammachine.process.supervisor")

#: Consecutive failures to start after which the runner gives up on a worker.
MAX_START_FAILURES = 5
BACKOFF_MAX_S = 30.0
#: A worker that stayed up this long starts its restart backoff afresh.
STABLE_S = 10.0
#: Extra time a draining worker gets beyond the app's shutdown timeout before it is killed.
KILL_GRACE_S = 5.0
PROBE_TIMEOUT_S = 120.0


@dataclass(eq=False)
class _Worker:
    spec: Spec
    proc: Process | None = None
    ready: bool = False
    ready_at: float = 0.0
    retired: bool = False
    signalled: bool = False
    failures: int = 0
    start_failures: int = 0


def exit_reason(code: int) -> str:
    """`exited with code 3` or `killed by SIGKILL`, from a Popen-style return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Starts, watches, restarts, reloads and stops the worker processes of one app."""

    def __init__(
        self,
        target: str,
        *,
        workers: int = 1,
        reload_dirs: Sequence[Path] | None = None,
        layout: Layout | None = None,
        child: ChildConfig | None = None,
    ) -> None:
        self.target = target
        self.n_workers = workers
        self.reload_dirs = list(reload_dirs) if reload_dirs is not None else None
        self.reload = reload_dirs is not None
        self.layout = layout
        self.workers: list[_Worker] = []
        self.stopping = False
        self.forced = False
        self.error: StreamMachineError | None = None
        self.failed = False
        self.ever_ready = False
        self.gen_ready = False
        self.pending: Layout | None = None
        self.stop_event = anyio.Event()
        self.wake = anyio.Event()
        self.folder = Path(tempfile.mkdtemp(prefix="streammachine-"))
        # Children report to the runner's own socket (given in their settings, not the env).
        self.notify_path = str(self.folder / "notify")
        self.env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        # The children's configuration, in the runner's private folder (mode 0700).
        self.config_path = self.folder / "config.json"
        child = child or ChildConfig(Settings.current())
        child = msgspec.structs.replace(
            child, settings=child.settings.replace(notify_socket=self.notify_path)
        )
        self.config_path.write_bytes(msgspec.json.encode(child))
        if self.reload:
            # Same-size edits within one second would otherwise load a stale .pyc.
            self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self._tg: TaskGroup | None = None

    async def run(self) -> int:
        """Supervise until stopped; returns the exit status (0 after a clean stop)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self.notify_path)
            sock.setblocking(False)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._signals)
                tg.start_soon(self._listen, sock)
                if self.reload:
                    tg.start_soon(self._watch)
                await self._main()
                tg.cancel_scope.cancel()
        finally:
            sock.close()
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.error is not None:
            raise self.error
        return 1 if self.failed or self.forced else 0

    async def _main(self) -> None:
        layout = self.layout or await self._probe()
        if layout is not None and layout.dashboard is not None:
            from ..dashboard.server import serve_dashboard

            assert self._tg is not None
            # One dashboard per run, in the runner; it ends with the task group.
            self._tg.start_soon(serve_dashboard, *layout.dashboard, anyio.Event())
        while not self.stopping:
            if layout is not None:
                await self._generation(layout)
            if self.stopping or not self.reload:
                return
            while not self.stopping and self.pending is None:
                await self.wake.wait()
                self.wake = anyio.Event()
            layout, self.pending = self.pending, None

    async def _probe(self) -> Layout | None:
        """Import the app in a throwaway child; its layout, or None (the error is reported)."""
        out = self.folder / "layout.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "streammachine.process.worker", "--describe", str(out)]
        cmd += ["--config", str(self.config_path)]
        proc = await self._open([*cmd, self.target])
        try:
            with anyio.move_on_after(PROBE_TIMEOUT_S):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()
        try:
            result = msgspec.json.decode(out.read_bytes(), type=_Probe)
        except (OSError, msgspec.DecodeError):
            why = f"its import {exit_reason(proc.returncode or 0)}"
            if proc.returncode == -signal.SIGKILL:
                why = f"importing it took longer than {PROBE_TIMEOUT_S:.0f} s"
            result = _Probe(error=f"cannot import {self.target}: {why}")
        if result.layout is not None:
            return result.layout
        message = result.error or "unknown error"
        if self.reload:
            log.error("%s; waiting for the next change", message)
        else:
            self.error = AppImportError(message)
            self.stopping = True
        return None

    async def _generation(self, layout: Layout) -> None:
        specs = layout.specs(self.n_workers)
        problem = layout.problem(len(specs))
        if problem is not None:
            if self.reload:
                log.error("%s", problem)
            else:
                self.error, self.stopping = ConfigError(problem), True
            return
        n = len(specs)
        log.info("%s", layout.banner(f"{n} worker process{'es' if n > 1 else ''}"))
        self.layout, self.gen_ready = layout, False
        self.workers = [_Worker(spec) for spec in specs]
        async with anyio.create_task_group() as tg:
            for w in self.workers:
                tg.start_soon(self._keep, w)
        self.workers = []

    async def _keep(self, w: _Worker) -> None:
        """Run one worker slot: start it, and restart it with backoff when it dies."""
        while not (self.stopping or w.retired):
            proc = await self._spawn(w)
            code = await proc.wait()
            if self.stopping or w.retired:
                # A worker stopped before it installed its signal handlers dies of the signal.
                unready_stop = not w.ready and code in (-signal.SIGTERM, -signal.SIGINT)
                if code != 0 and not unready_stop:
                    log.warning(
                        "%s (pid %d) %s while stopping", w.spec.label, proc.pid, exit_reason(code)
                    )
                    self.forced = self.forced or self.stopping
                return
            why = f"{w.spec.label} (pid {proc.pid}) {exit_reason(code)}"
            if not w.ready:
                # A worker that gave up on a Redis that was not ready did not fail to start:
                # after the app has run once, it is restarted (with backoff) for as long as
                # Redis takes; the first start stops the runner with the worker's message.
                w.start_failures += code != REDIS_NOT_READY
                verdict = None
                if code == IMPORT_FAILED:
                    verdict = "its app cannot be imported"
                elif w.start_failures >= MAX_START_FAILURES:
                    verdict = f"it failed to start {w.start_failures} times in a row"
                elif not (self.reload or self.ever_ready):
                    verdict = "it could not start"
                if verdict and self.reload:
                    log.error("%s before it was ready: %s; waiting for a change", why, verdict)
                    return
                if verdict:
                    log.error("%s before it was ready: %s; stopping", why, verdict)
                    self.failed = True
                    self._begin_stop(signal.SIGTERM)
                    return
            elif time.monotonic() - w.ready_at >= STABLE_S:
                w.failures = 0
            delay_s = min(BACKOFF_MAX_S, 0.5 * 2**w.failures)
            w.failures += 1
            log.warning("%s; restarting it in %.1f s", why, delay_s)
            with anyio.move_on_after(delay_s):
                await self.stop_event.wait()

    async def _open(self, cmd: list[str]) -> Process:
        # Own session: a terminal's Ctrl-C reaches only the runner, which forwards it once.
        return await anyio.open_process(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
            env=self.env,
            start_new_session=True,
        )

    async def _spawn(self, w: _Worker) -> Process:
        spec = w.spec
        cmd = [sys.executable, "-m", "streammachine.process.worker", "--worker", spec.label]
        cmd += ["--parent", str(os.getpid()), "--config", str(self.config_path)]
        if spec.agents is not None:
            cmd += ["--agents", json.dumps(list(spec.agents))]
        if not spec.timers:
            cmd.append("--no-timers")
        w.proc = proc = await self._open([*cmd, self.target])
        w.ready = w.signalled = False
        log.debug("started %s (pid %d)", spec.label, proc.pid)
        if self.stopping or w.retired:
            self._signal([w], signal.SIGTERM)
        return proc

    def _signal(self, workers: list[_Worker], sig: int, again: bool = False) -> None:
        for w in workers:
            if w.proc is not None and w.proc.returncode is None and (again or not w.signalled):
                w.signalled = True
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.Signals(sig))

    def _begin_stop(self, sig: int) -> None:
        if self.stopping:
            log.warning("second %s: forcing the workers to stop", signal.Signals(sig).name)
            self.forced = True
            self._signal(self.workers, sig, again=True)
            return
        self.stopping = True
        self.stop_event.set()
        self.wake.set()
        notify_systemd("STOPPING=1")
        live = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        if live and not self.failed:
            name = signal.Signals(sig).name
            log.info("%s: draining %d workers (send it again to force)", name, len(live))
        self._signal(self.workers, sig)
        self._kill_later(self.workers)

    def _kill_later(self, workers: list[_Worker]) -> None:
        async def kill() -> None:
            timeout_s = (self.layout.shutdown_timeout_s if self.layout else 30.0) + KILL_GRACE_S
            await anyio.sleep(timeout_s)
            for w in workers:
                if w.proc is not None and w.proc.returncode is None:
                    log.warning(
                        "%s did not stop within %.0f s: killing it", w.spec.label, timeout_s
                    )
                    w.proc.kill()

        if self._tg is not None:
            self._tg.start_soon(kill)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                self._begin_stop(sig)

    async def _listen(self, sock: socket.socket) -> None:
        """Take the workers' sd_notify messages: `READY=1` with `WORKER_PID=<pid>`."""
        while True:
            await anyio.wait_readable(sock)
            try:
                data = sock.recv(4096).decode("utf-8", "replace")
            except BlockingIOError:
                continue
            fields: dict[str, str] = {}
            for line in data.splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            if fields.get("READY") == "1" and fields.get("WORKER_PID", "").isdigit():
                self._on_ready(int(fields["WORKER_PID"]))

    def _on_ready(self, pid: int) -> None:
        w = next((w for w in self.workers if w.proc is not None and w.proc.pid == pid), None)
        if w is None:
            return
        w.ready, w.ready_at, w.start_failures = True, time.monotonic(), 0
        if self.gen_ready:
            log.info("%s is running again (pid %d)", w.spec.label, pid)
            return
        if all(x.ready for x in self.workers):
            self.gen_ready = True
            pids = ", ".join(f"{x.spec.label}={x.proc.pid}" for x in self.workers if x.proc)
            n = len(self.workers)
            log.info("ready: %d worker%s (%s)", n, "s" if n > 1 else "", pids)
            if not self.ever_ready:
                self.ever_ready = True
                notify_systemd("READY=1")

    async def _watch(self) -> None:
        from watchfiles import PythonFilter, awatch

        dirs = self.reload_dirs or []
        log.info("watching %s for .py changes", ", ".join(map(str, dirs)))
        async for changes in awatch(*dirs, watch_filter=PythonFilter(), stop_event=self.stop_event):
            if self.stopping:
                return
            names = sorted({Path(path).name for _, path in changes})
            log.info("%s changed: checking the new code", ", ".join(names))
            layout = await self._probe()
            if layout is None or self.stopping:
                continue
            log.info("reloading: draining the workers")
            self.pending = layout
            self.wake.set()
            for w in self.workers:
                w.retired = True
            self._signal(self.workers, signal.SIGTERM)
            self._kill_later(self.workers)
