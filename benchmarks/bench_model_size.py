"""Model size vs explanation cost and accuracy (TreeSHAP costs about
trees x leaves x depth^2, so the size is a latency decision; record its accuracy cost).

Run: `uv run python benchmarks/bench_model_size.py [--clients 20000]`
Fits the not-on-track risk model at several sizes on the same simulated cohort (the gate hold-out is
the test set), then times LightGBM's native contributions (= TreeSHAP) with one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from features.contract import validate_frames
from models.risk import GBMRisk
from training.dataset import build_rows
from training.metrics import bootstrap
from training.pipeline import split_for_gate
from training.simulate import simulate_cohort

SIZES = [(150, 15, 5), (100, 7, 3), (60, 7, 3), (300, 31, 8)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    sim = simulate_cohort(args.clients, seed=args.seed, oracle_clients=0)
    cohort, report = validate_frames(sim.sessions, sim.clients)
    assert report.ok
    dev, hold = split_for_gate(build_rows(cohort, "PHQ-9"))
    t = hold.keys["session"].to_numpy()
    m3 = (t == 3) & np.isfinite(hold.failed)
    table = Table(title=f"Not-on-track risk model size, {args.clients:,} simulated clients "
                  f"(test: {int(m3.sum()):,} held-out rows at session 3)")
    for c in ("trees x leaves, depth", "AUROC s3 [95% CI]", "Brier s3", "SHAP us/row (batch)",
              "SHAP us (1 row)", "fit s"):
        table.add_column(c, justify="right")
    X1 = hold.X.iloc[[0]]
    for trees, leaves, depth in SIZES:
        t0 = time.perf_counter()
        m = GBMRisk(n_estimators=trees, num_leaves=leaves, max_depth=depth, n_jobs=2).fit(
            dev.X, dev.failed, groups=dev.groups)
        fit_s = time.perf_counter() - t0
        m.set_params(n_jobs=1)
        p = m.predict_proba(hold.X)[:, 1]
        est = bootstrap(hold.failed[m3], p[m3], metrics=("auroc", "brier"),
                        groups=hold.groups[m3], n_boot=200)
        M = m.transform_features(hold.X)
        batch = []
        for _ in range(5):
            t0 = time.perf_counter()
            m.contributions_from_matrix(M)
            batch.append((time.perf_counter() - t0) / len(M) * 1e6)
        M1 = m.transform_features(X1)
        single = []
        for _ in range(200):
            t0 = time.perf_counter()
            m.contributions_from_matrix(M1)
            single.append((time.perf_counter() - t0) * 1e6)
        table.add_row(f"{trees} x {leaves}, {depth}", est["auroc"].fmt(), f"{est['brier'].value:.4f}",
                      f"{statistics.median(batch):.1f}", f"{statistics.median(single):.0f}",
                      f"{fit_s:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
