"""What the alliance rating of the assessed session is worth to the risk model.

An alliance rating (SRS, WAI-SR) is given at the END of its session; the assessment a therapist
sees at session t is usually made at its start. By default the features use only the alliance
ratings of earlier sessions (`features.pointintime.point_in_time(alliance_lag=True)`). This
compares the gradient-boosted risk model trained and cross-validated both ways on the same rows
and folds (5-fold, grouped by client, the gate hold-out left out): AUROC per session with 95%
client-bootstrap intervals and the paired difference at session 3.

Run: `uv run python benchmarks/bench_alliance_timing.py [--clients 20000] [--seed 1]`
or `--data PATH` for a cohort folder.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from features.contract import load_cohort, validate_frames
from training.dataset import build_rows
from training.evaluate import comparison_table
from training.metrics import paired_difference
from training.pipeline import Settings, cross_validate, split_for_gate
from training.simulate import simulate_cohort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    if args.data is not None:
        cohort = load_cohort(args.data)
        source = str(args.data)
    else:
        sim = simulate_cohort(args.clients, seed=args.seed, oracle_clients=0)
        cohort, report = validate_frames(sim.sessions, sim.clients)
        assert report.ok
        source = f"{args.clients:,} simulated clients, seed {args.seed}"
    settings = Settings(seed=args.seed)
    out, oof = {}, {}
    for lag in (True, False):
        t0 = time.perf_counter()
        dev, _ = split_for_gate(build_rows(cohort, "PHQ-9", alliance_lag=lag))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            o = cross_validate(dev, "failed", ["gbm"], settings, None)
        oof[lag] = (dev, o["p_gbm"].to_numpy())
        out[lag] = (comparison_table(dev, o, n_boot=args.bootstrap, seed=args.seed),
                    time.perf_counter() - t0)
    dev, p_lag = oof[True]
    _, p_now = oof[False]
    t = dev.keys["session"].to_numpy()
    table = Table(title=f"Gradient boosting, AUROC by session ({source}; 5-fold CV grouped "
                  "by client)")
    for c in ("session", "rows", "before the session's rating (default)",
              "with the session's rating", "difference"):
        table.add_column(c, justify="right")
    for s in range(1, 7):
        a = out[True][0].query("session == @s")
        b = out[False][0].query("session == @s")
        if not len(a) or not len(b):
            continue
        m = (t == s) & np.isfinite(dev.failed) & np.isfinite(p_lag) & np.isfinite(p_now)
        d = paired_difference(dev.failed[m], p_now[m], p_lag[m], groups=dev.groups[m],
                              n_boot=args.bootstrap, seed=args.seed)
        a, b = a.iloc[0], b.iloc[0]
        table.add_row(str(s), f"{int(a['n']):,}",
                      f"{a['auroc']:.3f} [{a['auroc_lo']:.3f}, {a['auroc_hi']:.3f}]",
                      f"{b['auroc']:.3f} [{b['auroc_lo']:.3f}, {b['auroc_hi']:.3f}]",
                      f"{d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]")
    Console(width=160).print(table)
    print(f"cross-validation: {out[True][1]:.0f} s (default) and {out[False][1]:.0f} s")


if __name__ == "__main__":
    main()
