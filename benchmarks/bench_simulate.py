"""Benchmark the cohort simulator and its oracle.

    .venv/bin/python benchmarks/bench_simulate.py [--repeats 3]

Prints a table of medians:
* 100,000 clients simulated without the oracle (courses + tables), and written to CSV / Parquet;
* the oracle for 5,000 clients at sessions 1-6 (SE target 0.005), on a 5,000-client cohort.
Targets: 100k clients < 30 s; oracle for 5,000 clients < 2 minutes. Numba
compilation is excluded (a warm-up run compiles and fills the cache first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numba

from training.simulate import simulate_cohort


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--oracle-clients", type=int, default=5_000)
    args = ap.parse_args()
    simulate_cohort(300, seed=0, oracle_clients=20)  # compile / load the numba cache
    rows = []
    t_sim, cohort = _time(lambda: simulate_cohort(args.clients, seed=1, oracle_clients=0),
                          args.repeats)
    rows.append((f"simulate {args.clients:,} clients (no oracle)", t_sim, "< 30 s"))
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("csv", "parquet"):
            t_w, _ = _time(lambda fmt=fmt: cohort.write(Path(d) / fmt, fmt), args.repeats)
            rows.append((f"  + write {fmt}", t_w, ""))
    n = args.oracle_clients
    t_or, c = _time(lambda: simulate_cohort(n, seed=2, oracle_clients=n), max(1, args.repeats - 2))
    t_base, _ = _time(lambda: simulate_cohort(n, seed=2, oracle_clients=0), args.repeats)
    rows.append((f"oracle for {n:,} clients, sessions 1-6", t_or - t_base, "< 120 s"))
    info = c.oracle_info
    print(f"machine: {os.cpu_count()} cores, numba threads {numba.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':<45}{'median s':>10}  target")
    for name, t, target in rows:
        print(f"{name:<45}{t:>10.2f}  {target}")
    print(f"oracle: max SE {info['max_se']:.4f}, mean paths per value {info['mean_paths']:.0f}")


if __name__ == "__main__":
    main()
