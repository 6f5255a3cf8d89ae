"""The window tool of the MCP server (read-only): every window agent's open windows, watermark
and late count (`App.window`), without the `mcp` SDK; `server` registers it.

Example:
    >>> (await WindowTools(tools).windows_list()).windows  # doctest: +SKIP
    [WindowState(name='bars', stream='trades', ...)]
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..state.windowing import read_windows
from .results import Bounded, fit
from .tools import Tools

__all__ = ["WindowTools"]


class WindowState(BaseModel):
    key: str = Field(description="The Redis hash holding this stream's open windows.")
    name: str | None
    stream: str | None = Field(description="The stream (or partition) windowed.")
    group: str | None
    kind: str | None
    emit: str | None
    to: str | None = Field(description="The output stream.")
    open_keys: int = Field(description="Keys with open windows.")
    open_windows: int | None
    max_event_ms: int | None = Field(description="The newest event time seen (ms).")
    watermark_ms: int | None = Field(description="max_event_ms minus the grace.")
    late: int = Field(description="Entries that came after their window closed (<stream>:late).")


class WindowList(Bounded):
    windows: list[WindowState]


class WindowTools:
    """The window tool, over the server's `Tools` (its connection)."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    async def windows_list(self) -> WindowList:
        """Every window agent's streams on this Redis: open windows, watermark (newest event
        time minus the grace) and how many entries came late."""
        rows = await read_windows(self.tools.conn.client)
        items = [WindowState(**r) for r in rows]
        kept, over = fit(items)
        note = f"showing {len(kept)} of {len(items)}" if over else None
        return WindowList(windows=kept, truncated=over, note=note)
