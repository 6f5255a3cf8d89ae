"""The runner: `runner` (serve one app in this process, the event loop, readiness), `supervisor`
(worker processes, restarts, reload), `worker` (one worker process), `importer` (`module:attr` →
the App)."""
