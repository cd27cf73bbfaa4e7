"""Validation speed on 1,000,000 session rows (target: under 10 s).

Run: `uv run python benchmarks/bench_validate.py [--rows 1000000] [--repeats 3]`
Times reading the CSV + pandera shape/type layer + every content rule, median of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from features.contract import read_table, validate_frames


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    per = 10
    clients = n // (per * 2)
    cid = np.repeat(np.array([f"C{i:07d}" for i in range(clients)]), per * 2)
    session = np.tile(np.repeat(np.arange(1, per + 1), 2), clients)
    instrument = np.tile(np.array(["PHQ-9", "GAD-7"]), clients * per)
    hi = np.where(instrument == "PHQ-9", 27, 21)
    score = rng.integers(0, hi + 1)
    dates = pd.Timestamp("2025-01-01") + pd.to_timedelta(session * 7, unit="D")
    return pd.DataFrame({"client_id": cid, "session": session, "instrument": instrument,
                         "score": score, "date": dates.strftime("%Y-%m-%d")})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    frame = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sessions.csv"
        frame.to_csv(path, index=False)
        read_t, val_t = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            raw = read_table(path)
            t1 = time.perf_counter()
            _, report = validate_frames(raw)
            t2 = time.perf_counter()
            assert report.ok, report.as_text(5)
            read_t.append(t1 - t0)
            val_t.append(t2 - t1)
    table = Table(title=f"Validation of {len(frame):,} session rows (median of {args.repeats})")
    table.add_column("step")
    table.add_column("median s", justify="right")
    table.add_column("rows / s", justify="right")
    for name, ts in (("read CSV", read_t), ("validate (types + rules)", val_t),
                     ("total", [a + b for a, b in zip(read_t, val_t, strict=True)])):
        m = statistics.median(ts)
        table.add_row(name, f"{m:.2f}", f"{len(frame) / m:,.0f}")
    Console().print(table)
    total = statistics.median([a + b for a, b in zip(read_t, val_t, strict=True)])
    print(f"target: under 10 s -> {'met' if total < 10 else 'NOT met'} ({total:.2f} s)")


if __name__ == "__main__":
    main()
