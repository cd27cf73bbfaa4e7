"""Load and soak of the service on the bundle `make run` trains: printed tables.

    .venv/bin/python benchmarks/soak.py                  # ~13 minutes: search, then 10 min
    .venv/bin/python benchmarks/soak.py --minutes 2      # a shorter soak

1. **Maximum sustainable rate**: closed-loop callers (1, 2, 4, 8, 16 at once, each one request
   after the other, ``--search-seconds`` each) with the soak's request mix; the sustainable
   rate is the highest throughput of a step with no 5xx and p99 under 1 s (OnTrack
   heuristic: a caller's timeout is far above it).
2. **Soak**: requests sent at 80% of that rate on a fixed schedule (open loop, so a slow
   answer does not slow the sender; latency is counted from the scheduled time) for
   ``--minutes``: 70% valid single-client assessments (a demo client's history under a fresh
   sentinel id), 30% invalid (a score and an item answer out of range with sentinel values,
   no key, an unknown key, not JSON, the wrong media type, an unknown field). Per minute:
   requests, answers by class, p50 / p99; every 10 s the RSS and open file descriptors of the
   server and its workers, with the RSS slope after the first two minutes (target: under 1
   MB/min) and the descriptors' range.
3. **Sentinel sweep** of the service's log after the run: no sentinel client id, score, item
   answer or key (the valid one and the unknown ones) may appear.

The service runs with `bentoml serve` (one worker, as `make run` serves it) on a free loopback
port, the rate limit off (the soak measures the service, not the limit; tests/test_faults.py
tests the limit). The load generator runs on the same 2 cores, so the rate is what one
machine gives with its own caller beside it. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_service as bs  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.service_fixtures import (  # noqa: E402
    free_port,
    sentinel_hits,
    start_service,
    stop_service,
)

SCORE, ITEM = 4242424, 31337  # sentinel values, out of every range (refused with 422)
P99_LIMIT = 1.0  # seconds; OnTrack heuristic for "sustainable"
SLOPE_LIMIT = 1.0  # MB per minute after warm-up
WARMUP_MINUTES = 2


class Mix:
    """The request mix: (kind, path, headers, body) for request number i."""

    def __init__(self, key: str, histories: list[dict], seed: int = 7) -> None:
        self.key, self.histories = key, histories
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.bad_keys: list[str] = []

    def next(self) -> tuple[str, str, dict, bytes]:
        with self.lock:
            u = self.rng.random()
            client = dict(self.rng.choice(self.histories))
        client["client_id"] = f"SENT{uuid.uuid4().hex[:12]}"
        good = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        body = {"clients": [client]}
        if u < 0.70:
            return "valid", "/v1/assess", good, json.dumps(body).encode()
        if u < 0.76:
            bad = json.loads(json.dumps(body))
            bad["clients"][0]["sessions"][0]["scores"][0]["score"] = SCORE
            return "score out of range", "/v1/assess", good, json.dumps(bad).encode()
        if u < 0.82:
            bad = json.loads(json.dumps(body))
            first = bad["clients"][0]["sessions"][0]["scores"][0]
            first["items"] = {"9": ITEM}
            return "item out of range", "/v1/assess", good, json.dumps(bad).encode()
        if u < 0.86:
            return "no key", "/v1/assess", {"Content-Type": "application/json"}, \
                json.dumps(body).encode()
        if u < 0.90:
            fake = f"ontk_SENTKEY{uuid.uuid4().hex}"
            with self.lock:
                if len(self.bad_keys) < 1000:
                    self.bad_keys.append(fake)
            return "unknown key", "/v1/assess", {**good, "Authorization": f"Bearer {fake}"}, \
                json.dumps(body).encode()
        if u < 0.94:
            return "not JSON", "/v1/assess", good, json.dumps(body).encode()[:-7]
        if u < 0.97:
            return "wrong media type", "/v1/assess", {**good, "Content-Type": "text/csv"}, \
                json.dumps(body).encode()
        bad = {**body, "clinic_notes": "SENTNOTE"}
        return "unknown field", "/v1/assess", good, json.dumps(bad).encode()


_local = threading.local()


def send(url: str, mix: Mix) -> tuple[str, int, float]:
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(base_url=url, timeout=30)
    kind, path, headers, body = mix.next()
    try:
        r = _local.client.post(path, content=body, headers=headers)
        return kind, r.status_code, 0.0
    except httpx.HTTPError:
        return kind, 599, 0.0  # no answer at all: counted with the 5xx


def search(url: str, mix: Mix, seconds: float) -> tuple[float, list[tuple]]:
    def caller(stop: float, lock: threading.Lock, done: list) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            _, status, _ = send(url, mix)
            with lock:
                done.append((status, time.perf_counter() - t0))

    rows = []
    for callers in (1, 2, 4, 8, 16):
        done: list[tuple[int, float]] = []
        lock = threading.Lock()
        stop = time.perf_counter() + seconds
        wall = bs.run_threads([(caller, (stop, lock, done)) for _ in range(callers)])
        lat = [d for _, d in done]
        five = sum(s >= 500 for s, _ in done)
        rows.append((callers, len(done), len(done) / wall, bs.pct(lat, 50), bs.pct(lat, 99),
                     five))
    ok = [r for r in rows if r[5] == 0 and r[4] < P99_LIMIT * 1000]
    return max((r[2] for r in ok), default=0.0), rows


def tree_sample(proc) -> tuple[float, int]:
    """RSS (MB) and open file descriptors of the server and its workers."""
    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    rss = fds = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.NoSuchProcess:
            pass
    return rss / 2**20, fds


def soak(url: str, proc, mix: Mix, rate: float, minutes: float):
    results: list[tuple[float, str, int, float]] = []  # (scheduled, kind, status, latency)
    lock = threading.Lock()
    samples: list[tuple[float, float, int]] = []
    t0 = time.perf_counter() + 0.5
    end = t0 + minutes * 60

    def one(at: float) -> None:
        kind, status, _ = send(url, mix)
        with lock:
            results.append((at - t0, kind, status, time.perf_counter() - at))

    def sampler() -> None:
        while time.perf_counter() < end:
            rss, fds = tree_sample(proc)
            samples.append((time.perf_counter() - t0, rss, fds))
            time.sleep(10)

    threading.Thread(target=sampler, daemon=True).start()
    with ThreadPoolExecutor(max_workers=64) as pool:
        i = 0
        while True:
            at = t0 + i / rate
            if at >= end:
                break
            pause = at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one, at)
            i += 1
    samples.append((time.perf_counter() - t0, *tree_sample(proc)))
    return results, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--search-seconds", type=float, default=15.0)
    ap.add_argument("--share", type=float, default=0.8, help="share of the sustainable rate")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ontrack-soak-"))
    env, key, _, cohort = bs.service_setup(tmp, "soak")
    histories = bs.cohort_request(cohort, 500)["clients"]
    mix = Mix(key, histories)
    log = tmp / "server.log"
    proc, url = start_service(env, free_port(), log)
    try:
        rate, steps = search(url, mix, args.search_seconds)
        search_table(steps, rate)
        if rate <= 0:
            bs.console.print("[red]no sustainable rate found[/red]")
            sys.exit(1)
        target = rate * args.share
        bs.console.print(f"soak: {target:.1f} requests/s ({args.share:.0%} of {rate:.1f}) "
                         f"for {args.minutes:g} min")
        results, samples = soak(url, proc, mix, target, args.minutes)
    finally:
        stop_service(proc)
    with (tmp / "samples.csv").open("w") as f:  # for a closer look at memory and descriptors
        f.write("seconds,rss_mb,open_fds\n")
        f.writelines(f"{at:.1f},{rss:.2f},{fds}\n" for at, rss, fds in samples)
    bs.console.print(f"samples every 10 s: {tmp / 'samples.csv'}")
    ok = report(results, samples, target)
    needles = {"client id": r"SENT[0-9a-f]{12}", "score": rf"(?<![0-9a-f]){SCORE}(?![0-9a-f])",
               "item answer": rf"(?<![0-9a-f]){ITEM}(?![0-9a-f])", "valid key": key,
               "unknown keys": "ontk_SENTKEY", "free text": "SENTNOTE"}
    hits = sentinel_hits([log], needles)
    t = Table(title=f"Sentinel sweep of the service log ({log.stat().st_size:,} bytes)")
    for c in ("sentinel", "hits"):
        t.add_column(c, justify="right" if c == "hits" else "left")
    for name, n in hits.items():
        t.add_row(name, str(n))
    bs.console.print(t)
    sys.exit(0 if ok and not any(hits.values()) else 1)


def search_table(steps: list[tuple], rate: float) -> None:
    t = Table(title="Maximum sustainable rate (closed loop, the soak's mix)")
    for c in ("callers", "requests", "per s", "p50 ms", "p99 ms", "5xx"):
        t.add_column(c, justify="right")
    for c, n, per_s, p50, p99, five in steps:
        t.add_row(str(c), f"{n:,}", f"{per_s:.1f}", f"{p50:.1f}", f"{p99:.1f}", str(five))
    bs.console.print(t)
    bs.console.print(f"sustainable: {rate:.1f} requests/s (no 5xx, p99 < {P99_LIMIT:g} s)")


def report(results, samples, rate: float) -> bool:
    by_minute: dict[int, list] = collections.defaultdict(list)
    for at, kind, status, lat in results:
        by_minute[int(at // 60)].append((kind, status, lat))
    t = Table(title=f"Soak at {rate:.1f} requests/s: per minute")
    for c in ("minute", "requests", "per s", "2xx", "4xx", "5xx", "p50 ms", "p99 ms",
              "RSS MB", "fds"):
        t.add_column(c, justify="right")
    for m in sorted(by_minute):
        rows = by_minute[m]
        lat = [x[2] for x in rows]
        inside = [s for s in samples if m * 60 <= s[0] < (m + 1) * 60] or samples[-1:]
        span = min(60.0, max(at for at, *_ in results) - m * 60) or 60.0
        t.add_row(str(m + 1), f"{len(rows):,}", f"{len(rows) / span:.1f}",
                  f"{sum(200 <= s < 300 for _, s, _ in rows):,}",
                  f"{sum(400 <= s < 500 for _, s, _ in rows):,}",
                  str(sum(s >= 500 for _, s, _ in rows)),
                  f"{bs.pct(lat, 50):.1f}", f"{bs.pct(lat, 99):.1f}",
                  f"{inside[-1][1]:.0f}", str(inside[-1][2]))
    bs.console.print(t)
    kinds = collections.Counter((k, s) for _, k, s, _ in results)
    t = Table(title="Answers by kind of request")
    for c in ("request", "status", "count"):
        t.add_column(c, justify="right" if c == "count" else "left")
    for (k, s), n in sorted(kinds.items()):
        t.add_row(k, str(s), f"{n:,}")
    bs.console.print(t)
    after = [(at / 60, rss, fds) for at, rss, fds in samples if at >= WARMUP_MINUTES * 60]
    if len(after) >= 3:
        slope = float(np.polyfit([a for a, _, _ in after], [r for _, r, _ in after], 1)[0])
    else:
        slope = float("nan")
    fds = [f for _, _, f in after] or [s[2] for s in samples]
    five = sum(s >= 500 for _, _, s, _ in results)
    expected = set(range(200, 300)) | {400, 401, 415, 422}
    odd = sum(s not in expected and s < 500 for _, _, s, _ in results)
    t = Table(title="Verdict")
    for c in ("measure", "value", "target", "met"):
        t.add_column(c)
    rows = [("5xx (or no answer)", str(five), "0", five == 0),
            ("other unexpected statuses", str(odd), "0", odd == 0),
            ("RSS slope after warm-up", f"{slope:+.2f} MB/min", f"< {SLOPE_LIMIT:g} MB/min",
             slope < SLOPE_LIMIT),
            ("open descriptors after warm-up", f"{min(fds)}-{max(fds)}", "flat",
             max(fds) - min(fds) <= 8)]
    for name, value, target, met in rows:
        t.add_row(name, value, target, "yes" if met else "NO")
    bs.console.print(t)
    return all(r[3] for r in rows)


if __name__ == "__main__":
    main()
