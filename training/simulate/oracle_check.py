"""Is the simulator's Bayes oracle what it claims to be? Calibrated on fresh clients, and not
beaten by a model fitted on data drawn from the same simulator.

`oracle_check` simulates ``n_clients`` with the oracle at session 3, fits a calibration slope
of the outcome on the oracle's logit (1 = calibrated) with its Wald 95% interval, and fits a
gradient-boosting model on half the clients: its Brier score on the other half must not fall
below the oracle's bootstrap 95% interval. The test suite runs it on 2,500 clients (25-40 s on 2 cores);
``benchmarks/validate_oracle.py`` on 50,000 (the slope within 0.95-1.05 there).
May import the simulator and scientific libraries only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.simulate.generative import simulate_cohort


@dataclass
class OracleCheck:
    n_clients: int
    n_scored: int  # clients with a known outcome and an oracle value at session 3
    slope: float
    slope_lo: float
    slope_hi: float
    brier_oracle: float
    brier_oracle_lo: float  # bootstrap 2.5th percentile
    brier_model: float  # gradient boosting fitted on the other half


def _slope(logit: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Calibration slope and its Wald standard error (unpenalised logistic regression)."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e6, max_iter=1000).fit(logit[:, None], y)
    b = fit.coef_[0, 0]
    p = fit.predict_proba(logit[:, None])[:, 1]
    X = np.column_stack([np.ones_like(logit), logit])
    info = X.T @ (X * (p * (1 - p))[:, None])
    return float(b), float(np.sqrt(np.linalg.inv(info)[1, 1]))


def oracle_check(n_clients: int, seed: int = 2024, n_boot: int = 200) -> OracleCheck:
    from sklearn.ensemble import HistGradientBoostingClassifier

    coh = simulate_cohort(n_clients, seed=seed, oracle_clients=n_clients, oracle_sessions=(3,),
                          oracle_se=0.03, oracle_min_paths=96)
    t, obs, lay = coh.truth, coh.observed, coh.layout
    ok = (t["failed"].notna() & t["oracle_failure_s3"].notna()).to_numpy()
    y = t["failed"].to_numpy()[ok].astype(int)
    p = np.clip(t["oracle_failure_s3"].to_numpy()[ok], 1e-4, 1 - 1e-4)
    slope, se = _slope(np.log(p / (1 - p)), y)

    def features(ix):
        f = [obs.att[ix, :3], np.where(obs.phq[ix, :3] >= 0, obs.phq[ix, :3], np.nan),
             np.where(obs.gad[ix, :3] >= 0, obs.gad[ix, :3], np.nan),
             np.where(obs.srs[ix, :3, 0] >= 0, obs.srs[ix, :3].sum(axis=2) / 10, np.nan),
             lay.age[ix, None], lay.gender[ix, None], lay.diag[ix, None],
             (obs.option_slot[ix, None] < 3) & (obs.option_slot[ix, None] > 0)]
        return np.column_stack(f).astype(float)

    idx = np.flatnonzero(ok)
    half = np.random.default_rng(0).random(len(idx)) < 0.5
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
    model.fit(features(idx[half]), y[half])
    q = model.predict_proba(features(idx[~half]))[:, 1]
    yt, pt = y[~half], p[~half]
    rng = np.random.default_rng(1)
    boot = [np.mean((pt[b] - yt[b]) ** 2) for b in
            (rng.integers(0, len(yt), len(yt)) for _ in range(n_boot))]
    return OracleCheck(n_clients=n_clients, n_scored=int(ok.sum()), slope=slope,
                       slope_lo=slope - 1.96 * se, slope_hi=slope + 1.96 * se,
                       brier_oracle=float(np.mean((pt - yt) ** 2)),
                       brier_oracle_lo=float(np.percentile(boot, 2.5)),
                       brier_model=float(np.mean((q - yt) ** 2)))
