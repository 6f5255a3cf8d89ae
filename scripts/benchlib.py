"""The benchmark harness every `scripts/bench_*.py` runs on.

Variants run in alternating rounds (round r starts at variant r mod n, so a burst of load on
this shared machine hits every variant alike); each figure is the median over the rounds, and
each ratio against a named baseline is the median (with min-max) of the *per-round* ratios,
both sides measured in the same round. Benchmarks print figures only: they never fail on time.

    from benchlib import Bench, parse_args

    args = parse_args(__doc__)                        # --rounds, --quick, --json
    bench = Bench("throughput", unit="msg/s", baselines=["naive loop"])
    bench.run({"naive loop": run_naive, "agent": run_agent}, args.rounds)
    bench.report(args)

Helpers: `redis_url(args)` (a throwaway redis-server on a free loopback port, or `REDIS_URL`),
`RedisCpu` (the server's CPU per entry: process CPU from `INFO cpu` and command time from
`INFO commandstats`), `process_cpu_s` (a process tree's CPU from /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2


# ---------------------------------------------------------------------------------------- maths
def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order the variants run in round `round_index`: rotated by one each round, so each
    variant runs first (and last) equally often over n rounds.

    >>> round_order(["a", "b", "c"], 0), round_order(["a", "b", "c"], 1)
    (['a', 'b', 'c'], ['b', 'c', 'a'])
    """
    if not names:
        return []
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def per_round_ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """values[r] / baseline[r] for each round r (rounds where the baseline is 0 are left out)."""
    if len(values) != len(baseline):
        raise ValueError("values and baseline need the same number of rounds")
    return [v / b for v, b in zip(values, baseline, strict=True) if b]


@dataclass
class Ratio:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float], baseline: Sequence[float]) -> Ratio | None:
        ratios = per_round_ratios(values, baseline)
        if not ratios:
            return None
        return cls(median(ratios), min(ratios), max(ratios))

    def text(self) -> str:
        return f"{self.median:.2f} ({self.min:.2f}-{self.max:.2f})"


@dataclass
class Row:
    """One variant's figures over all rounds."""

    name: str
    values: list[float]
    unit: str
    ratios: dict[str, Ratio | None] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return median(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "values": self.values,
            "ratios": {
                b: None if r is None else {"median": r.median, "min": r.min, "max": r.max}
                for b, r in self.ratios.items()
            },
        }


def run_rounds(
    variants: Mapping[str, Callable[[], float]],
    rounds: int,
    on_result: Callable[[int, str, float], None] | None = None,
) -> dict[str, list[float]]:
    """Run every variant once per round, in `round_order`; each variant's values by round."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in round_order(names, r):
            value = float(variants[name]())
            out[name].append(value)
            if on_result is not None:
                on_result(r, name, value)
    return out


async def run_rounds_async(
    variants: Mapping[str, Callable[[], Awaitable[float]]],
    rounds: int,
    on_result: Callable[[int, str, float], None] | None = None,
) -> dict[str, list[float]]:
    """`run_rounds` for coroutine variants, all in the caller's event loop."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in round_order(names, r):
            value = float(await variants[name]())
            out[name].append(value)
            if on_result is not None:
                on_result(r, name, value)
    return out


def summarise(
    results: Mapping[str, Sequence[float]], baselines: Sequence[str], unit: str
) -> list[Row]:
    """A row per variant with its median and its per-round ratios against each baseline."""
    rows = []
    for name, values in results.items():
        row = Row(name, list(values), unit)
        for base in baselines:
            if base in results:
                row.ratios[base] = Ratio.of(values, results[base])
        rows.append(row)
    return rows


def format_number(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def table(title: str, rows: Sequence[Row], baselines: Sequence[str], rounds: int) -> str:
    """The fixed printout: variant, median, min-max of the values, then per baseline the median
    per-round ratio with its min-max."""
    head = ["variant", f"median {rows[0].unit if rows else ''}".strip(), "min-max"]
    head += [f"vs {b}" for b in baselines]
    body = [
        [
            row.name,
            format_number(row.median),
            f"{format_number(min(row.values))}-{format_number(max(row.values))}",
            *[(r.text() if (r := row.ratios.get(b)) is not None else "-") for b in baselines],
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = [
        f"{title} — medians of {rounds} alternating rounds; ratios per round, median (min-max)"
    ]
    for n, line in enumerate([head, *body]):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells))
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the bench
class Bench:
    """One table of variants measured in alternating rounds.

    Args:
        title: the table's title.
        unit: what each variant's run returns (e.g. "msg/s", "ms").
        baselines: names of the variants every other one is compared with, per round.
    """

    def __init__(self, title: str, unit: str, baselines: Sequence[str] = ()) -> None:
        self.title = title
        self.unit = unit
        self.baselines = list(baselines)
        self.results: dict[str, list[float]] = {}
        self.rounds = 0
        #: Extra figures (name -> value or text) printed under the table and put in the JSON.
        self.notes: dict[str, Any] = {}

    def _show(self, rounds: int, verbose: bool) -> Callable[[int, str, float], None]:
        def show(r: int, name: str, value: float) -> None:
            if verbose:
                print(f"  [{self.title}] round {r + 1}/{rounds} {name}: "
                      f"{format_number(value)} {self.unit}", file=sys.stderr, flush=True)  # fmt: skip

        return show

    def run(
        self, variants: Mapping[str, Callable[[], float]], rounds: int, verbose: bool = True
    ) -> dict[str, list[float]]:
        """Run the variants in alternating rounds (progress on stderr); their values."""
        self.results = run_rounds(variants, rounds, self._show(rounds, verbose))
        self.rounds = rounds
        return self.results

    async def run_async(
        self,
        variants: Mapping[str, Callable[[], Awaitable[float]]],
        rounds: int,
        verbose: bool = True,
    ) -> dict[str, list[float]]:
        """`run` for coroutine variants, in the caller's event loop."""
        self.results = await run_rounds_async(variants, rounds, self._show(rounds, verbose))
        self.rounds = rounds
        return self.results

    def rows(self) -> list[Row]:
        return summarise(self.results, self.baselines, self.unit)

    def text(self) -> str:
        out = table(self.title, self.rows(), self.baselines, self.rounds)
        for name, value in self.notes.items():
            shown = format_number(value) if isinstance(value, float | int) else str(value)
            out += f"\n  {name}: {shown}"
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "rounds": self.rounds,
            "baselines": self.baselines,
            "rows": [row.as_dict() for row in self.rows()],
            "notes": self.notes,
        }


def report(args: argparse.Namespace, benches: Sequence[Bench], header: str = "") -> None:
    """Print the benches' tables, or one JSON document with `--json`."""
    if args.json:
        print(json.dumps({"header": header, "benches": [b.as_dict() for b in benches]}, indent=2))
        return
    if header:
        print(header)
    for bench in benches:
        print(bench.text())
        print()


# ---------------------------------------------------------------------------------- arguments
def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the harness's options: --rounds, --quick, --json."""
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--rounds", type=int, help=f"alternating rounds (default {DEFAULT_ROUNDS})")
    p.add_argument(
        "--quick", action="store_true", help=f"tiny sizes, {QUICK_ROUNDS} rounds: proves it runs"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    return p


def finish(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the rounds (--quick: 2, else 5) and check them."""
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    return args


def parse_args(doc: str | None, p: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    return finish((p or parser(doc)).parse_args())


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


# --------------------------------------------------------------------------------------- redis
@contextlib.contextmanager
def redis_url(binary: str | None = None) -> Iterator[str]:
    """`REDIS_URL` when set (and no `binary` is asked for), else a throwaway redis-server on a
    free loopback port (`binary`, else the one `streammachine.testing` finds)."""
    url = os.environ.get("REDIS_URL")
    if url and binary is None:
        yield url
        return
    from streammachine.testing import RedisServer

    server = RedisServer()
    if binary is not None:
        server.binary = binary
    with server:
        yield server.url


def server_version(url: str) -> str:
    import redis

    r = redis.Redis.from_url(url)
    try:
        info = r.info("server")
        return f"{info.get('server_name', 'redis')} {info['redis_version']}"
    finally:
        r.close()


SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
IGNORED_COMMANDS = frozenset({"info"})


def parse_commandstats(info: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} from redis-py's parsed `INFO commandstats` (keys `cmdstat_x`)."""
    out: dict[str, tuple[int, int]] = {}
    for key, value in info.items():
        if not key.startswith("cmdstat_") or not isinstance(value, Mapping):
            continue
        out[key[len("cmdstat_") :].lower()] = (int(value["calls"]), int(value["usec"]))
    return out


@dataclass
class CpuUse:
    """The server's work for some entries: process CPU (`INFO cpu`, what the server really
    spent, I/O included) and command time per command (`INFO commandstats`)."""

    entries: int
    process_s: float
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec), the difference

    @property
    def process_us_per_entry(self) -> float:
        return self.process_s * 1e6 / self.entries if self.entries else 0.0

    @property
    def command_us_per_entry(self) -> float:
        """Command time per entry, top-level commands only: commands a script runs are counted
        by Redis under the script too, so when scripts ran only scripts and the commands that
        scripts never call are summed — exact for our variants, which call XREADGROUP outside
        scripts and XACK/XADD either all inside or all outside."""
        usec = 0
        scripted = any(c in SCRIPT_COMMANDS for c in self.commands)
        for name, (_calls, us) in self.commands.items():
            if name in IGNORED_COMMANDS:
                continue
            if scripted and name not in SCRIPT_COMMANDS and name not in {"xreadgroup"}:
                continue
            usec += us
        return usec / self.entries if self.entries else 0.0

    def breakdown(self) -> str:
        """The top commands by time: `xack 0.21 µs, xreadgroup 0.80 µs` per entry."""
        parts = sorted(
            (
                (us, name)
                for name, (_c, us) in self.commands.items()
                if name not in IGNORED_COMMANDS
            ),
            reverse=True,
        )[:4]
        per = self.entries or 1
        return ", ".join(f"{name} {us / per:.2f} µs" for us, name in parts)


class RedisCpu:
    """Measure the server's CPU for a run: `with RedisCpu(url) as cpu: run()`, then
    `cpu.result(entries)`."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self._before: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._after: tuple[float, dict[str, tuple[int, int]]] | None = None

    def snapshot(self) -> tuple[float, dict[str, tuple[int, int]]]:
        cpu = self.client.info("cpu")
        stats = parse_commandstats(self.client.info("commandstats"))
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), stats

    def __enter__(self) -> RedisCpu:
        self._before = self.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self._after = self.snapshot()

    def result(self, entries: int) -> CpuUse:
        assert self._before is not None and self._after is not None
        (p0, s0), (p1, s1) = self._before, self._after
        diff = {}
        for name, (calls, usec) in s1.items():
            c0, u0 = s0.get(name, (0, 0))
            if calls - c0:
                diff[name] = (calls - c0, usec - u0)
        return CpuUse(entries, p1 - p0, diff)

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------------- processes
def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in task.read_text().split()]
    return out


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants: utime + stime of each live one, plus the
    cutime + cstime of the children they have reaped (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            f = _stat(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        todo += _children(p)
    return total / tick
