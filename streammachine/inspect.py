"""Compatibility: the old name of `streammachine.queries` (it shadowed the standard library's
`inspect`), with `replay_dead` from `streammachine.replay`. New code imports those modules.
"""

from __future__ import annotations

from .queries import *  # noqa: F403
from .queries import __all__ as _queries_all
from .queries import dead_dict, entry_dict
from .replay import replay_dead

__all__ = [*_queries_all, "dead_dict", "entry_dict", "replay_dead"]
