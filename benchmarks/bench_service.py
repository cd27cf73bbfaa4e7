"""Benchmark of the prediction service (serving/) on the bundle `make run` trains: printed tables.

    .venv/bin/python benchmarks/bench_service.py                 # all parts (~5 minutes)
    .venv/bin/python benchmarks/bench_service.py --requests 200 --skip-sizes
    .venv/bin/python benchmarks/bench_service.py --store mlflow --cohort data/demo

The bundle is the champion of an MLflow store that `make run` (`ontrack demo`) filled: by
default the repository's `mlflow/` when it holds one, otherwise `ontrack demo --no-serve` is
run first into a temporary folder (the same command, cohort and settings as `make run`). The
service is started with `bentoml serve` on a free loopback port (OMP_NUM_THREADS=1), beside a
peer: a plain BentoML service returning the same booster's probability and TreeSHAP
contributions for one row (benchmarks/peer_service.py). Then, in one run:

1. **HTTP, one client** (the first client of EXAMPLE_INPUT, explained): p50/p99 over N sequential
   requests, against `/v1/noop` in the same service behind the same bearer-key auth, posting
   the same body, and against the peer. Targets: assess p50 <= 2 x noop p50, p99 < 15 ms,
   p50 <= peer p50 + 1 ms.
2. **HTTP, eight concurrent single-client callers** for a fixed time: assessments per second
   (target >= 400 on 2 cores) against no-ops per second.
3. **HTTP, 1,000 clients in one request** (histories from the cohort). Target < 1 s.
4. **In-process** (num_threads=1): the service's whole request path (`OnTrack.run`) and
   `Bundle.assess` alone, for 1,000 clients in one call and for one client. Targets: >= 5,000
   explained clients per second in batches, >= 1,000 per second one at a time. Then eight
   threads calling `OnTrack.run` with one client each, through the batcher
   (`serving.batching`) and with each thread calling the bundle itself.
5. **Model size**: TreeSHAP cost (`pred_contrib`, microseconds per row, one thread) and the
   out-of-fold AUC of the not-on-track risk model for a few sizes (the accuracy cost of a reduction).
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
from tests.service_fixtures import service_env  # noqa: E402

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


def start_server(env: dict, target: str = "serving.service:OnTrack",
                 workdir: Path = REPO) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", target, "--host",
                             "127.0.0.1", "--port", str(port), "--working-dir", str(workdir)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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


def peer_row() -> list[float | None]:
    """The not-on-track risk model's input row for the first example client (what the peer scores)."""
    from features.pointintime import point_in_time
    from serving.loader import load
    from serving.schemas import AssessRequest, to_frames
    from serving.settings import ServingSettings

    bundle = load(ServingSettings()).bundle
    req = AssessRequest.model_validate_json(json.dumps({"clients": EXAMPLE_INPUT["clients"][:1]}))
    X = point_in_time(to_frames(req).sessions, instrument=bundle.instruments[0], at=None).X
    M = next(iter(bundle.models.values())).failure.transform_features(X)
    return [None if not np.isfinite(v) else float(v) for v in M[0]]


def timed(client: httpx.Client, path: str, body: bytes, n: int) -> list[float]:
    for _ in range(20):
        client.post(path, content=body)  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post(path, content=body)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text[:300]
    return times


def _caller(url: str, headers: dict, path: str, body: bytes, stop: float,
            out: list[tuple[float, int]]) -> None:
    """One caller: its own connection, one request after the other until ``stop``."""
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        c.post(path, content=body)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = c.post(path, content=body)
            out.append((time.perf_counter() - t0, r.status_code))


def run_threads(work: list[tuple]) -> float:
    """Start one thread per (function, args), wait for all; the wall time in seconds."""
    import threading

    threads = [threading.Thread(target=f, args=a) for f, a in work]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def concurrent_part(url: str, key: str, seconds: float, callers: int = 8) -> list[tuple]:
    """Requests per second with ``callers`` threads, each with its own connection, posting
    one client at a time for ``seconds``."""

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    one = json.dumps({"clients": EXAMPLE_INPUT["clients"][:1]}).encode()
    rows = []
    for path in ("/v1/noop", "/v1/assess"):
        results: list[list[tuple[float, int]]] = [[] for _ in range(callers)]
        stop = time.perf_counter() + seconds
        wall = run_threads([(_caller, (url, headers, path, one, stop, results[i]))
                            for i in range(callers)])
        done = [x for xs in results for x in xs]
        lat = [d for d, _ in done]
        rows.append((f"HTTP {path}, {callers} callers", len(done), len(done) / wall,
                     pct(lat, 50), pct(lat, 99), sum(code != 200 for _, code in done)))
    return rows


def http_part(url: str, key: str, big: dict, n: int, peer_url: str | None = None
              ) -> list[tuple]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    one = json.dumps({"clients": EXAMPLE_INPUT["clients"][:1]}).encode()
    rows = []
    if peer_url is not None:
        body = json.dumps({"row": peer_row()}).encode()
        with httpx.Client(base_url=peer_url, timeout=60,
                          headers={"Content-Type": "application/json"}) as c:
            times = timed(c, "/predict", body, n)
        rows.append(("HTTP peer /predict (LightGBM + TreeSHAP), 1 row", n, pct(times, 50),
                     pct(times, 99)))
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for path in ("/v1/noop", "/v1/assess"):
            times = timed(c, path, one, n)
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
    for _ in range(200):
        t0 = time.perf_counter()
        svc.run(one, "bench")
        times.append(time.perf_counter() - t0)
    rows.append(("in-process: whole path, 1 client", 1, pct(times, 50), 1 / statistics.median(
        times)))
    f1 = to_frames(one)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        svc.bundle.assess(f1.sessions, f1.covariates)
        times.append(time.perf_counter() - t0)
    rows.append(("in-process: Bundle.assess only, 1 client", 1, pct(times, 50),
                 1 / statistics.median(times)))
    return rows


def threaded_part(callers: int = 8, seconds: float = 8.0) -> list[tuple]:
    """In-process, ``callers`` threads each calling the service's whole path (`OnTrack.run`)
    with one client, with the batcher and with each thread calling the bundle itself."""

    from serving.schemas import AssessRequest
    from serving.service import OnTrack

    svc = OnTrack.inner()
    body = json.dumps({"clients": EXAMPLE_INPUT["clients"][:1]}).encode()
    batcher = svc.batcher

    class Direct:  # every request thread calls the bundle itself (no batching)
        calls = 0

        def assess(self, sessions, covariates=None, **kw):
            return svc.bundle.assess(sessions, covariates, horizon=svc.settings.horizon, **kw)

    rows = []
    for label, via in (("each thread calls the bundle", Direct()),
                       ("through the batcher", batcher)):
        svc.batcher = via
        done = [0] * callers
        stop = time.perf_counter() + seconds
        calls0 = via.calls

        def call(i: int, done: list[int], stop: float) -> None:
            while time.perf_counter() < stop:
                svc.run(AssessRequest.model_validate_json(body), "bench")
                done[i] += 1

        wall = run_threads([(call, (i, done, stop)) for i in range(callers)])
        n = sum(done)
        per_call = n / (via.calls - calls0) if via.calls > calls0 else 1.0
        rows.append((f"in-process, {callers} threads, 1 client each: {label}", n, n / wall,
                     per_call))
    svc.batcher = batcher
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


def champion_store(store: Path | None, cohort: Path | None, tmp: Path) -> tuple[Path, Path]:
    """(MLflow store folder, cohort folder) of a `make run` champion: the given ones, the
    repository's when it has a champion, else trained now with `ontrack demo --no-serve`."""
    from mlflow.tracking import MlflowClient

    def has_champion(folder: Path) -> bool:
        db = folder / "mlflow.db"
        if not db.exists():
            return False
        uri = f"sqlite:///{db.resolve()}"
        try:
            MlflowClient(uri, uri).get_model_version_by_alias("ontrack-not-risk", "champion")
        except Exception:  # no registered model or alias
            return False
        return True

    if store is not None:
        return store, cohort or REPO / "data" / "demo"
    if has_champion(REPO / "mlflow") and (REPO / "data" / "demo" / "sessions.csv").exists():
        return REPO / "mlflow", cohort or REPO / "data" / "demo"
    store, cohort = tmp / "mlflow", tmp / "demo"
    console.print("no `make run` champion in mlflow/: training one now (ontrack demo "
                  "--no-serve, about 1-2 minutes)")
    env = {**os.environ, "ONTRACK_MLFLOW_DIR": str(store), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "training.cli", "demo", "--no-serve", "--out",
                    str(cohort)], env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return store, cohort


def service_setup(tmp: Path, key_name: str, store: Path | None = None,
                  cohort: Path | None = None, extra: dict | None = None
                  ) -> tuple[dict, str, Path, Path]:
    """What every service benchmark needs: the `make run` champion's store (`champion_store`),
    the service's environment (also set in this process, for the in-process parts), the
    BentoML import `ontrack serve` does, and a key. Returns (env, key, store, cohort)."""
    store, cohort = champion_store(store, cohort, tmp)
    uri = f"sqlite:///{(store / 'mlflow.db').resolve()}"
    console.print(f"bundle: ontrack-not-risk@champion in {store}")
    env = {**os.environ, **service_env(tmp, uri), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), **(extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("ONTRACK_", "BENTOML"))})
    from serving.auth import KeyStore
    from serving.loader import import_to_bentoml
    from serving.settings import ServingSettings

    import_to_bentoml(ServingSettings())
    return env, KeyStore(tmp / "keys.sqlite").add(key_name), store, cohort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=15.0,
                    help="Duration of each concurrent run.")
    ap.add_argument("--store", type=Path, default=None,
                    help="MLflow store folder with a `make run` champion (default: mlflow/).")
    ap.add_argument("--cohort", type=Path, default=None,
                    help="The cohort folder it was trained on (default: data/demo).")
    ap.add_argument("--skip-sizes", action="store_true")
    ap.add_argument("--concurrent-only", action="store_true",
                    help="Only the concurrent callers (one and two workers).")
    ap.add_argument("--inprocess-only", action="store_true",
                    help="Only the in-process parts (no server).")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ontrack-bench-"))
    env, key, store, cohort = service_setup(tmp, "bench", args.store, args.cohort)
    big = cohort_request(cohort, args.clients)

    if args.inprocess_only:
        inprocess_tables(big)
        return
    if args.concurrent_only:
        proc, url = start_server(env)
        try:
            http, conc = [], concurrent_part(url, key, args.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    else:
        peer, peer_url = start_server(env, "peer_service:Peer", REPO / "benchmarks")
        proc, url = start_server(env)
        try:
            http = http_part(url, key, big, args.requests, peer_url)
            conc = concurrent_part(url, key, args.seconds)
        finally:
            for p in (proc, peer):
                p.terminate()
                p.wait(timeout=30)
    # the same service with one worker per core (ONTRACK_WORKERS, as `ontrack serve` sets it)
    proc, url = start_server({**env, "BENTOML_CONFIG_OPTIONS": "services.ontrack.workers=2"})
    try:
        conc += [(name.replace("callers", "callers, 2 workers"), *rest)
                 for name, *rest in concurrent_part(url, key, args.seconds)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    if http:
        sequential_table(http)
    concurrent_table(conc, args.seconds)
    if args.concurrent_only:
        return
    inprocess_tables(big)
    if not args.skip_sizes:
        sizes_table(cohort)


def sequential_table(http: list[tuple]) -> None:
    t = Table(title="Service over loopback HTTP (sequential, one client connection)")
    for col in ("request", "n", "p50 ms", "p99 / max ms"):
        t.add_column(col)
    for name, n, p50, p99 in http:
        t.add_row(name, str(n), f"{p50:.2f}", f"{p99:.2f}")
    console.print(t)
    peer_p50, noop, assess, batch = http[0][2], http[1], http[2], http[3]
    console.print(f"assess/noop p50 ratio: {assess[2] / noop[2]:.1f} (target <= 2); assess p99 "
                  f"{assess[3]:.1f} ms (target < 15); assess p50 - peer p50: "
                  f"{assess[2] - peer_p50:+.1f} ms (target <= +1); 1,000-client request "
                  f"{batch[2]:.0f} ms (target < 1,000)")


def concurrent_table(conc: list[tuple], seconds: float) -> None:
    t = Table(title=f"Service over loopback HTTP, concurrent single-client callers "
                    f"({seconds:g} s each)")
    for col in ("requests", "done", "per s", "p50 ms", "p99 ms", "not 200"):
        t.add_column(col)
    for name, done, rate, p50, p99, bad in conc:
        t.add_row(name, f"{done:,}", f"{rate:,.0f}", f"{p50:.1f}", f"{p99:.1f}", str(bad))
    console.print(t)
    console.print(f"explained assessments per second with 8 callers: {conc[1][2]:,.0f} with "
                  f"one worker, {conc[3][2]:,.0f} with two (target >= 400)")


def inprocess_tables(big: dict) -> None:
    inprocess_table(inprocess_part(big))
    t = Table(title="In-process, concurrent callers (threads of one process)")
    for col in ("path", "requests", "per s", "requests per assess call"):
        t.add_column(col)
    for name, n, rate, per_call in threaded_part():
        t.add_row(name, f"{n:,}", f"{rate:,.0f}", f"{per_call:.1f}")
    console.print(t)


def inprocess_table(inproc: list[tuple]) -> None:
    t = Table(title="In-process (OMP_NUM_THREADS=1, LightGBM num_threads=1)")
    for col in ("path", "clients", "ms", "clients / s"):
        t.add_column(col)
    for name, n, ms, rate in inproc:
        t.add_row(name, f"{n:,}", f"{ms:.1f}", f"{rate:,.0f}")
    console.print(t)
    console.print("targets: >= 5,000 clients/s in batches of 1,000+, >= 1,000/s one client "
                  "at a time")


def sizes_table(cohort: Path) -> None:
    t = Table(title="Model size: TreeSHAP cost vs out-of-fold AUC (PHQ-9 not-on-track risk "
                    "model)")
    for col in ("booster", "pred_contrib 1 row (us)", "per row in a batch (us)", "OOF AUC"):
        t.add_column(col)
    for name, one, per, auc in size_part(cohort):
        t.add_row(name, f"{one:.0f}", f"{per:.1f}", f"{auc:.3f}")
    console.print(t)


if __name__ == "__main__":
    main()
