"""Training speed (all four models with cross-validation on 100,000 simulated clients
in under 5 minutes on this 2-core machine).

Run: `uv run python benchmarks/bench_train.py [--clients 100000] [--folds 5]`
Simulates a cohort (no oracle), builds the rows as of sessions 1..6 and runs the grouped
cross-validation of each model (every fitted step refitted in each fold), then the final fit of
the bundle's models. One run; the table prints the wall time of each step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from features.contract import validate_frames
from models.neighbours import trajectory_matrix
from training.dataset import build_rows
from training.metrics import METRICS
from training.pipeline import MODELS, Settings, cross_validate, fit_instrument, split_for_gate
from training.simulate import simulate_cohort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    steps: list[tuple[str, float, str]] = []
    t0 = time.perf_counter()
    sim = simulate_cohort(args.clients, seed=args.seed, oracle_clients=0)
    steps.append(("simulate", time.perf_counter() - t0, ""))
    t0 = time.perf_counter()
    cohort, report = validate_frames(sim.sessions, sim.clients, sim.adaptations)
    assert report.ok
    rows = build_rows(cohort, "PHQ-9")
    dev, _ = split_for_gate(rows)
    traj = trajectory_matrix(cohort.sessions, "PHQ-9")
    steps.append(("validate + features + targets", time.perf_counter() - t0,
                  f"{len(rows):,} rows"))
    settings = Settings(seed=args.seed, n_folds=args.folds)
    y, t = dev.failed, dev.keys["session"].to_numpy()
    total_cv = 0.0
    for name in MODELS:
        t0 = time.perf_counter()
        oof = cross_validate(dev, "failed", [name], settings, traj)
        dt = time.perf_counter() - t0
        total_cv += dt
        m = (t == 3) & np.isfinite(y)
        auc = METRICS["auroc"](y[m], oof[f"p_{name}"].to_numpy()[m])
        steps.append((f"{args.folds}-fold CV: {name}", dt, f"AUROC s3 {auc:.3f}"))
    t0 = time.perf_counter()
    fit_instrument(cohort, dev, settings, traj)
    steps.append(("final fit (bundle models)", time.perf_counter() - t0, ""))
    table = Table(title=f"Training on {args.clients:,} simulated clients "
                  f"({int(np.isfinite(dev.failed).sum()):,} training rows with a known outcome)")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("note")
    for name, dt, note in steps:
        table.add_row(name, f"{dt:.1f}", note)
    table.add_row("all four models, cross-validated", f"{total_cv:.1f}",
                  "target: under 300 s -> " + ("met" if total_cv < 300 else "NOT met"))
    Console().print(table)


if __name__ == "__main__":
    main()
