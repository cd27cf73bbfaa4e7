"""MLflow set-up: the embedded default store, provenance, and a few logging helpers.

Default: a SQLite tracking store and an artifact folder with an absolute root, both under the
repository's `mlflow/` folder (configuration and the local store only; never a `.py` file
there). `MLFLOW_TRACKING_URI` overrides the store; point it at a shared tracking server backed by
PostgreSQL to share runs and the registry across a team (see docs/mlflow.md).

Nothing here runs at import time: entry points call `configure()`.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

# the store's set-up lives with the one loader (serving's batch scoring uses it too)
from models.registry import (  # noqa: F401
    MODEL_NAME,
    REPO_ROOT,
    artifact_root,
    configure,
    store_dir,
    tracking_uri,
)
from models.registry import TRAINING_EXPERIMENT as EXPERIMENT  # noqa: F401


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
