"""Benchmark of the prediction service (serving/): one run, printed tables.

    .venv/bin/python benchmarks/bench_service.py               # all parts (~2-3 minutes)
    .venv/bin/python benchmarks/bench_service.py --requests 200 --skip-sizes

Builds a seeded synthetic cohort (tests/service_fixtures.py), fits and registers a bundle in a
temporary MLflow store, imports it into a temporary BentoML store and starts `bentoml serve` on
a free loopback port (OMP_NUM_THREADS=1). Then:

1. **HTTP, one client** (the first client of EXAMPLE_INPUT, explained): p50/p99 over N sequential
   requests, against `/v1/noop` in the same service behind the same bearer-key auth, posting
   the same body. Targets: assess p50 <= 2 x noop p50, p99 < 15 ms.
2. **HTTP, 1,000 clients in one request** (histories from the cohort). Target < 1 s.
3. **In-process, 1,000 clients** (num_threads=1): the service's whole request path
   (`OnTrack.run`: request rules, contract frame, `check_sessions`, `assess`, audit) and
   `Bundle.assess` alone. Target >= 2,000 explained clients per second.
4. **Model size**: TreeSHAP cost (`pred_contrib`, microseconds per row, one thread) and the
   out-of-fold AUC of the failure model for a few sizes (the accuracy cost of a reduction).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from serving.schemas import EXAMPLE_INPUT  # noqa: E402
from tests.service_fixtures import fit_bundle, make_cohort, register, service_env  # noqa: E402

console = Console()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def cohort_request(cohort_dir: Path, n: int) -> dict:
    """n clients with their whole histories from the cohort files, as one request body."""
    import pandas as pd

    s = pd.read_csv(cohort_dir / "sessions.csv", dtype={"client_id": "string"})
    ids = s["client_id"].drop_duplicates().iloc[:n]
    s = s[s["client_id"].isin(set(ids))]
    clients = []
    for cid, d in s.groupby("client_id", sort=False):
        sessions = []
        for sess, g in d.groupby("session", sort=True):
            scores = []
            for r in g.itertuples():
                x = {"instrument": r.instrument, "score": float(r.score)}
                if r.instrument == "PHQ-9" and pd.notna(r.item_9):
                    x["items"] = {"9": float(r.item_9)}
                scores.append(x)
            sessions.append({"session": int(sess), "scores": scores})
        clients.append({"client_id": str(cid), "sessions": sessions})
    return {"clients": clients}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                             "serving.service:OnTrack", "--host", "127.0.0.1", "--port",
                             str(port), "--working-dir", str(REPO)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        if proc.poll() is not None:
            raise RuntimeError("bentoml serve exited")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("service not ready")


def http_part(url: str, key: str, big: dict, n: int) -> list[tuple]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    one = json.dumps({"clients": EXAMPLE_INPUT["clients"][:1]}).encode()
    rows = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for path in ("/v1/noop", "/v1/assess"):
            for _ in range(20):
                c.post(path, content=one)  # warm-up
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.post(path, content=one)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            rows.append((f"HTTP {path}, 1 client", n, pct(times, 50), pct(times, 99)))
        body = json.dumps(big).encode()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = c.post("/v1/assess", content=body)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text[:500]
        rows.append((f"HTTP /v1/assess, {len(big['clients']):,} clients "
                     f"({len(body) / 1e6:.1f} MB)", 5, pct(times, 50), max(times) * 1000))
    return rows


def inprocess_part(big: dict, repeats: int = 3) -> list[tuple]:
    from serving.schemas import AssessRequest, to_frames
    from serving.service import OnTrack

    svc = OnTrack.inner()  # the plain class: __init__ loads the bundle from the registry
    body = json.dumps(big).encode()
    req = AssessRequest.model_validate_json(body)
    frames = to_frames(req)
    n = len(big["clients"])
    rows = []
    for label, fn in (
        ("in-process: parse + validate + assess + audit", lambda: svc.run(
            AssessRequest.model_validate_json(body), "bench")),
        ("in-process: Bundle.assess only", lambda: svc.bundle.assess(
            frames.sessions, frames.covariates)),
        ("in-process: check_sessions only", lambda: __import__(
            "features.contract").contract.check_sessions(frames.sessions)),
    ):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        rows.append((label, n, t * 1000, n / t))
    one = AssessRequest.model_validate_json(json.dumps({"clients": EXAMPLE_INPUT["clients"][:1]}))
    svc.run(one, "bench")
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        svc.run(one, "bench")
        times.append(time.perf_counter() - t0)
    rows.append(("in-process: whole path, 1 client", 1, pct(times, 50), 1 / statistics.median(
        times)))
    return rows


def size_part(cohort_dir: Path) -> list[tuple]:
    import warnings

    from features.contract import load_cohort
    from models.risk import GBMRisk
    from training.pipeline import instrument_rows

    cohort = load_cohort(cohort_dir)
    rows = instrument_rows(cohort, ["PHQ-9"])["PHQ-9"]
    out = []
    X = rows.X.iloc[:2000]
    for n_est, leaves, depth in ((150, 15, 5), (100, 7, 3), (60, 7, 3), (300, 31, 8)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = GBMRisk(n_estimators=n_est, num_leaves=leaves, max_depth=depth).fit(
                rows.X, rows.failed, groups=rows.groups)
        M = m.transform_features(X)
        booster = m.booster_
        booster.predict(M[:1], pred_contrib=True, num_threads=1)
        t0 = time.perf_counter()
        for i in range(200):
            booster.predict(M[i:i + 1], pred_contrib=True, num_threads=1)
        one = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        booster.predict(M, pred_contrib=True, num_threads=1)
        per_row = (time.perf_counter() - t0) / len(M)
        out.append((f"{n_est} trees x {leaves} leaves, depth {depth}", one * 1e6,
                    per_row * 1e6, m.cv_scores_["auc"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--skip-sizes", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ontrack-bench-"))
    cohort = make_cohort(tmp / "cohort", n=1500, seed=1)
    t0 = time.perf_counter()
    uri = register(fit_bundle(cohort), tmp / "mlflow")
    console.print(f"bundle fitted and registered in {time.perf_counter() - t0:.1f} s")
    env = {**os.environ, **service_env(tmp, uri), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("ONTRACK_", "BENTOML"))})
    from serving.auth import KeyStore
    from serving.loader import import_to_bentoml
    from serving.settings import ServingSettings

    import_to_bentoml(ServingSettings())
    key = KeyStore(tmp / "keys.sqlite").add("bench")
    big = cohort_request(cohort, args.clients)

    proc, url = start_server(env)
    try:
        http = http_part(url, key, big, args.requests)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    t = Table(title="Service over loopback HTTP (sequential, one client connection)")
    for col in ("request", "n", "p50 ms", "p99 / max ms"):
        t.add_column(col)
    for name, n, p50, p99 in http:
        t.add_row(name, str(n), f"{p50:.2f}", f"{p99:.2f}")
    console.print(t)
    ratio = http[1][2] / http[0][2]
    console.print(f"assess/noop p50 ratio: {ratio:.1f} (target <= 2); assess p99 "
                  f"{http[1][3]:.1f} ms (target < 15); 1,000-client request {http[2][2]:.0f} ms "
                  "(target < 1,000)")

    inproc = inprocess_part(big)
    t = Table(title="In-process (OMP_NUM_THREADS=1, LightGBM num_threads=1)")
    for col in ("path", "clients", "ms", "clients / s"):
        t.add_column(col)
    for name, n, ms, rate in inproc:
        t.add_row(name, f"{n:,}", f"{ms:.1f}", f"{rate:,.0f}")
    console.print(t)

    if not args.skip_sizes:
        t = Table(title="Model size: TreeSHAP cost vs out-of-fold AUC (PHQ-9 failure model)")
        for col in ("booster", "pred_contrib 1 row (us)", "per row in a batch (us)",
                    "OOF AUC"):
            t.add_column(col)
        for name, one, per, auc in size_part(cohort):
            t.add_row(name, f"{one:.0f}", f"{per:.1f}", f"{auc:.3f}")
        console.print(t)


if __name__ == "__main__":
    main()
