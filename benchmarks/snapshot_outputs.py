"""Snapshot of what OnTrack computes, to show that a change of structure changed no output.

Simulates a development cohort and a 5,000-client cohort (fixed seeds), trains with a fixed
seed into a throwaway MLflow store, then assesses every client of the 5,000 as of every
session from 2 on. Writes ``metrics.json`` (the training run's metrics and parameters) and
``assessments.jsonl`` (every assessment as the service returns it) under ``--out`` and prints
one digest per file and section. Run it before and after a change and compare the digests
(or ``diff`` the files).

    uv run python benchmarks/snapshot_outputs.py --out /tmp/snapshot
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--train-clients", type=int, default=2000)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ontrack-snapshot-"))
    os.environ["ONTRACK_MLFLOW_DIR"] = str(work / "mlflow")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import mlflow
    from mlflow.tracking import MlflowClient

    from features.contract import load_cohort
    from training.pipeline import Settings
    from training.simulate import simulate_cohort
    from training.train import train

    dev_dir, new_dir = work / "dev", work / "new"
    simulate_cohort(args.train_clients, seed=5, oracle_clients=200).write(dev_dir, "csv")
    simulate_cohort(args.clients, seed=23, oracle_clients=0).write(new_dir, "csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(load_cohort(dev_dir), dev_dir, Settings(seed=0), n_boot=50)
    run = MlflowClient().get_run(result.run_id)
    timing = ("seconds", "_time", "duration")  # wall-clock figures differ run to run
    metrics = {"metrics": {k: v for k, v in sorted(run.data.metrics.items())
                           if not any(t in k for t in timing)},
               "params": dict(sorted(run.data.params.items())),
               "reports": sorted(result.reports)}
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))

    from models.registry import MODEL_NAME, load_bundle

    bundle = load_bundle(f"models:/{MODEL_NAME}/{result.version}")
    cohort = load_cohort(new_dir)
    sessions, covariates = cohort.sessions, cohort.clients
    with (args.out / "assessments.jsonl").open("w") as fh:
        for as_of in range(2, int(sessions["session"].max()) + 1):
            upto = sessions[sessions["session"] <= as_of]
            have = upto.groupby("client_id")["session"].max()
            ids = have.index[have == as_of]
            if not len(ids):
                continue
            part = upto[upto["client_id"].isin(ids)]
            for a in bundle.assess(part, covariates, horizon=4):
                fh.write(json.dumps({"as_of": as_of, **a.model_dump(mode="json")},
                                    sort_keys=True) + "\n")
    n = sum(1 for _ in (args.out / "assessments.jsonl").open())
    print("| file | digest | size |\n|---|---|---|")
    print(f"| metrics.json | {_digest(args.out / 'metrics.json')} | "
          f"{len(metrics['metrics'])} metrics |")
    print(f"| assessments.jsonl | {_digest(args.out / 'assessments.jsonl')} | "
          f"{n} assessments |")
    mlflow.end_run()


if __name__ == "__main__":
    main()
