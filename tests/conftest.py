"""Shared fixtures: simulated cohorts and a private MLflow store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session", autouse=True)
def _shared_test_bundle_dir(tmp_path_factory) -> Path:
    """One folder for the whole run, shared by the xdist workers (their base temporary
    folders have a common parent): `tests.service_fixtures.shared_bundle` keeps the session's
    fitted bundle there."""
    from tests.service_fixtures import SHARED_DIR_ENV

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    os.environ[SHARED_DIR_ENV] = str(root)
    return root


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """A throwaway SQLite MLflow store for the whole test session (never the repo's)."""
    store = tmp_path_factory.mktemp("mlflow")
    os.environ["ONTRACK_MLFLOW_DIR"] = str(store)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return store


@pytest.fixture(scope="session")
def sim_cohort_dir(tmp_path_factory) -> Path:
    """A simulated cohort of 2,000 clients (with oracle values for 300), written once."""
    from training.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("sim2000")
    simulate_cohort(2000, seed=11, oracle_clients=300).write(out, "csv")
    return out


def small_other_instrument_cohort(out: Path, n_clients: int, seed: int = 5) -> Path:
    """Clients on CORE-10 (not PHQ-9) with 4-5 weekly assessments, as a small clinic has."""
    rng = np.random.default_rng(seed)
    rows, clients = [], []
    for i in range(n_clients):
        cid = f"S{i:04d}"
        intake = int(rng.integers(12, 36))
        slope = rng.normal(-4.0, 3.5)
        n = int(rng.integers(4, 6))
        for s in range(1, n + 1):
            score = int(np.clip(round(intake + slope * np.log(s) + rng.normal(0, 2.5)), 0, 40))
            rows.append((cid, s, "CORE-10", score, f"c{i % 4}", int(rng.random() < 0.04)))
        clients.append((cid, "finished" if rng.random() < 0.8 else "dropout"))
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["client_id", "session", "instrument", "score", "clinic_id",
                                "item_6"]).to_csv(out / "sessions.csv", index=False)
    pd.DataFrame(clients, columns=["client_id", "end_status"]).to_csv(out / "clients.csv",
                                                                       index=False)
    return out
