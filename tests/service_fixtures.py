"""Shared by the service, web view, flag, EHR and scoring tests: ONE fitted test bundle per
test session (`shared_bundle`: fitted once on a simulated cohort and shared by every xdist
worker through a pickle under the session's base temporary folder), registered in each
module's own temporary MLflow store (``ontrack-not-risk@champion``), and environment for the
service.

Tests may import training/; the service never does.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cloudpickle

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "ontrack-not-risk"


#: The shared test bundle's cohort: simulated, fixed seed (`training.simulate`).
SHARED_CLIENTS, SHARED_SEED = 1200, 3
#: Where `shared_bundle` keeps the fitted bundle; set by tests/conftest.py for the session.
SHARED_DIR_ENV = "ONTRACK_TEST_SHARED_DIR"


def shared_cohort(out: Path) -> Path:
    """The simulated cohort the shared bundle is fitted on (written to ``out``)."""
    from training.simulate import simulate_cohort

    if not (out / "sessions.csv").exists():
        simulate_cohort(SHARED_CLIENTS, seed=SHARED_SEED, oracle_clients=0).write(out, "csv")
    return out


def shared_bundle():
    """The test session's one fitted bundle (PHQ-9 on `shared_cohort`). The first caller in
    any xdist worker fits it under a file lock and pickles it; every other caller loads the
    pickle, so the session fits it once."""
    root = Path(os.environ[SHARED_DIR_ENV])
    root.mkdir(parents=True, exist_ok=True)
    path = root / "bundle.pkl"
    with (root / "bundle.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                bundle = fit_bundle(shared_cohort(root / "cohort"))
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(cloudpickle.dumps(bundle))
                tmp.replace(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return pickle.loads(path.read_bytes())


def shared_cohort_path() -> Path:
    """The folder of the cohort `shared_bundle` was fitted on."""
    shared_bundle()
    return Path(os.environ[SHARED_DIR_ENV]) / "cohort"


def fit_bundle(cohort_dir: Path, gbm: dict | None = None):
    import warnings

    from features.contract import load_cohort
    from models.neighbours import trajectory_matrix
    from training.pipeline import Settings, fit_instrument, instrument_rows, make_bundle

    cohort = load_cohort(cohort_dir)
    rows = instrument_rows(cohort, ["PHQ-9"])["PHQ-9"]
    traj = trajectory_matrix(cohort.sessions, "PHQ-9")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = fit_instrument(cohort, rows, Settings(gbm=gbm or {}), traj)
    models.validation = {"auroc": {"estimate": 0.71, "lo": 0.66, "hi": 0.75},
                         "note": "test fixture figures"}
    card = {"intended_use": "Test fixture: flags clients not on track in routine outcome "
            "monitoring.", "inputs": "PHQ-9 (+ item 9), GAD-7, SRS per session",
            "logic": "LightGBM risk with TreeSHAP drivers", "limits": "synthetic data",
            "date": "2025-01-01"}
    return make_bundle({"PHQ-9": models}, card, {"data": "synthetic test cohort"})


def register(bundle, store: Path) -> str:
    """Log the bundle as the pyfunc, register it and alias it champion; returns the URI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from models.pyfunc import OnTrackModel
    from models.registry import model_requirements

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment: put both
    # back afterwards, so that later tests in this worker keep their own store
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(),
              os.environ.get("MLFLOW_TRACKING_URI"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient(uri, uri)
        exp = client.create_experiment("service-tests",
                                       artifact_location=(store / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=OnTrackModel(bundle),
                code_paths=[str(REPO / "features"), str(REPO / "models")],
                pip_requirements=model_requirements())
        mv = mlflow.register_model(info.model_uri, MODEL_NAME)
        client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        if before[2] is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before[2]
    return uri


def service_env(root: Path, tracking_uri: str) -> dict[str, str]:
    return {
        "ONTRACK_TRACKING_URI": tracking_uri,
        "ONTRACK_KEYS_PATH": str(root / "keys.sqlite"),
        "ONTRACK_AUDIT_PATH": str(root / "audit.sqlite"),
        "ONTRACK_AUDIT_SECRET": "test-secret-0123456789abcdef",
        "ONTRACK_BENTOML_HOME": str(root / "bentoml_home"),
        "BENTOML_HOME": str(root / "bentoml_home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "BENTOML_DO_NOT_TRACK": "True",
        # tests and benchmarks call far faster than any clinic; the limit has its own test
        "ONTRACK_RATE_LIMIT_PER_MINUTE": "0",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_service(root: Path, key_name: str, extra_env: dict[str, str] | None = None
                   ) -> Iterator[dict]:
    """Fit and register the test bundle, create a key and run `bentoml serve
    serving.service:OnTrack` on a free port of 127.0.0.1 until the block ends (what
    `ontrack serve` does: the BentoModel is imported into the store first). Yields a dict:
    url, key, log (the server's output), root, proc, env, port (to restart it)."""

    from serving.auth import KeyStore

    uri = register(shared_bundle(), root / "mlflow")
    env = {**os.environ, **service_env(root, uri), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), **(extra_env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    store = KeyStore(root / "keys.sqlite")
    key = store.add(key_name)
    store.close()
    subprocess.run([sys.executable, "-c", "from serving.settings import ServingSettings;"
                    "from serving.loader import import_to_bentoml;"
                    "import_to_bentoml(ServingSettings())"], env=env, check=True,
                   capture_output=True, cwd=REPO, timeout=300)
    port = free_port()
    env.setdefault("ONTRACK_PUBLIC_URL", f"http://127.0.0.1:{port}")
    log_path = root / "server.log"
    proc, url = start_service(env, port, log_path)
    try:
        yield {"url": url, "key": key, "log": log_path, "root": root, "proc": proc, "env": env,
               "port": port}
    finally:
        stop_service(proc)


def start_service(env: dict[str, str], port: int, log_path: Path, wait_for: str = "/readyz"
                  ) -> tuple[subprocess.Popen, str]:
    """`bentoml serve serving.service:OnTrack` on 127.0.0.1:port, its output appended to
    ``log_path``; returns once ``wait_for`` answers 200 (``/livez``: the process is up, ready
    or not). The port must be free (a server left running would answer instead)."""
    import httpx

    with log_path.open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                                 "serving.service:OnTrack", "--host", "127.0.0.1", "--port",
                                 str(port), "--working-dir", str(REPO)],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_service(proc)
            raise RuntimeError("service not ready: " + log_path.read_text()[-3000:])
        try:
            if httpx.get(f"{url}{wait_for}", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def _tree(proc: subprocess.Popen) -> list:
    """The server process and its workers (BentoML starts each worker in its own session,
    so a process group does not hold them)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_service(proc: subprocess.Popen) -> None:
    """SIGKILL to the server and every worker at once: a crash, nothing shuts down cleanly."""
    _kill(_tree(proc))
    proc.wait(timeout=10)


def _kill(procs: list) -> None:
    """SIGKILL to each of ``procs`` still running; returns when they are gone."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM to the server (it stops its workers); SIGKILL to whatever of the tree is left
    after 30 s; returns when none of it runs (so the port is free again)."""
    import psutil

    tree = _tree(proc)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    _, alive = psutil.wait_procs(tree, timeout=10)
    _kill(alive)
    if proc.poll() is None:
        proc.wait(timeout=10)


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore what was there."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sentinel_hits(logs: list[Path], needles: dict[str, str]) -> dict[str, int]:
    """How often each sentinel (name -> regular expression) occurs in the given log files
    (the service's, the CLI's): client ids, scores, item answers and keys sent during a run
    must never be written to a log."""
    import re

    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    return {name: len(re.findall(rx, text)) for name, rx in needles.items()}
