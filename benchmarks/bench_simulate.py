"""Benchmark the cohort simulator and its oracle.

    .venv/bin/python benchmarks/bench_simulate.py [--repeats 3] [--national 1200000]
    .venv/bin/python benchmarks/bench_simulate.py --national 1200000 --national-only

Prints a table of medians:
* 100,000 clients simulated without the oracle (courses + tables), and written to CSV / Parquet;
* the oracle for 5,000 clients at sessions 1-6 (SE target 0.005), on a 5,000-client cohort;
* with ``--national N``: N clients streamed to 64 client-hash Parquet partitions
  (`training.simulate.stream`), one run in a child process of its own, with that process's
  peak resident memory.
Targets: 100k clients < 30 s; oracle for 5,000 clients < 2 minutes; the national cohort
(1.2 million clients) < 60 s and < 8 GB. Numba compilation is excluded (a warm-up run compiles
and fills the cache first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba

from training.simulate import simulate_cohort

NATIONAL_PARTITIONS = 64


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _national_child(n: int) -> None:
    """Run in a child process: stream `n` clients, print the figures and this process's peak
    resident memory as JSON."""
    from training.simulate.stream import stream_cohort

    simulate_cohort(300, seed=0, oracle_clients=0)  # load the compiled kernels
    with tempfile.TemporaryDirectory() as d:
        fig = stream_cohort(n, seed=1, out=Path(d) / "cohort", partitions=NATIONAL_PARTITIONS)
        fig["bytes"] = sum(p.stat().st_size for p in Path(d).rglob("*.parquet"))
    fig["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(fig))


def _national(n: int) -> dict:
    got = subprocess.run([sys.executable, __file__, "--national-child", str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(got.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--oracle-clients", type=int, default=5_000)
    ap.add_argument("--national", type=int, default=0,
                    help="also stream this many clients to 64 partitions (one run)")
    ap.add_argument("--national-only", action="store_true", help="only the --national row")
    ap.add_argument("--national-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.national_child:
        _national_child(args.national_child)
        return
    simulate_cohort(300, seed=0, oracle_clients=20)  # compile / load the numba cache
    rows, info, nat = [], None, None
    if args.national:  # first, while nothing else of this benchmark holds memory
        load = os.getloadavg()[0]
        nat = _national(args.national)
        rows.append((f"stream {args.national:,} clients, {NATIONAL_PARTITIONS} partitions "
                     "(1 run)", f"{nat['seconds']:.2f} s", "< 60 s"))
        rows.append(("  peak RSS of that process", f"{nat['peak_rss_mb'] / 1024:.2f} GB",
                     "< 8 GB"))
    if not args.national_only:
        t_sim, cohort = _time(lambda: simulate_cohort(args.clients, seed=1, oracle_clients=0),
                              args.repeats)
        rows.append((f"simulate {args.clients:,} clients (no oracle)", f"{t_sim:.2f} s",
                     "< 30 s"))
        with tempfile.TemporaryDirectory() as d:
            for fmt in ("csv", "parquet"):
                t_w, _ = _time(lambda fmt=fmt: cohort.write(Path(d) / fmt, fmt), args.repeats)
                rows.append((f"  + write {fmt}", f"{t_w:.2f} s", ""))
        n = args.oracle_clients
        t_or, c = _time(lambda: simulate_cohort(n, seed=2, oracle_clients=n),
                        max(1, args.repeats - 2))
        t_base, _ = _time(lambda: simulate_cohort(n, seed=2, oracle_clients=0), args.repeats)
        rows.append((f"oracle for {n:,} clients, sessions 1-6", f"{t_or - t_base:.2f} s",
                     "< 120 s"))
        info = c.oracle_info
    print(f"machine: {os.cpu_count()} cores, numba threads {numba.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'step':<45}{'median':>10}  target")
    for name, value, target in rows:
        print(f"{name:<45}{value:>10}  {target}")
    if nat is not None:
        print(f"national: {nat['rows']:,} session rows, {nat['bytes'] / 1e6:,.0f} MB of "
              f"Parquet, {nat['chunks']} chunks; phases (overlapping threads) simulate "
              f"{nat['simulate']:.1f} s, tables {nat['tables']:.1f} s, write "
              f"{nat['write']:.1f} s; load average {load:.1f} before it")
    if info is not None:
        print(f"oracle: max SE {info['max_se']:.4f}, mean paths per value "
              f"{info['mean_paths']:.0f}")


if __name__ == "__main__":
    main()
