"""A Rich progress bar for long commands, on a terminal only (never in --json or a pipe)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

#: Below this many entries a command is quick: no bar.
MIN_ENTRIES = 1000


def interactive(json_out: bool = False) -> bool:
    """True when a person watches: no --json, and stdout and stderr are both terminals."""
    return not json_out and sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(
    label: str, total: int | None, *, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; with `enabled`, a transient bar on stderr counts up to `total`
    (None = unknown: a pulsing bar)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
