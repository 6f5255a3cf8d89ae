"""The dashboard's in-memory history: rates from heartbeats, summed per agent, bounded in time."""

from __future__ import annotations

from typing import Any

from streammachine.dashboard.history import History


def snapshot(t_ms: int, instances: list[dict[str, Any]], lag: int = 0) -> dict[str, Any]:
    group = {"name": "billing", "pending": 1, "lag": lag}
    return {
        "generated_at_ms": t_ms,
        "redis": {"ok": True, "error": None},
        "instances": instances,
        "streams": [{"stream": "orders", "groups": [group]}],
        "dead_letters": [{"stream": "orders", "dead_stream": "orders:dead", "count": t_ms // 1000}],
    }


def inst(iid: str, at: float, processed: int) -> dict[str, Any]:
    agent = {"name": "bill", "stream": "orders", "group": "billing"}
    agent["stats"] = {"processed": processed}
    return {"id": iid, "app": "shop", "heartbeat_at": at, "agents": [agent]}


def test_rates_come_from_heartbeats_and_add_up_over_instances() -> None:
    h = History(interval_s=1.0, window_s=60.0)
    h.record(snapshot(1000, [inst("a", 100.0, 0), inst("b", 100.0, 0)]))
    assert h.as_dict()["agents"] == []  # one heartbeat each: no rate yet
    h.record(snapshot(2000, [inst("a", 102.0, 20), inst("b", 101.0, 5)]))
    # The same heartbeat seen again keeps its rate: polls faster than heartbeats add no zeros.
    h.record(snapshot(3000, [inst("a", 102.0, 20), inst("b", 101.0, 5)]))
    (bill,) = h.as_dict()["agents"]
    assert bill | {"points": None} == {
        "app": "shop", "agent": "bill", "stream": "orders", "group": "billing", "points": None
    }  # fmt: skip
    assert bill["points"] == [[2000, 15.0, 25], [3000, 15.0, 25]]  # 10/s + 5/s
    rates = {(r["instance"], r["rate"]) for r in h.as_dict()["instance_rates"]}
    assert rates == {("a", 10.0), ("b", 5.0)}
    # An instance that is gone no longer counts.
    h.record(snapshot(4000, [inst("a", 104.0, 30)]))
    assert h.as_dict()["agents"][0]["points"][-1] == [4000, 5.0, 30]


def test_groups_dead_letters_since_duplicates_outages_and_the_window() -> None:
    h = History(interval_s=1.0, window_s=10.0)
    for t in range(1, 6):
        h.record(snapshot(t * 1000, [], lag=t))
    h.record(snapshot(5000, [], lag=99))  # the same snapshot again: ignored
    h.record({"redis": {"ok": False}, "generated_at_ms": 6000})  # Redis down: nothing
    data = h.as_dict()
    assert data["groups"][0]["points"] == [[t * 1000, t, 1] for t in range(1, 6)]
    assert data["dead_letters"][0]["points"][-1] == [5000, 5]
    assert [p[0] for p in h.as_dict(since_ms=3000)["groups"][0]["points"]] == [4000, 5000]
    h.record(snapshot(14_000, [], lag=0))  # 10 s later: the first points fall out of the window
    assert [p[0] for p in h.as_dict()["groups"][0]["points"]] == [4000, 5000, 14_000]
    assert data["generated_at_ms"] == 5000 and History().as_dict()["generated_at_ms"] is None
