"""Evaluation metrics with bootstrap intervals, decision curves and subgroup tables.

All functions take NumPy arrays of outcomes (0/1) and predicted probabilities. Bootstrap
intervals resample CLIENTS (the cluster), not rows, when `groups` is given, so repeated rows of
one client (as of several sessions) never make an interval look narrower than it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _irls(y: np.ndarray, lp: np.ndarray, fit_slope: bool) -> np.ndarray:
    """Newton-Raphson for logit P(y) = a + b * lp (b fixed at 1 when not fit_slope)."""
    beta = np.array([0.0, 1.0])
    for _ in range(100):
        eta = beta[0] + beta[1] * lp
        mu = 1.0 / (1.0 + np.exp(-np.clip(eta, -35, 35)))
        w = np.maximum(mu * (1 - mu), 1e-12)
        r = y - mu
        if fit_slope:
            g = np.array([r.sum(), (r * lp).sum()])
            h = np.array([[w.sum(), (w * lp).sum()], [(w * lp).sum(), (w * lp * lp).sum()]])
            step = np.linalg.solve(h + 1e-12 * np.eye(2), g)
        else:
            step = np.array([r.sum() / w.sum(), 0.0])
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def calibration_slope_intercept(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration (Cox 1958; Van Calster et al. 2019): slope b from
    logit P(y) = a + b * logit(p); intercept = calibration-in-the-large, i.e. a with b fixed at 1
    (offset model). Ideal: slope 1, intercept 0."""
    y = np.asarray(y, float)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    lp = _logit(np.asarray(p, float))
    slope = _irls(y, lp, fit_slope=True)[1]
    intercept = _irls(y, lp, fit_slope=False)[0]
    return float(slope), float(intercept)


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties (= sklearn's roc_auc_score), without
    sklearn's per-call validation: the bootstrap calls this thousands of times."""
    pos = y == 1
    n1 = int(pos.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _auprc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (step-wise, ties grouped as in sklearn's average_precision_score)."""
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ys) - 1]
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": _auroc,
    "auprc": _auprc,
    "brier": lambda y, p: float(np.mean((p - y) ** 2)),
    "cal_slope": lambda y, p: calibration_slope_intercept(y, p)[0],
    "cal_intercept": lambda y, p: calibration_slope_intercept(y, p)[1],
}


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def fmt(self, digits: int = 3) -> str:
        if np.isnan(self.value):
            return "—"
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def _cluster_indices(groups: np.ndarray | None, n: int, rng: np.random.Generator, n_boot: int):
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, n)
        return
    codes, uniq = pd.factorize(groups)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(uniq)))
    ends = np.append(starts[1:], n)
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        yield np.concatenate([order[starts[g]:ends[g]] for g in pick]) if len(pick) else pick


def bootstrap(y: np.ndarray, p: np.ndarray, metrics=("auroc", "auprc", "brier", "cal_slope",
                                                     "cal_intercept"),
              groups: np.ndarray | None = None, n_boot: int = 200, seed: int = 0
              ) -> dict[str, Estimate]:
    """Point estimates with percentile 95% bootstrap intervals (clients resampled)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    rng = np.random.default_rng(seed)
    point = {m: METRICS[m](y, p) for m in metrics}
    draws = {m: [] for m in metrics}
    for idx in _cluster_indices(groups, len(y), rng, n_boot):
        yb, pb = y[idx], p[idx]
        for m in metrics:
            draws[m].append(METRICS[m](yb, pb))
    out = {}
    for m in metrics:
        d = np.asarray(draws[m], float)
        d = d[np.isfinite(d)]
        lo, hi = (np.percentile(d, [2.5, 97.5]) if len(d) else (np.nan, np.nan))
        out[m] = Estimate(float(point[m]), float(lo), float(hi))
    return out


def paired_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, metric: str = "auroc",
                      groups: np.ndarray | None = None, n_boot: int = 500, seed: int = 0
                      ) -> Estimate:
    """metric(a) - metric(b) on the same rows, with a paired cluster bootstrap interval."""
    y, p_a, p_b = (np.asarray(v, float) for v in (y, p_a, p_b))
    f = METRICS[metric]
    rng = np.random.default_rng(seed)
    diffs = [f(y[i], p_a[i]) - f(y[i], p_b[i])
             for i in _cluster_indices(groups, len(y), rng, n_boot)]
    d = np.asarray(diffs, float)
    d = d[np.isfinite(d)]
    lo, hi = np.percentile(d, [2.5, 97.5]) if len(d) else (np.nan, np.nan)
    return Estimate(float(f(y, p_a) - f(y, p_b)), float(lo), float(hi))


def at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    y, flag = np.asarray(y, bool), np.asarray(p, float) >= threshold
    tp, fn = np.sum(flag & y), np.sum(~flag & y)
    tn, fp = np.sum(~flag & ~y), np.sum(flag & ~y)
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "flag_rate": float(flag.mean()) if len(flag) else float("nan"),
        "ppv": tp / (tp + fp) if tp + fp else float("nan"),
    }


THRESHOLDS = tuple(np.round(np.arange(0.05, 0.81, 0.05), 2))


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds=THRESHOLDS) -> pd.DataFrame:
    """Decision-curve analysis (Vickers & Elkin 2006): net benefit of flagging at each threshold
    against flagging everyone and no one."""
    y, p = np.asarray(y, bool), np.asarray(p, float)
    n, prev = len(y), y.mean()
    rows = []
    for t in thresholds:
        flag = p >= t
        tp, fp = np.sum(flag & y), np.sum(flag & ~y)
        w = t / (1 - t)
        rows.append({"threshold": round(float(t), 3), "net_benefit": tp / n - fp / n * w,
                     "flag_all": prev - (1 - prev) * w, "flag_none": 0.0})
    return pd.DataFrame(rows)
