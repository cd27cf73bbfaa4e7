"""Comparison tables from out-of-fold predictions: per model and session, with intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.dataset import TrainingRows
from training.metrics import at_threshold, bootstrap, net_benefit

#: Display names of the compared models (tables, plots, the model card).
LABELS = {"expected_response": "Expected response (Finch/Lambert)",
          "neighbours": "Nearest neighbours (Trier)", "gbm": "Gradient boosting (LightGBM)",
          "logistic": "Logistic regression", "oracle": "Bayes oracle (simulation truth)"}
SESSIONS = (1, 2, 3, 4, 5, 6)


def _models_in(oof: pd.DataFrame) -> list[str]:
    return [c[2:] for c in oof.columns if c.startswith("p_")]


def comparison_table(rows: TrainingRows, oof: pd.DataFrame, target: str = "failed",
                     oracle: np.ndarray | None = None, n_boot: int = 200, seed: int = 0,
                     sessions=SESSIONS) -> pd.DataFrame:
    """One row per (model, session t): n, events, AUROC, AUPRC, Brier, calibration slope and
    intercept (each with a client-bootstrap 95% interval), sensitivity, specificity and flag
    rate at the threshold chosen on the training folds."""
    y = rows.failed if target == "failed" else rows.dropped_out
    t = rows.keys["session"].to_numpy()
    groups = rows.groups
    preds = {m: (oof[f"p_{m}"].to_numpy(), oof[f"flag_{m}"].to_numpy()) for m in _models_in(oof)}
    if oracle is not None and target == "failed":
        preds["oracle"] = (oracle, None)
    out = []
    for s in sessions:
        for m, (p, flag) in preds.items():
            mask = (t == s) & np.isfinite(y) & np.isfinite(p)
            if mask.sum() < 20 or len(np.unique(y[mask])) < 2:
                continue
            est = bootstrap(y[mask], p[mask], groups=groups[mask], n_boot=n_boot, seed=seed)
            row = {"model": m, "label": LABELS.get(m, m), "session": s, "n": int(mask.sum()),
                   "events": int(y[mask].sum())}
            for k, e in est.items():
                row[k], row[f"{k}_lo"], row[f"{k}_hi"] = e.value, e.lo, e.hi
            if flag is not None:
                f = flag[mask] >= 0.5
                yy = y[mask].astype(bool)
                row["sensitivity"] = float(f[yy].mean()) if yy.any() else np.nan
                row["specificity"] = float((~f[~yy]).mean()) if (~yy).any() else np.nan
                row["flag_rate"] = float(f.mean())
            out.append(row)
    return pd.DataFrame(out)


def same_rows_vs_oracle(rows: TrainingRows, oof: pd.DataFrame, oracle: np.ndarray, session: int,
                        n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Every model and the oracle on exactly the same rows (those with an oracle value)."""
    y, t = rows.failed, rows.keys["session"].to_numpy()
    mask = (t == session) & np.isfinite(y) & np.isfinite(oracle)
    for m in _models_in(oof):
        mask &= np.isfinite(oof[f"p_{m}"].to_numpy())
    out = []
    for m in [*_models_in(oof), "oracle"]:
        p = oracle if m == "oracle" else oof[f"p_{m}"].to_numpy()
        est = bootstrap(y[mask], p[mask], metrics=("auroc", "brier", "cal_slope"),
                        groups=rows.groups[mask], n_boot=n_boot, seed=seed)
        out.append({"model": m, "label": LABELS.get(m, m), "session": session,
                    "n": int(mask.sum()),
                    **{k: e.value for k, e in est.items()},
                    **{f"{k}_lo": e.lo for k, e in est.items()},
                    **{f"{k}_hi": e.hi for k, e in est.items()}})
    return pd.DataFrame(out)


def deterioration_view(rows: TrainingRows, oof: pd.DataFrame, by_session: int = 3
                       ) -> pd.DataFrame:
    """For clients who eventually reliably deteriorate: the share flagged at or before session
    ``by_session`` (anchor: 85% by session 3, Hannan et al. 2005), and the flag rate among the
    other clients by then."""
    t = rows.keys["session"].to_numpy()
    ids = rows.keys["client_id"].to_numpy()
    det = rows.deteriorated
    out = []
    for m in _models_in(oof):
        flag = oof[f"flag_{m}"].to_numpy()
        frame = pd.DataFrame({"id": ids, "t": t, "flag": flag, "det": det})
        frame = frame[(frame["t"] <= by_session) & np.isfinite(frame["flag"])
                      & np.isfinite(frame["det"])]
        per = frame.groupby("id").agg(flag=("flag", "max"), det=("det", "first"))
        d, o = per[per["det"] == 1], per[per["det"] == 0]
        out.append({"model": m, "label": LABELS.get(m, m), "deteriorators": len(d),
                    "flagged_deteriorators": float(d["flag"].mean()) if len(d) else np.nan,
                    "others": len(o),
                    "flagged_others": float(o["flag"].mean()) if len(o) else np.nan})
    return pd.DataFrame(out)


def decision_curves(rows: TrainingRows, oof: pd.DataFrame, oracle: np.ndarray | None,
                    session: int = 3) -> pd.DataFrame:
    y, t = rows.failed, rows.keys["session"].to_numpy()
    frames = []
    preds = {m: oof[f"p_{m}"].to_numpy() for m in _models_in(oof)}
    if oracle is not None:
        preds["oracle"] = oracle
    for m, p in preds.items():
        mask = (t == session) & np.isfinite(y) & np.isfinite(p)
        if mask.sum() < 20:
            continue
        nb = net_benefit(y[mask], p[mask])
        frames.append(nb.assign(model=m))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def at_stored_threshold(y, p, threshold) -> dict[str, float]:
    return at_threshold(y, p, threshold)
