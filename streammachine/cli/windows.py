"""CLI command `windows`: the open windows, watermark and late count of every window agent's
streams (`App.window`), read from Redis."""

from __future__ import annotations

import time

import typer

from .common import JsonOut, command, dumps, out, safe, with_redis


def _ago(ms: int | None) -> str:
    if ms is None:
        return "-"
    lag_s = time.time() - ms / 1000
    return f"{ms} ({lag_s:.0f}s ago)" if lag_s >= 0 else f"{ms} ({-lag_s:.0f}s ahead)"


def register(app: typer.Typer) -> None:
    """Add `windows` to the CLI."""

    @command(app, "windows")
    def windows(json_out: JsonOut = False, redis_url: str | None = None) -> None:
        """Window agents: per stream (partition), open windows, watermark and late entries.

        The watermark is the newest event time seen minus the grace; entries behind it (for
        a closed window) went to `<stream>:late` and are counted here.
        """
        from ..state.windowing import read_windows

        rows = with_redis(redis_url, lambda c: read_windows(c.client))
        if json_out:
            for row in rows:
                out(dumps(row))
            return
        if not rows:
            out("no window agent has state on this Redis")
            return
        for r in rows:
            out(
                f"{safe(r['name'])}  {safe(r['stream'])} → {safe(r['to'])}  {safe(r['kind'])}"
                f"  emit={safe(r['emit'])}  open={r['open_windows']}"
                f"  watermark={_ago(r['watermark_ms'])}  late={r['late']}"
            )
