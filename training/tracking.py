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
import warnings
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


def evaluation_dataset(rows_by_instrument: dict, name: str, source: str):
    """An MLflow dataset (`mlflow.data`) for the rows a set of metrics was measured on:
    instrument, session, the outcome and a hash of the client id per row (never the id). Its
    digest identifies exactly these rows; the tracking store keeps the digest, the column
    schema and the row count, not the values."""
    import mlflow.data
    import pandas as pd

    frames = [pd.DataFrame({
        "instrument": inst,
        "client_hash": pd.util.hash_array(rows.keys["client_id"].to_numpy(dtype=object),
                                          categorize=False).astype("int64"),
        "session": rows.keys["session"].to_numpy(dtype="int64"),
        "outcome": rows.failed}) for inst, rows in rows_by_instrument.items()]
    frame = pd.concat(frames, ignore_index=True)
    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.filterwarnings("ignore", message="The specified dataset source")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        return mlflow.data.from_pandas(frame, source=source, name=name, targets="outcome")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
