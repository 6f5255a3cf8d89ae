"""The pandas reference of window results (tests/test_windows.py, scripts/bench_windows.py):
inputs as generated here, windows as pandas computes them from the inputs alone."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd

SIZE_MS, STEP_MS, GAP_MS, GRACE_MS = 10_000, 5_000, 3_000, 2_000
AGGS = ("n", "qty", "hi", "lo", "avg", "open", "close")
SENTINEL = "~end"


def inputs(n: int, keys: int, seed: int, *, late_every: int = 0) -> list[dict[str, Any]]:
    """`n` trades of `keys` symbols, event times rising with jitter within the grace (so none
    is late), every `late_every`-th one far behind the watermark (late for every window kind),
    then a sentinel far ahead that closes every other window."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    base = 1_700_000_000_000
    for i in range(n):
        ts = base + i * 37 + rng.randrange(GRACE_MS)
        late = bool(late_every) and i > 0 and i % late_every == 0
        if late:
            ts -= 10 * SIZE_MS + GRACE_MS
        sym = f"S{rng.randrange(keys)}"
        if rng.random() < 0.02:
            ts += 20 * GAP_MS  # now and then a quiet spell: sessions end
            base += 20 * GAP_MS
        rows.append({"sym": sym, "ts": ts, "qty": rng.randrange(1, 100),
                     "px": rng.randrange(900, 1100), "late": late})  # fmt: skip
    end = max(r["ts"] for r in rows) + 10 * (SIZE_MS + GAP_MS + GRACE_MS)
    rows.append({"sym": SENTINEL, "ts": end, "qty": 0, "px": 0, "late": False})
    return rows


def _agg(g: pd.DataFrame) -> pd.Series:
    g = g.sort_values(["ts", "order"], kind="stable")
    return pd.Series({
        "n": len(g), "qty": g["qty"].sum(), "hi": g["px"].max(), "lo": g["px"].min(),
        "avg": g["px"].mean(), "open": g["px"].iloc[0], "close": g["px"].iloc[-1],
        "start": g["wstart"].iloc[0] if "wstart" in g else g["ts"].min(),
        "end": g["wstart"].iloc[0] + SIZE_MS if "wstart" in g else g["ts"].max(),
    })  # fmt: skip


def reference(kind: str, rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """(key, start, end) → aggregates of every window of `kind` the inputs close (late entries
    and the sentinel left out)."""
    df = pd.DataFrame(rows)
    df["order"] = range(len(df))
    df = df[~df["late"] & (df["sym"] != SENTINEL)]
    if kind in ("tumbling", "hopping"):
        step = SIZE_MS if kind == "tumbling" else STEP_MS
        df = df.assign(last=df["ts"] - df["ts"] % step)
        parts = []
        for back in range(SIZE_MS // step):
            part = df.assign(start=df["last"] - back * step)
            parts.append(part[part["start"] + SIZE_MS > part["ts"]])
        df = pd.concat(parts)
        df["wstart"] = df["start"]
        out = df.groupby(["sym", "start"]).apply(_agg, include_groups=False)
    elif kind == "session":
        df = df.sort_values(["sym", "ts", "order"], kind="stable")
        new = df.groupby("sym")["ts"].diff().fillna(GAP_MS) >= GAP_MS
        df = df.assign(sid=new.astype(int).groupby(df["sym"]).cumsum())
        out = df.groupby(["sym", "sid"]).apply(_agg, include_groups=False)
    else:  # sliding: per key, the rows in (t - size, t] for every distinct t
        df = df.sort_values(["sym", "ts", "order"], kind="stable")
        frames = []
        for sym, g in df.groupby("sym"):
            g = g.set_index(pd.to_datetime(g["ts"], unit="ms"))
            roll = g.rolling(f"{SIZE_MS}ms", closed="right")
            r = pd.DataFrame({
                "n": roll["qty"].count(), "qty": roll["qty"].sum(), "hi": roll["px"].max(),
                "lo": roll["px"].min(), "avg": roll["px"].mean(),
                "open": roll["px"].apply(lambda x: x[0], raw=True),
                "close": roll["px"].apply(lambda x: x[-1], raw=True),
            })  # fmt: skip
            r["sym"], r["end"] = sym, g["ts"].to_numpy()
            r["start"] = r["end"] - SIZE_MS
            frames.append(r.groupby("end").tail(1))
        out = pd.concat(frames).set_index(["sym", "end"], drop=False)
    result = {}
    for (sym, *_), row in out.iterrows():
        result[(str(sym), int(row["start"]), int(row["end"]))] = {
            a: float(row[a]) if a == "avg" else int(row[a]) for a in AGGS
        }
    return result


def parse_bars(entries: list[Any]) -> list[tuple[tuple[str, int, int], dict[str, Any]]]:
    """Output entries (XRANGE replies) as ((key, start, end), aggregates), in order."""
    out = []
    for _, f in entries:
        d = {k.decode(): v.decode() for k, v in f.items()}
        key = (d["key"], int(d["start"]), int(d["end"]))
        out.append((key, {a: float(d[a]) if a == "avg" else int(d[a]) for a in AGGS}))
    return out


def same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Aggregates equal (the mean within float rounding)."""
    return all(
        abs(got[a] - want[a]) <= 1e-9 * max(1.0, abs(want[a])) if a == "avg" else got[a] == want[a]
        for a in AGGS
    )
