"""Prometheus metrics built from one status snapshot per scrape (no state kept in the server).

Counters come from the instance heartbeats, so a scrape of any dashboard sees every process and
host; each series carries an `instance` label, and a restarted process starts a new series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = ["StatusCollector", "render_metrics"]

_AGENT_LABELS = ["app", "agent", "stream", "group", "instance"]
_GROUP_LABELS = ["stream", "group"]
_COUNTERS = (
    ("processed", "Messages handled successfully."),
    ("failed", "Handler calls that raised."),
    ("retried", "Messages scheduled for another delivery."),
    ("dead", "Messages moved to the dead-letter stream."),
    ("skipped", "Messages skipped by the handler."),
    ("timed_out", "Handler calls cancelled at the agent's timeout_s (each also failed)."),
)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class StatusCollector(Collector):
    """A prometheus-client Collector over a snapshot from `collect_status`.

    Example:
        >>> registry = CollectorRegistry(auto_describe=False)  # doctest: +SKIP
        >>> registry.register(StatusCollector(await collect_status(client)))  # doctest: +SKIP
    """

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family of the snapshot."""
        st = self.status
        up = GaugeMetricFamily("streammachine_redis_up", "1 when Redis answered this scrape.")
        up.add_metric([], 1.0 if st["redis"]["ok"] else 0.0)
        yield up
        bad = GaugeMetricFamily(
            "streammachine_bad_heartbeats",
            "Instance records in Redis that are not valid heartbeats, left out of these metrics.",
        )
        bad.add_metric([], float(st.get("bad_heartbeats", 0)))
        yield bad
        truncated = GaugeMetricFamily(
            "streammachine_instances_left_out",
            "Running instances left out of this snapshot to keep it bounded (see the docs).",
        )
        truncated.add_metric([], float(st.get("instances_truncated", 0)))
        yield truncated
        yield from self._instances(st["instances"])
        yield from self._agents(st.get("agents") or [])
        yield from self._streams(st["streams"])
        dead = GaugeMetricFamily(
            "streammachine_dead_letters",
            "Entries in a stream's dead-letter stream (<stream>:dead).",
            labels=["stream"],
        )
        for d in st.get("dead_letters") or []:
            dead.add_metric([str(d["stream"])], _num(d.get("count")))
        yield dead
        yield from self._scheduled(st.get("scheduled") or {})
        tables = GaugeMetricFamily(
            "streammachine_table_keys", "Keys held by a table (app.table).", labels=["table"]
        )
        for t in st.get("tables") or []:
            tables.add_metric([str(t["table"])], _num(t.get("keys")))
        yield tables
        yield from self._windows(st.get("windows") or [], st.get("generated_at_ms"))

    def _windows(self, windows: list[dict[str, Any]], now_ms: Any) -> Iterator[Metric]:
        labels = ["stream", "window"]
        late = CounterMetricFamily(
            "streammachine_window_late_entries",
            "Entries that reached a window agent after their window closed (<stream>:late).",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "streammachine_window_watermark_lag_seconds",
            "Wall clock minus a window agent's watermark (newest event time seen minus grace).",
            labels=labels,
        )
        opened = GaugeMetricFamily(
            "streammachine_window_open_keys", "Keys with open windows.", labels=labels
        )
        for w in windows:
            names = [str(w.get("stream")), str(w.get("name"))]
            late.add_metric(names, _num(w.get("late")))
            opened.add_metric(names, _num(w.get("open_keys")))
            if isinstance(w.get("watermark_ms"), int) and isinstance(now_ms, int):
                lag.add_metric(names, (now_ms - w["watermark_ms"]) / 1000)
        yield late
        yield lag
        yield opened

    def _agents(self, agents: list[dict[str, Any]]) -> Iterator[Metric]:
        paused = GaugeMetricFamily(
            "streammachine_agent_paused",
            "1 while an agent is paused for its whole app (streammachine pause), else 0.",
            labels=["app", "agent"],
        )
        for a in agents:
            paused.add_metric([str(a["app"]), str(a["agent"])], 1.0 if a.get("paused") else 0.0)
        yield paused

    def _scheduled(self, scheduled: dict[str, Any]) -> Iterator[Metric]:
        count = GaugeMetricFamily(
            "streammachine_scheduled_entries",
            "Delayed entries waiting in Redis until due.",
            labels=["namespace"],
        )
        oldest = GaugeMetricFamily(
            "streammachine_scheduled_oldest_due_timestamp_seconds",
            "Due time of the soonest delayed entry (epoch seconds; absent when none waits).",
            labels=["namespace"],
        )
        backlog = GaugeMetricFamily(
            "streammachine_scheduled_backlog_entries",
            "Delayed entries overdue by more than 30 s (no mover runs, or it is stuck).",
            labels=["namespace"],
        )
        failed = GaugeMetricFamily(
            "streammachine_scheduled_failed_entries",
            "Delayed entries set aside in <key>:failed: they could not be appended.",
            labels=["namespace"],
        )
        for ns in scheduled.get("namespaces") or []:
            label = [str(ns["namespace"])]
            count.add_metric(label, _num(ns.get("count")))
            backlog.add_metric(label, _num(ns.get("backlog")))
            failed.add_metric(label, _num(ns.get("failed")))
            if ns.get("oldest_due_ms") is not None:
                oldest.add_metric(label, _num(ns["oldest_due_ms"]) / 1000)
        yield from (count, oldest, backlog, failed)

    def _instances(self, instances: list[dict[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "streammachine_instance_up",
            "1 for a registered instance whose heartbeat is fresh, 0 when it is late.",
            labels=["app", "instance", "host", "version"],
        )
        counters = {
            key: CounterMetricFamily(f"streammachine_messages_{key}", doc, labels=_AGENT_LABELS)
            for key, doc in _COUNTERS
        }
        dropped = CounterMetricFamily(
            "streammachine_outputs_dropped",
            "Outputs and state changes not written because another consumer took their entries.",
            labels=_AGENT_LABELS,
        )
        overdue = GaugeMetricFamily(
            "streammachine_handlers_overdue",
            "Handler calls running longer than timeout_s right now (e.g. blocking the loop).",
            labels=_AGENT_LABELS,
        )
        latency = HistogramMetricFamily(
            "streammachine_handler_latency_seconds",
            "Handler call duration.",
            labels=_AGENT_LABELS,
        )
        timer_runs = CounterMetricFamily(
            "streammachine_timer_runs",
            "Timer runs that finished.",
            labels=["app", "timer", "instance"],
        )
        timer_fails = CounterMetricFamily(
            "streammachine_timer_failures",
            "Timer runs that raised.",
            labels=["app", "timer", "instance"],
        )
        for inst in instances:
            app, iid = str(inst.get("app", "")), str(inst.get("id", ""))
            up.add_metric(
                [app, iid, str(inst.get("host", "")), str(inst.get("version", ""))],
                1.0 if inst.get("fresh") else 0.0,
            )
            bounds = [float(b) for b in inst.get("latency_buckets_s") or []]
            for agent in inst.get("agents") or []:
                labels = [
                    app,
                    str(agent.get("name", "")),
                    str(agent.get("stream", "")),
                    str(agent.get("group", "")),
                    iid,
                ]
                stats = agent.get("stats") or {}
                for key, _ in _COUNTERS:
                    counters[key].add_metric(labels, _num(stats.get(key)))
                dropped.add_metric(labels, _num(stats.get("dropped")))
                overdue.add_metric(labels, _num(stats.get("overdue")))
                buckets = _cumulative(bounds, stats.get("latency_buckets") or [])
                if buckets:
                    latency.add_metric(labels, buckets, _num(stats.get("latency_s_total")))
            for timer in inst.get("timers") or []:
                tl = [app, str(timer.get("name", "")), iid]
                timer_runs.add_metric(tl, _num(timer.get("runs")))
                timer_fails.add_metric(tl, _num(timer.get("failures")))
        yield up
        yield from counters.values()
        yield dropped
        yield overdue
        yield latency
        yield timer_runs
        yield timer_fails

    def _streams(self, streams: list[dict[str, Any]]) -> Iterator[Metric]:
        length = GaugeMetricFamily(
            "streammachine_stream_length", "Entries in the stream (XLEN).", labels=["stream"]
        )
        gauges = {
            "consumers": GaugeMetricFamily(
                "streammachine_group_consumers", "Consumers in the group.", labels=_GROUP_LABELS
            ),
            "pending": GaugeMetricFamily(
                "streammachine_group_pending",
                "Entries delivered to the group and not acked yet.",
                labels=_GROUP_LABELS,
            ),
            "lag": GaugeMetricFamily(
                "streammachine_group_lag",
                "Entries not delivered to the group yet.",
                labels=_GROUP_LABELS,
            ),
            "oldest_pending_age_s": GaugeMetricFamily(
                "streammachine_group_oldest_pending_age_seconds",
                "Age of the group's oldest pending entry (0 when none is pending).",
                labels=_GROUP_LABELS,
            ),
        }
        owner = GaugeMetricFamily(
            "streammachine_partition_owner_info",
            "1 for the process that owns a partition stream in a group (its lease).",
            labels=[*_GROUP_LABELS, "owner"],
        )
        for s in streams:
            length.add_metric([s["stream"]], float(s["length"]))
            for g in s["groups"]:
                for key, family in gauges.items():
                    value = g.get(key)
                    if value is None and key == "lag":
                        continue  # more than inspect counted: better absent than wrong
                    family.add_metric([s["stream"], g["name"]], _num(value))
                if g.get("owner"):
                    owner.add_metric([s["stream"], g["name"], str(g["owner"])], 1.0)
        yield length
        yield from gauges.values()
        yield owner


def _cumulative(bounds: list[float], counts: list[Any]) -> list[tuple[str, float]]:
    """Per-bucket counts (last = +Inf) → Prometheus's cumulative `le` buckets."""
    if len(counts) != len(bounds) + 1:
        return []
    out: list[tuple[str, float]] = []
    total = 0.0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        total += _num(count)
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


def render_metrics(status: dict[str, Any], accept: str | None = None) -> tuple[bytes, str]:
    """The exposition of a status snapshot and its content type, in the format `accept` asks
    for (OpenMetrics when the scraper asks for it, else the Prometheus text format 0.0.4).

    Example:
        >>> body, content_type = render_metrics(await collect_status(c))  # doctest: +SKIP
        >>> content_type  # doctest: +SKIP
        'text/plain; version=0.0.4; charset=utf-8'
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
