"""Shared by tests/test_webview*.py and docs/make_screenshots.py: a small simulated demo cohort;
one client's rows of a sessions frame as a ``POST /v1/assess`` body (to compare the web view
with the API); a real `bentoml serve` on a free local port; Debian Chromium's flags."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def write_demo(out: Path, n: int = 120, seed: int = 5) -> Path:
    """A simulated cohort (training.simulate) in the contract's format; returns sessions.csv."""
    from training.simulate import simulate_cohort

    simulate_cohort(n, seed=seed, oracle_clients=0).write(out, "csv")
    return out / "sessions.csv"


def api_body(sessions: pd.DataFrame, client_id: str) -> dict[str, Any]:
    """The client's rows as the API's request (items and dates included when present)."""
    rows = sessions[sessions["client_id"] == client_id].sort_values(["session", "instrument"])
    items = [c for c in rows.columns if c.startswith("item_") and c[5:].isdigit()]
    out = []
    for s, g in rows.groupby("session", sort=True):
        scores = []
        for r in g.itertuples(index=False):
            d = r._asdict()
            x = {"instrument": str(d["instrument"]), "score": float(d["score"])}
            given = {c[5:]: float(d[c]) for c in items if pd.notna(d[c])}
            if given:
                x["items"] = given
            scores.append(x)
        sess: dict[str, Any] = {"session": int(s), "scores": scores}
        if "date" in g.columns and pd.notna(g["date"].iloc[0]):
            sess["date"] = pd.Timestamp(g["date"].iloc[0]).date().isoformat()
        out.append(sess)
    return {"clients": [{"client_id": str(client_id), "sessions": out}]}


# ------------------------------------------------------------------------------------------
# A real server and a local-only Chromium (the browser tests and docs/make_screenshots.py)
# ------------------------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--no-default-browser-check"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(root: Path, demo_clients: int = 40, demo_n: int = 80):
    """Fit and register the test bundle, write a demo cohort, create a key and run
    `bentoml serve serving.service:OnTrack` on a free port of 127.0.0.1 until the block ends.
    Yields a dict: url, key, demo (sessions.csv), log (server output)."""
    import httpx

    from serving.auth import KeyStore
    from tests.service_fixtures import REPO, fit_bundle, make_cohort, register, service_env

    uri = register(fit_bundle(make_cohort(root / "cohort", n=1200, seed=3)), root / "mlflow")
    demo = write_demo(root / "demo", n=demo_n, seed=5)
    env = {**os.environ, **service_env(root, uri), "OMP_NUM_THREADS": "1",
           "ONTRACK_DEMO_PATH": str(demo), "ONTRACK_DEMO_CLIENTS": str(demo_clients),
           "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    store = KeyStore(root / "keys.sqlite")
    key = store.add("clinic-browser")
    store.close()
    subprocess.run([sys.executable, "-c", "from serving.settings import ServingSettings;"
                    "from serving.loader import import_to_bentoml;"
                    "import_to_bentoml(ServingSettings())"], env=env, check=True,
                   capture_output=True, cwd=REPO, timeout=300)
    port = _free_port()
    log_path = root / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                                 "serving.service:OnTrack", "--host", "127.0.0.1", "--port",
                                 str(port), "--working-dir", str(REPO)],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("service not ready: " + log_path.read_text()[-3000:])
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            yield {"url": url, "key": key, "demo": demo, "log": log_path}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
