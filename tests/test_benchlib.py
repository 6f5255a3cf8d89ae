"""The benchmark harness (scripts/benchlib.py): its maths and its round order, without timing; and
one benchmark run with --quick against the real server, to prove the scripts still run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import benchlib  # noqa: E402


def test_round_order_rotates_so_each_variant_leads_once_per_cycle() -> None:
    names = ["a", "b", "c"]
    orders = [benchlib.round_order(names, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert benchlib.round_order(names, 3) == orders[0]
    assert sorted(o[0] for o in orders) == names
    assert benchlib.round_order([], 4) == []


def test_run_rounds_calls_every_variant_once_per_round_in_round_order() -> None:
    calls: list[str] = []

    def variant(name: str, value: float) -> tuple[str, object]:
        def go() -> float:
            calls.append(name)
            return value + len(calls)

        return name, go

    results = benchlib.run_rounds(dict([variant("x", 0), variant("y", 100)]), rounds=4)
    assert calls == ["x", "y", "y", "x", "x", "y", "y", "x"]
    # each value is what that call returned, filed under its variant, by round
    assert results == {"x": [1.0, 4.0, 5.0, 8.0], "y": [102.0, 103.0, 106.0, 107.0]}


def test_median_odd_even_and_empty() -> None:
    assert benchlib.median([3, 1, 2]) == 2
    assert benchlib.median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError):
        benchlib.median([])


def test_ratios_are_per_round_not_ratios_of_medians() -> None:
    base = [100.0, 50.0, 200.0]
    other = [110.0, 60.0, 180.0]  # 1.1, 1.2, 0.9 round by round
    ratio = benchlib.Ratio.of(other, base)
    assert ratio is not None
    assert (ratio.median, ratio.min, ratio.max) == pytest.approx((1.1, 0.9, 1.2))
    assert benchlib.median(other) / benchlib.median(base) == pytest.approx(1.1)  # same here, but:
    skewed = benchlib.Ratio.of([10.0, 10.0, 10.0], [1.0, 10.0, 100.0])
    assert skewed is not None and skewed.median == pytest.approx(1.0)
    assert (skewed.min, skewed.max) == pytest.approx((0.1, 10.0))
    assert benchlib.per_round_ratios([1.0, 2.0], [0.0, 4.0]) == [0.5]  # a zero baseline skipped
    assert benchlib.Ratio.of([1.0], [0.0]) is None
    with pytest.raises(ValueError):
        benchlib.per_round_ratios([1.0], [1.0, 2.0])


def test_summarise_and_table_show_medians_and_ratio_ranges() -> None:
    results = {"naive": [100.0, 200.0, 150.0], "fast": [200.0, 300.0, 450.0]}
    rows = benchlib.summarise(results, ["naive"], "msg/s")
    fast = rows[1]
    assert fast.median == 300.0
    assert fast.ratios["naive"] is not None
    assert fast.ratios["naive"].text() == "2.00 (1.50-3.00)"
    text = benchlib.table("t", rows, ["naive"], 3)
    lines = text.splitlines()
    assert "medians of 3 alternating rounds" in lines[0]
    assert lines[1].split() == ["variant", "median", "msg/s", "min-max", "vs", "naive"]
    assert lines[4].split() == ["fast", "300", "200-450", "2.00", "(1.50-3.00)"]
    as_json = fast.as_dict()
    assert as_json["ratios"]["naive"] == {"median": 2.0, "min": 1.5, "max": 3.0}


def test_bench_notes_and_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    bench = benchlib.Bench("b", "ms", baselines=["base"])
    bench.run({"base": lambda: 2.0, "other": lambda: 1.0}, 2, verbose=False)
    bench.notes["extra"] = "text"
    benchlib.report(argparse.Namespace(json=True), [bench], "header")
    doc = json.loads(capsys.readouterr().out)
    assert doc["header"] == "header"
    (only,) = doc["benches"]
    assert only["rounds"] == 2 and only["notes"] == {"extra": "text"}
    assert only["rows"][1]["ratios"]["base"]["median"] == 0.5


def test_rounds_default_quick_and_bad() -> None:
    p = benchlib.parser("doc")
    assert benchlib.finish(p.parse_args([])).rounds == benchlib.DEFAULT_ROUNDS == 5
    assert benchlib.finish(p.parse_args(["--quick"])).rounds == 2
    assert benchlib.finish(p.parse_args(["--quick", "--rounds", "7"])).rounds == 7
    with pytest.raises(SystemExit):
        benchlib.finish(p.parse_args(["--rounds", "0"]))


def test_redis_cpu_per_entry_counts_top_level_commands_once() -> None:
    info = {
        "cmdstat_xreadgroup": {"calls": 10, "usec": 500, "usec_per_call": 50.0},
        "cmdstat_evalsha": {"calls": 10, "usec": 2000, "usec_per_call": 200.0},
        "cmdstat_xack": {"calls": 10, "usec": 300, "usec_per_call": 30.0},  # inside the script
        "cmdstat_info": {"calls": 4, "usec": 999, "usec_per_call": 250.0},
        "used_memory": 1,
    }
    stats = benchlib.parse_commandstats(info)
    assert stats["evalsha"] == (10, 2000) and "used_memory" not in stats
    scripted = benchlib.CpuUse(entries=100, process_s=0.004, commands=stats)
    assert scripted.process_us_per_entry == pytest.approx(40.0)
    assert scripted.command_us_per_entry == pytest.approx(25.0)  # evalsha + xreadgroup
    plain = benchlib.CpuUse(100, 0.0, {k: v for k, v in stats.items() if k != "evalsha"})
    assert plain.command_us_per_entry == pytest.approx(8.0)  # xreadgroup + xack; info left out
    assert plain.breakdown().startswith("xreadgroup 5.00 µs, xack 3.00 µs")


def test_redis_cpu_measures_a_real_server(redis_url: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    with benchlib.RedisCpu(redis_url) as cpu:
        for i in range(200):
            r.xadd("cpu-test", {"n": i})
    use = cpu.result(200)
    cpu.close()
    r.close()
    assert use.commands["xadd"][0] == 200
    assert use.command_us_per_entry > 0


BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
PARENT = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', sys.argv[1]])\ninput()\n"


def test_process_cpu_includes_children() -> None:
    """A parent that burns nothing itself, whose child burns 0.3 s of CPU and exits."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, BUSY], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        used = 0.0
        while used < 0.3 and time.monotonic() < deadline:
            used = benchlib.process_cpu_s(parent.pid)
            time.sleep(0.05)
        assert used >= 0.3
    finally:
        parent.communicate(b"\n", timeout=10)


def test_a_benchmark_runs_with_quick(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url}
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_throughput.py"), "--quick", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (bench,) = json.loads(done.stdout)["benches"]
    names = [row["name"] for row in bench["rows"]]
    assert names == [
        "naive loop",
        "pipelined loop",
        "no-op agent",
        "exactly-once stage",
        "FastOHLCConsumer 1m+5m",
    ]
    assert bench["rounds"] == 2
    for row in bench["rows"]:
        assert len(row["values"]) == 2 and row["median"] > 0
        assert set(row["ratios"]) == {"naive loop", "pipelined loop"}
    assert bench["rows"][0]["ratios"]["naive loop"]["median"] == 1.0
    assert any(name.startswith("Redis CPU per entry, exactly-once") for name in bench["notes"])


def test_run_rounds_async_keeps_the_same_order() -> None:
    import asyncio

    calls: list[str] = []

    def variant(name: str) -> object:
        async def go() -> float:
            calls.append(name)
            return float(len(calls))

        return go

    results = asyncio.run(
        benchlib.run_rounds_async({"a": variant("a"), "b": variant("b")}, rounds=2)  # type: ignore[dict-item]
    )
    assert calls == ["a", "b", "b", "a"]
    assert results == {"a": [1.0, 4.0], "b": [2.0, 3.0]}
