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


@pytest.fixture(autouse=True)
def _mlflow_uri_put_back():
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into the environment, where it wins
    over ONTRACK_MLFLOW_DIR (`models.registry.tracking_uri`): a test that points MLflow at a
    store of its own must not leave later tests in the same worker (or module-scoped fixtures
    set up before their function fixtures) writing there. Put the variable back after each."""
    import sys

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") == before:
        return
    if "mlflow" in sys.modules:  # MLflow's process-wide setting and the variable together
        import mlflow

        mlflow.set_tracking_uri(before)  # None clears both
    elif before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


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
    """A small clinic on CORE-10 (not PHQ-9) with at most 5 assessments per client: the
    simulator's PHQ-9 courses re-expressed on CORE-10's 0-40 range (score * 40 / 27, rounded),
    its risk item (item 6) from PHQ-9 item 9, the clients' end status as simulated."""
    import shutil

    from training.simulate import simulate_cohort

    sim = out.parent / f"{out.name}-simulated"
    simulate_cohort(n_clients, seed=seed, oracle_clients=0).write(sim, "csv")
    sessions = pd.read_csv(sim / "sessions.csv")
    phq = sessions[(sessions["instrument"] == "PHQ-9")].copy()
    phq = phq[phq.groupby("client_id").cumcount() < 5]
    core = pd.DataFrame({"client_id": phq["client_id"], "session": phq["session"],
                         "instrument": "CORE-10",
                         "score": np.rint(phq["score"] * 40 / 27).astype(int),
                         "date": phq["date"], "clinic_id": phq["clinic_id"],
                         "item_6": phq["item_9"].astype(int)})
    clients = pd.read_csv(sim / "clients.csv")[["client_id", "end_status"]]
    shutil.rmtree(sim)
    out.mkdir(parents=True, exist_ok=True)
    core.to_csv(out / "sessions.csv", index=False)
    clients.to_csv(out / "clients.csv", index=False)
    return out


#: Long tests that need no module-scoped fixture, run first so that two workers finish together
#: (started last, one of them keeps a worker busy after the other has run out of tests).
LONG_FIRST = (
    "tests/test_smoke.py::test_main_flow_on_a_small_cohort_then_the_example_call",
    "tests/test_simulator.py::test_oracle_is_calibrated_and_not_beaten_by_a_fitted_model",
    "tests/test_fuzz.py::test_the_openapi_document_holds_for_generated_requests",
    "tests/test_training.py::test_nhs_paired_target_is_a_training_choice",
)


def pytest_collection_modifyitems(config, items):
    rank = {nodeid: k for k, nodeid in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))  # stable: the rest keep order
