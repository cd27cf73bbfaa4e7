"""A national year scored on this machine: the streaming simulator, then `ontrack score` on Dask.

    .venv/bin/python benchmarks/bench_national.py                      # 1.2 million clients
    .venv/bin/python benchmarks/bench_national.py --clients 200000 --reference 20000

The bundle is the `make run` champion (both instruments, navigator, recommender), from the
repository's `mlflow/` (filled by `ontrack demo --no-serve` first when it has none). In one run:

1. **simulate**: `ontrack simulate --partitions P` streams N clients (a national year: NHS
   Talking Therapies sees about 1.2 million referrals a year) to client-hash Parquet on disk.
   Targets: < 60 s, < 8 GB.
2. **score**: `ontrack score` on a Dask LocalCluster (one worker process per core, one thread
   each): validate, assess, write. Targets: < 5 minutes, peak memory of all processes < 8 GB.
3. **reference**: the same code without Dask, for the first R clients of that cohort in one
   process: the contract's validation, then `Bundle.assess` in 10,000-client calls (what a
   script would do).

Each phase runs as its own process tree; its memory is sampled every 0.25 s as the sum of the
resident sets of the process and all its descendants (a conservative figure: pages shared
between processes are counted in each). Prints one table; nothing is timed in a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402  (a dependency of dask.distributed)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.bench_service import champion_store  # noqa: E402

console = Console(width=150)  # the table stays readable in a log file
GB = 1024 ** 3


class TreeMemory:
    """Peak of the summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every, self.peak, self._stop = pid, every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_phase(cmd: list[str], env: dict, log: Path) -> tuple[float, int]:
    """(wall seconds, peak tree RSS bytes) of one command; its output goes to ``log``."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        mem = TreeMemory(proc.pid)
        rc = proc.wait()
    peak = mem.stop()
    if rc != 0:
        console.print(log.read_text()[-3000:], markup=False)
        raise SystemExit(f"{cmd[1:3]} failed with exit code {rc} (log: {log})")
    return time.perf_counter() - t0, peak


REFERENCE = r"""
import json, sys, time
from pathlib import Path
import pandas as pd
from features.contract import validate_frames
from models.registry import configure, load_bundle
root, n, chunk = Path(sys.argv[1]), int(sys.argv[2]), 10_000
configure()
bundle = load_bundle("models:/ontrack-not-risk@champion", num_threads=1)
parts, clients, have = [], [], 0
for f in sorted((root / "sessions").glob("part-*.parquet")):  # whole partitions, then n
    parts.append(pd.read_parquet(f))
    clients.append(pd.read_parquet(root / "clients" / f.name))
    have += len(clients[-1])
    if have >= n:
        break
cl = pd.concat(clients, ignore_index=True).iloc[:n]
s = pd.concat(parts, ignore_index=True)
s = s[s["client_id"].isin(set(cl["client_id"]))].reset_index(drop=True)
t0 = time.perf_counter()
cohort, report = validate_frames(s, cl)
assert report.ok, report.as_text(5)
t1 = time.perf_counter()
s = cohort.sessions
cov = cohort.clients.set_index("client_id")[["age_band", "gender", "diagnosis_group"]]
ids = pd.unique(s["client_id"])
code = pd.Series(range(len(ids)), index=ids)[s["client_id"]].to_numpy() // chunk
flagged = done = 0
for k in range(int(code.max()) + 1):
    out = bundle.assess(s[code == k], cov)
    done += len(out)
    flagged += sum(a.flag.flagged for a in out)
t2 = time.perf_counter()
print(json.dumps({"rows": len(s), "clients": done, "flagged": flagged,
                  "validate": t1 - t0, "assess": t2 - t1}))
"""

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1_200_000)
    ap.add_argument("--partitions", type=int, default=128)
    ap.add_argument("--reference", type=int, default=100_000,
                    help="Clients of the in-process reference (0: skip it).")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--dir", type=Path, default=None,
                    help="Working folder (default: a temporary one, removed after).")
    args = ap.parse_args()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="ontrack-national-")
    work = args.dir or Path(tmp_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    store, _ = champion_store(None, None, work)
    env = {**os.environ, "ONTRACK_MLFLOW_DIR": str(store), "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    ontrack = str(Path(sys.executable).with_name("ontrack"))
    rows = []
    load = os.getloadavg()[0]

    console.print(f"simulating {args.clients:,} clients into {args.partitions} partitions ...")
    cohort = work / "cohort"
    sim_s, sim_rss = run_phase([ontrack, "simulate", "--clients", str(args.clients),
                                "--seed", "2026", "--format", "parquet", "--partitions",
                                str(args.partitions), "--out", str(cohort)], env,
                               work / "simulate.log")
    meta = json.loads((cohort / "partitions.json").read_text())
    import pyarrow.parquet as pq

    n_rows = sum(pq.ParquetFile(f).metadata.num_rows
                 for f in (cohort / "sessions").glob("part-*.parquet"))
    rows.append(("simulate (stream to Parquet)", meta["clients"], n_rows, sim_s, sim_rss,
                 "< 60 s, < 8 GB"))

    console.print("scoring on Dask ...")
    out = work / "scores"
    score_s, score_rss = run_phase([ontrack, "score", "--data", str(cohort), "--out", str(out),
                                    "--workers", str(args.workers)], env, work / "score.log")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    sec = summary["seconds"]
    rows.append(("score: whole command", summary["clients"], summary["rows"], score_s,
                 score_rss, "< 300 s, < 8 GB"))
    for phase in ("input", "validate", "score"):
        if phase in sec:
            rows.append((f"  {phase}", summary["clients"], summary["rows"], sec[phase], None,
                         ""))
    flagged = summary["flagged"] / max(summary["clients"], 1)

    ref = None
    if args.reference:
        console.print(f"reference: {args.reference:,} clients in one process ...")
        log = work / "reference.log"
        ref_s, ref_rss = run_phase([sys.executable, "-c", REFERENCE, str(cohort),
                                    str(args.reference)],
                                   env, log)
        ref = json.loads(log.read_text().strip().splitlines()[-1])
        rows.append((f"reference in-process ({args.reference:,}): validate + assess",
                     ref["clients"], ref["rows"], ref["validate"] + ref["assess"], ref_rss,
                     ""))
        rows.append(("  validate", ref["clients"], ref["rows"], ref["validate"], None, ""))
        rows.append(("  assess (10,000-client calls)", ref["clients"], ref["rows"],
                     ref["assess"], None, ""))

    table = Table(title=f"A national year on {os.cpu_count()} cores ({args.workers} Dask "
                        f"workers), the make-run bundle; load average at start {load:.1f}")
    for col in ("phase", "clients", "score rows", "seconds", "clients/s", "peak RSS (all "
                "processes)", "target"):
        table.add_column(col, justify="left" if col in ("phase", "target") else "right")
    for name, clients, n, s, rss, target in rows:
        table.add_row(name, f"{clients:,}", f"{n:,}", f"{s:,.1f}",
                      f"{clients / s:,.0f}" if s else "",
                      "" if rss is None else f"{rss / GB:.2f} GB", target)
    console.print(table)
    console.print(f"flagged not on track: {flagged:.1%} of scored clients; safety flags "
                  f"{summary['safety_flags']:,}")
    if ref:
        per_ref = ref["assess"] / ref["clients"] * 1e3
        per_dask = sec["score"] / summary["clients"] * 1e3
        console.print(f"assessment: {per_ref:.2f} ms per client in one process; "
                      f"{per_dask:.2f} ms per client of wall time on {args.workers} workers "
                      f"(x{per_ref / per_dask:.2f})")
    ok_sim = sim_s < 60 and sim_rss < 8 * GB
    ok_score = score_s < 300 and score_rss < 8 * GB
    console.print(f"targets: simulate {'met' if ok_sim else 'NOT met'}; score "
                  f"{'met' if ok_score else 'NOT met'}")
    if args.dir is None:
        tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
