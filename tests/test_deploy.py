"""The deployment recipes in examples/deploy/ parse, and use the fields as Kubernetes and KEDA
document them (KEDA: keda.sh/v1alpha1 ScaledObject and TriggerAuthentication; the redis-streams
scaler's `address`/`stream`/`consumerGroup` with `lagCount` or `pendingEntriesCount`, the
prometheus scaler's `serverAddress`/`query`/`threshold`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from streammachine.dashboard.metrics import StatusCollector

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def by_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in items if d["kind"] == kind]


def test_deployment_runs_streammachine_with_probes_on_the_dashboard() -> None:
    items = docs("kubernetes.yaml")
    (dep,) = by_kind(items, "Deployment")
    assert (dep["apiVersion"], dep["kind"]) == ("apps/v1", "Deployment")
    spec = dep["spec"]
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["streammachine", "run"] and c["args"][0] == "app:app"
    env = {e["name"]: e for e in c["env"]}
    assert env["STREAMMACHINE_DASHBOARD"]["value"] == "1"
    assert env["STREAMMACHINE_DASHBOARD_HOST"]["value"] == "0.0.0.0"
    port = int(env["STREAMMACHINE_DASHBOARD_PORT"]["value"])
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "url"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["dashboard"] == port
    # Off loopback the dashboard needs a token (issue 29: a token-less dashboard on 0.0.0.0),
    # from a Secret; the probes need none: /healthz is open, readiness runs `health`.
    assert env["STREAMMACHINE_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "dashboard"
    assert "STREAMMACHINE_DASHBOARD_OPERATOR_TOKEN" not in env, "read-only unless chosen"
    assert c["readinessProbe"]["exec"]["command"] == ["streammachine", "health"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "dashboard"}
    (monitor,) = by_kind(items, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["bearerTokenSecret"]["key"] == "token"
    (svc,) = by_kind(items, "Service")
    assert svc["spec"]["selector"] == spec["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # The grace period covers the drain (shutdown timeout) with a margin.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= float(env["STREAMMACHINE_SHUTDOWN_TIMEOUT_S"]["value"]) + 5


def test_keda_redis_streams_scaled_object() -> None:
    items = docs("keda-scaledobject.yaml")
    (auth,) = by_kind(items, "TriggerAuthentication")
    (so,) = by_kind(items, "ScaledObject")
    (dep,) = by_kind(docs("kubernetes.yaml"), "Deployment")
    for d in (auth, so):
        assert d["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert 0 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    assert ":" in meta["address"] and meta["stream"] == "orders"
    assert meta["consumerGroup"] == "billing"
    assert "lagCount" in meta or "pendingEntriesCount" in meta
    if "lagCount" in meta:
        assert int(meta["activationLagCount"]) < int(meta["lagCount"])
    secret_refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in secret_refs} <= {"username", "password"}
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_keda_prometheus_variant_queries_the_exported_lag() -> None:
    (so,) = docs("keda-scaledobject-prometheus.yaml")
    assert (so["apiVersion"], so["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http")
    assert float(meta["threshold"]) > float(meta["activationThreshold"]) >= 0
    assert "streammachine_group_lag{" in meta["query"]
    # The metric and its labels are the ones /metrics exports.
    families = {f.name: f for f in StatusCollector(_status()).collect()}
    lag = families["streammachine_group_lag"]
    assert {"stream", "group"} <= set(lag.samples[0].labels)


def _status() -> dict[str, Any]:
    group = {"name": "billing", "consumers": 1, "pending": 0, "lag": 5}
    group |= {"oldest_pending_age_s": None, "last_delivered_id": "0-0"}
    stream = {"stream": "orders", "length": 5, "groups": [group], "dead_letter": False}
    return {
        "generated_at_ms": 0, "redis": {"ok": True, "error": None}, "instances": [],
        "streams": [stream], "streams_truncated": False, "lag_scan_limit": 10_000,
        "dead_letters": [], "candles": [],
    }  # fmt: skip


def test_grafana_dashboard_refers_only_to_exported_metrics() -> None:
    import json
    import re

    from prometheus_client.parser import text_string_to_metric_families

    from streammachine.dashboard.metrics import render_metrics

    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert board["uid"] == "streammachine" and board["schemaVersion"] >= 36
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}
    used = {m for es in exprs.values() for e in es for m in re.findall(r"streammachine_\w+", e)}
    # Every sample name a full snapshot exports (counters as *_total, histograms as *_bucket).
    body, _ = render_metrics(_full_status())
    exported = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert used and used <= exported, sorted(used - exported)
    # What the dashboard is for: each of these is charted.
    wanted = {
        "throughput": "streammachine_messages_processed_total",
        "lag": "streammachine_group_lag",
        "pending age": "streammachine_group_oldest_pending_age_seconds",
        "dead letters": "streammachine_dead_letters",
        "paused agents": "streammachine_agent_paused",
    }
    for what, name in wanted.items():
        assert any(name in e for es in exprs.values() for e in es), what
    for p in panels:
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["expr"].count("(") == t[
                "expr"
            ].count(")"), t["expr"]


def _full_status() -> dict[str, Any]:
    """A snapshot with every kind of series /metrics exports."""
    stats = {"processed": 5, "failed": 1, "retried": 1, "dead": 1, "skipped": 0}
    stats |= {"latency_s_total": 0.5, "latency_buckets": [1, 2, 2]}
    agent = {"name": "bill", "stream": "orders", "group": "billing", "stats": stats}
    instance = {"id": "h-1-a", "app": "shop", "host": "h", "version": "1", "fresh": True}
    instance |= {"latency_buckets_s": [0.01, 0.1], "agents": [agent]}
    instance["timers"] = [{"name": "tick", "runs": 3, "failures": 0}]
    group = {"name": "billing", "consumers": 1, "pending": 2, "lag": 5, "owner": "h-1-"}
    group |= {"oldest_pending_age_s": 3.0, "last_delivered_id": "0-0"}
    return _status() | {
        "instances": [instance],
        "streams": [{"stream": "orders", "length": 5, "groups": [group], "dead_letter": False}],
        "agents": [{"app": "shop", "agent": "bill", "paused": True}],
        "dead_letters": [{"stream": "orders", "dead_stream": "orders:dead", "count": 2}],
        "scheduled": {"namespaces": [{"namespace": "default", "count": 1, "oldest_due_ms": 1}]},
        "bad_heartbeats": 0,
    }
