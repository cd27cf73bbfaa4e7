"""MLflow set-up: the embedded default store, provenance, and a few logging helpers.

Default: a SQLite tracking store and an artifact folder with an absolute root, both under the
repository's `mlflow/` folder (configuration and the local store only; never a `.py` file
there). `MLFLOW_TRACKING_URI` overrides the store; point it at a shared tracking server backed by
PostgreSQL to share runs and the registry across a team (see docs/mlflow.md).

Nothing here runs at import time: entry points call `configure()`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from models.registry import MODEL_NAME, REPO_ROOT, store_dir, tracking_uri  # noqa: F401

EXPERIMENT = "ontrack-not-on-track"


def artifact_root(store: Path | None = None) -> str:
    return ((store or store_dir()).resolve() / "artifacts").as_uri()


def configure(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists with an absolute artifact
    root. Returns the experiment id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        kwargs = {} if not uri.startswith("sqlite") else {"artifact_location": artifact_root()}
        experiment_id = client.create_experiment(experiment, **kwargs)
    else:
        experiment_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def file_sha256(paths: list[Path]) -> str:
    """SHA-256 over the bytes of the given files (sorted by name)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def data_sha256(path: Path) -> str:
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix in {".csv", ".parquet"}
                   and p.stem != "truth") if path.is_dir() else [path]
    return file_sha256(files)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
