"""The dashboard's short memory: the last minutes of throughput, lag, pending and dead letters.

The dashboard process records every snapshot it polls (one per interval, whether a page is open or
not), so a page opened now draws its charts from the first paint instead of starting empty. It is
in memory and per dashboard process: a restart starts a new history, and two dashboards each keep
their own.

Rates come from successive heartbeats of one instance (its own clock and counters), then are
summed per (app, agent) across instances, so an agent run by four processes is one chart.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["History"]

Key = tuple[str, ...]


class _Series:
    __slots__ = ("meta", "points")

    def __init__(self, meta: dict[str, Any], maxlen: int) -> None:
        self.meta = meta
        self.points: deque[list[Any]] = deque(maxlen=maxlen)


class History:
    """Time series of one dashboard, fed by `record(snapshot)` once per poll.

    Args:
        interval_s: the poll interval (only used to size the buffers and for the page).
        window_s: how far back points are kept.

    Example:
        >>> h = History(interval_s=2.0, window_s=900.0)
        >>> h.record(status)  # doctest: +SKIP
        >>> h.as_dict()["agents"][0]["points"][-1]  # doctest: +SKIP
        [1700000000000, 41.5, 12034]
    """

    def __init__(self, interval_s: float = 2.0, window_s: float = 900.0) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self._maxlen = max(2, int(window_s / max(interval_s, 0.01)) + 1)
        self.agents: dict[Key, _Series] = {}
        self.groups: dict[Key, _Series] = {}
        self.dead: dict[Key, _Series] = {}
        # (instance id, agent) -> (processed, heartbeat_at, rate or None)
        self._beats: dict[Key, tuple[float, float, float | None]] = {}
        self._last_ms = -1

    def _series(self, table: dict[Key, _Series], key: Key, meta: dict[str, Any]) -> _Series:
        series = table.get(key)
        if series is None:
            series = table[key] = _Series(meta, self._maxlen)
        return series

    def record(self, status: dict[str, Any]) -> None:
        """Add one snapshot (`collect_status`'s shape); one with Redis down adds nothing."""
        if not status.get("redis", {}).get("ok"):
            return
        t = int(status["generated_at_ms"])
        if t <= self._last_ms:  # the same snapshot twice (shared by requests): one point
            return
        self._last_ms = t
        self._record_agents(t, status.get("instances") or [])
        for s in status.get("streams") or []:
            for g in s.get("groups") or []:
                key: Key = (str(s["stream"]), str(g["name"]))
                meta = {"stream": key[0], "group": key[1]}
                self._series(self.groups, key, meta).points.append([t, g["lag"], g["pending"]])
        for d in status.get("dead_letters") or []:
            dkey: Key = (str(d["dead_stream"]),)
            meta = {"stream": d["stream"], "dead_stream": d["dead_stream"]}
            self._series(self.dead, dkey, meta).points.append([t, d["count"]])
        self._expire(t)

    def _record_agents(self, t: int, instances: list[dict[str, Any]]) -> None:
        totals: dict[Key, list[Any]] = {}  # (app, agent) -> [rate or None, processed, meta]
        seen: set[Key] = set()
        for inst in instances:
            at = float(inst.get("heartbeat_at") or 0.0)
            for a in inst.get("agents") or []:
                beat_key: Key = (str(inst.get("id")), str(a.get("name")))
                seen.add(beat_key)
                processed = float((a.get("stats") or {}).get("processed") or 0)
                before = self._beats.get(beat_key)
                rate = None if before is None else before[2]
                if before is not None and at > before[1]:
                    rate = max(0.0, (processed - before[0]) / (at - before[1]))
                if before is None or at > before[1]:
                    self._beats[beat_key] = (processed, at, rate)
                key: Key = (str(inst.get("app")), str(a.get("name")))
                total = totals.setdefault(
                    key,
                    [None, 0, {"app": key[0], "agent": key[1], "stream": a.get("stream"),
                               "group": a.get("group")}],
                )  # fmt: skip
                total[1] += int(processed)
                if rate is not None:
                    total[0] = (total[0] or 0.0) + rate
        for gone in set(self._beats) - seen:  # instances that stopped or aged out
            del self._beats[gone]
        for key, (rate, processed, meta) in totals.items():
            if rate is not None:  # the first heartbeat of every instance gives no rate yet
                self._series(self.agents, key, meta).points.append([t, round(rate, 3), processed])

    def _expire(self, now_ms: int) -> None:
        oldest = now_ms - int(self.window_s * 1000)
        for table in (self.agents, self.groups, self.dead):
            for key in list(table):
                points = table[key].points
                while points and points[0][0] < oldest:
                    points.popleft()
                if not points:
                    del table[key]

    def instance_rates(self) -> list[dict[str, Any]]:
        """The latest messages/s of each (instance, agent), for the page's agent table."""
        return [
            {"instance": inst, "agent": agent, "rate": round(rate, 3)}
            for (inst, agent), (_, _, rate) in sorted(self._beats.items())
            if rate is not None
        ]

    def as_dict(self, since_ms: int | None = None) -> dict[str, Any]:
        """Everything kept (or only points newer than `since_ms`), JSON-ready.

        Returns:
            `{"interval_s", "window_s", "generated_at_ms", "agents": [{"app", "agent", "stream",
            "group", "points": [[t_ms, rate, processed], ...]}], "groups": [{"stream", "group",
            "points": [[t_ms, lag, pending], ...]}], "dead_letters": [{"stream", "dead_stream",
            "points": [[t_ms, count], ...]}], "instance_rates": [...]}`; `lag` is None where
            Redis could not say.
        """
        after = -1 if since_ms is None else since_ms

        def dump(table: dict[Key, _Series]) -> list[dict[str, Any]]:
            return [
                {**table[k].meta, "points": [p for p in table[k].points if p[0] > after]}
                for k in sorted(table)
            ]

        return {
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "generated_at_ms": self._last_ms if self._last_ms >= 0 else None,
            "agents": dump(self.agents),
            "groups": dump(self.groups),
            "dead_letters": dump(self.dead),
            "instance_rates": self.instance_rates(),
        }
