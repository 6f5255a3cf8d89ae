"""Observability: the web dashboard, Prometheus metrics and `top`, reading the heartbeats every
App writes (`streammachine.presence.heartbeat`; the core never imports this package).

The heartbeats are read back by `streammachine.admin.instances` (re-exported here as
`list_instances`); the Starlette server and prometheus-client load only when their names are used.

Example:
    >>> from streammachine.dashboard import create_dashboard  # doctest: +SKIP
    >>> asgi_app = create_dashboard("redis://localhost:6379/0")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..admin.instances import list_instances

# add_heartbeat/heartbeat: the writer, in the core since the heartbeat moved there; kept importable.
from ..presence.heartbeat import add_heartbeat, heartbeat

if TYPE_CHECKING:
    from .metrics import StatusCollector, render_metrics
    from .server import create_dashboard, serve_dashboard
    from .status import collect_status

__all__ = [
    "StatusCollector",
    "add_heartbeat",
    "collect_status",
    "create_dashboard",
    "heartbeat",
    "list_instances",
    "render_metrics",
    "serve_dashboard",
]

_LAZY = {
    "StatusCollector": ".metrics",
    "render_metrics": ".metrics",
    "create_dashboard": ".server",
    "serve_dashboard": ".server",
    "collect_status": ".status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
