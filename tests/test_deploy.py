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
    (dep,) = docs("kubernetes.yaml")
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
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "dashboard"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "dashboard"}
    # The grace period covers the drain (shutdown timeout) with a margin.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= float(env["STREAMMACHINE_SHUTDOWN_TIMEOUT_S"]["value"]) + 5


def test_keda_redis_streams_scaled_object() -> None:
    items = docs("keda-scaledobject.yaml")
    (auth,) = by_kind(items, "TriggerAuthentication")
    (so,) = by_kind(items, "ScaledObject")
    (dep,) = docs("kubernetes.yaml")
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
