"""Doubly robust policy values on a cohort without counterfactuals (a clinic's own data).

`evaluate_cohort`: the decision rows and fitted propensities of
`training.recommendation.decisions.build_decision_data`, the recommenders and an outcome model
cross-fitted by client, each policy valued by its doubly robust (augmented inverse-propensity)
score on the clients with a known outcome (`off_policy_values`, with a Hajek IPW check).

Imports features, models and the other modules of this package.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.recommender import OPTIONS
from training.recommendation.decisions import DecisionData, build_decision_data
from training.recommendation.picks import (
    CLAIMED,
    LEARNED,
    _codes_of,
    baseline_picks,
    learned_picks,
)

#: Policies valued on real data (no oracle there).
REAL_POLICIES = (*LEARNED, CLAIMED, "rules", "rules_or_none", "random", "observed", "none")


@dataclass
class OffPolicyResult:
    policy: str
    value: float  # doubly robust estimate of the share reliably improved under the policy
    se: float
    ipw: float  # Hajek inverse-propensity estimate, a check on the outcome model
    diff_vs_rules: float  # paired, doubly robust
    diff_se: float
    matched: int  # clients whose received option is the policy's choice
    n: int  # clients with a known outcome


@dataclass
class OffPolicyReport:
    results: list[OffPolicyResult]
    n_flagged: int
    n_known: int
    design: str
    fallback_share: dict[str, float]
    seconds: float
    params: dict = field(default_factory=dict)
    picks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    data: DecisionData | None = field(default=None, repr=False)

    def result(self, policy: str) -> OffPolicyResult:
        return next(r for r in self.results if r.policy == policy)


def dr_scores(y: np.ndarray, received: np.ndarray, propensity: np.ndarray, mu: np.ndarray,
              pick: np.ndarray) -> np.ndarray:
    """Per client, the doubly robust (augmented inverse-propensity) score of a policy that
    chooses ``pick`` (Dudik, Langford & Li 2011; Athey & Wager 2021):
    ``mu[pick] + 1[received = pick] / e(pick) * (y - mu[received])``. Its mean estimates the
    policy's value; it is unbiased when either the propensities ``e`` or the outcome model
    ``mu`` (n, options) is right."""
    r = np.arange(len(y))
    w = (received == pick) / propensity[r, pick]
    return mu[r, pick] + w * (y - mu[r, received])


def outcome_model(data: DecisionData, fold: np.ndarray, seed: int = 0) -> np.ndarray:
    """Cross-fitted P(reliably improved | decision row, option) for every option, (n, options):
    per fold, a LightGBM classifier on the other folds' rows with a known outcome (the features
    and the option received, one-hot)."""
    from lightgbm import LGBMClassifier

    M = data.X.to_numpy(float)
    A = _codes_of(data.treatment)
    onehot = np.eye(len(OPTIONS))
    known = np.isfinite(data.outcome)
    mu = np.full((len(data), len(OPTIONS)), np.nan)
    for f in np.unique(fold):
        train, test = known & (fold != f), fold == f
        clf = LGBMClassifier(n_estimators=300, num_leaves=15, learning_rate=0.05,
                             min_child_samples=50, random_state=seed, n_jobs=1, verbose=-1,
                             deterministic=True, force_row_wise=True)
        clf.fit(np.column_stack([M[train], onehot[A[train]]]), data.outcome[train])
        for a in range(len(OPTIONS)):
            mu[test, a] = clf.predict_proba(
                np.column_stack([M[test], np.tile(onehot[a], (int(test.sum()), 1))]))[:, 1]
    return mu


def off_policy_values(data: DecisionData, picks: dict[str, np.ndarray], mu: np.ndarray,
                      policies: tuple[str, ...] = REAL_POLICIES) -> list[OffPolicyResult]:
    """Doubly robust and IPW values of each policy on the clients with a known outcome, with
    paired differences from the rules. ``observed`` is on-policy: its value is the plain mean
    of the outcomes."""
    known = np.isfinite(data.outcome)
    y, A, P, M = (data.outcome[known], _codes_of(data.treatment)[known],
                  data.propensity[known], mu[known])
    m = int(known.sum())
    scores = {name: (y if name == "observed" else dr_scores(y, A, P, M, picks[name][known]))
              for name in policies}
    base = scores["rules"]
    out = []
    for name in policies:
        pk = picks[name][known]
        w = (A == pk) / P[np.arange(m), pk]
        ipw = float((w * y).sum() / w.sum()) if w.sum() > 0 else float("nan")
        d = scores[name] - base
        out.append(OffPolicyResult(name, float(scores[name].mean()),
                                   float(scores[name].std(ddof=1) / np.sqrt(m)), ipw,
                                   float(d.mean()), float(d.std(ddof=1) / np.sqrt(m)),
                                   int((A == pk).sum()), m))
    return out


def evaluate_cohort(sessions: pd.DataFrame, clients: pd.DataFrame | None,
                    adaptations: pd.DataFrame | None, instrument: str = "PHQ-9",
                    n_folds: int = 5, seed: int = 1,
                    progress: Callable[[str], None] | None = None) -> OffPolicyReport:
    """Policy values on a cohort's own records, without counterfactuals (a clinic's data).

    The decision rows and fitted propensities of `build_decision_data`; the recommenders and
    an outcome model cross-fitted by client (``n_folds``); each policy valued by its doubly
    robust score on the clients with a known outcome (`off_policy_values`). Observational:
    valid only when who received what depended on what the rows record (no unmeasured
    confounding) and every option had a chance (the propensities are floored at 0.02).
    """
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    say("decision rows and propensities")
    data = build_decision_data(sessions, clients, adaptations, instrument, seed=seed)
    n = len(data)
    if n < 10 * n_folds or not np.isfinite(data.outcome).any():
        raise ValueError(f"only {n} off-track clients with a decision row: too few to evaluate")
    fold = np.random.default_rng([seed, 11]).integers(0, n_folds, size=n)
    picks = baseline_picks(data, seed)
    splits = [(data.subset(fold != f), fold == f) for f in range(n_folds)]
    learned, fallback = learned_picks(data, splits, picks["rules"], seed, say,
                                      versus=picks["rules_or_none"])
    fallback.pop("claimed")
    picks.update(learned)
    say("outcome model (cross-fitted)")
    mu = outcome_model(data, fold, seed)
    results = off_policy_values(data, picks, mu)
    known = int(np.isfinite(data.outcome).sum())
    design = (f"{n_folds}-fold cross-fitting by client; doubly robust values on the {known:,} "
              f"of {n:,} off-track clients with a known outcome")
    return OffPolicyReport(results, n, known, design, fallback, time.perf_counter() - t0,
                           {"folds": n_folds, "seed": seed, "instrument": instrument,
                            "outcome": "reliably improved, intake to last observed score",
                            "propensities": data.propensity_source,
                            "estimator": "doubly robust (AIPW), cross-fitted LightGBM "
                                         "outcome model"},
                           picks, data)
