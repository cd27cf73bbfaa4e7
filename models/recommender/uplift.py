"""`UpliftGBM`: gradient-boosted uplift, and what the model-based estimators share.

A LightGBM baseline of the improvement by the end (intake to last score, in reliable-change
units) and, per option, a small LightGBM fitted on the residuals of the clients who received it,
weighted by 1 / propensity (a propensity-weighted T-learner on residuals, shrunk towards the
option's mean effect by few, shallow trees). The gain in the chance of reliable improvement is
read off a normal residual model: ``P(reliable | x, a) = Phi((m(x) + tau_a(x) - 1) / sigma)``.
Drivers are the booster's SHAP contributions in clinical words (`models.explain.TEMPLATES`).

Shared with `RLearnerUplift` (`models.recommender.rlearner`): the recommenders' LightGBM
regressor (`_lgbm`) and the `_ModelDrivers` mixin (drivers from a model's contributions).

Imports: numpy, pandas, LightGBM, SciPy, scikit-learn, `features`, `models.explain`,
`models.recommender.evidence`, `models.recommender.similar` and `models.recommender.wording`.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from scipy.special import ndtr
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from features.instruments import ADAPTATIONS, get
from features.thresholds import MIN_SIMILAR
from models.explain import TEMPLATES
from models.recommender.evidence import OPTIONS, Recommendation
from models.recommender.similar import SIMILAR_CONSTRAINTS, _codes, _query, _SimilarClients
from models.recommender.wording import _clause


def _lgbm(n_estimators: int, num_leaves: int, min_child_samples: int, learning_rate: float,
          seed: int) -> LGBMRegressor:
    """The recommenders' LightGBM regressor: subsampled, single-threaded, deterministic."""
    return LGBMRegressor(n_estimators=n_estimators, num_leaves=num_leaves,
                         min_child_samples=min_child_samples, learning_rate=learning_rate,
                         subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                         random_state=seed, n_jobs=1, verbose=-1, deterministic=True,
                         force_row_wise=True)


# ------------------------------------------------------------------------------------------
class _ModelDrivers(_SimilarClients):
    """Estimators whose drivers are a model's contributions (SHAP) per adaptation."""

    def _worded(self, X: pd.DataFrame, names: Sequence[str], contributions: list[np.ndarray],
                top: int, floor: float) -> list[list[list[str]]]:
        """Per row and adaptation: the ``top`` largest contributions (at least ``floor``, never
        zero) of ``contributions[j]`` (rows x ``names``) in clinical words."""
        inst = get(self.instrument)
        rows = _query(X).records(self.feature_names_)
        out = [[[] for _ in ADAPTATIONS] for _ in range(len(X))]
        for j, C in enumerate(contributions):
            for i, row in enumerate(rows):
                for f in np.argsort(-np.abs(C[i]), kind="stable")[:top]:
                    if C[i, f] == 0 or abs(C[i, f]) < floor:
                        continue
                    name = names[f]
                    text = (TEMPLATES[name].template(row[name], inst, row)
                            if name in TEMPLATES else name)
                    way = "raises" if C[i, f] > 0 else "lowers"
                    out[i][j].append(f"{_clause(text)} ({way} the estimated gain)")
        return out

    def recommend(self, X: pd.DataFrame, top: int | None = 3) -> list[Recommendation]:
        idx = self.neighbours(X)
        return self._rank(X, self._gains(X, idx), self._drivers(X), idx, self.method_label,
                          top)


# ------------------------------------------------------------------------------------------
class UpliftGBM(_ModelDrivers, BaseEstimator):
    """Gradient-boosted uplift: propensity-weighted T-learner on the residuals of a baseline.

    Parameters
    ----------
    instrument : the outcome instrument (for the wording of the drivers).
    n_neighbors, match_features, min_similar : the similar clients behind the comparison shown
        with each suggestion, and the minimum (as in `NeighbourAdvantage`).
    n_estimators, num_leaves, min_child_samples, learning_rate : per-option uplift boosters
        (few, shallow trees: the effect of each option is shrunk towards its mean).
    baseline_estimators : trees of the baseline regressor of the improvement.
    random_state : seed of every booster.
    """

    method_label = "gradient-boosted uplift"

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        **SIMILAR_CONSTRAINTS,
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "num_leaves": [Interval(Integral, 2, None, closed="left")],
        "min_child_samples": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "baseline_estimators": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(self, instrument: str = "PHQ-9", n_neighbors: int = 400,
                 match_features: Sequence[str] | None = None, n_estimators: int = 100,
                 num_leaves: int = 4, min_child_samples: int = 100, learning_rate: float = 0.03,
                 baseline_estimators: int = 150, min_similar: int = MIN_SIMILAR,
                 random_state: int = 0):
        self.instrument = instrument
        self.n_neighbors = n_neighbors
        self.match_features = match_features
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.learning_rate = learning_rate
        self.baseline_estimators = baseline_estimators
        self.min_similar = min_similar
        self.random_state = random_state

    def _booster(self, n_estimators, num_leaves, min_child_samples, learning_rate):
        return _lgbm(n_estimators, num_leaves, min_child_samples, learning_rate,
                     self.random_state)

    def fit(self, X: pd.DataFrame, treatment, outcome, propensity, improvement=None
            ) -> UpliftGBM:
        """As `NeighbourAdvantage.fit`, plus ``improvement``: intake to last score in
        reliable-change units (NaN unknown); when omitted the 0/1 outcome is used."""
        self._fit_similar(X, treatment, outcome, propensity)
        y = np.asarray(outcome, float)
        keep = np.isfinite(y)
        z = y if improvement is None else np.asarray(improvement, float)
        keep &= np.isfinite(z)
        self.feature_names_ = tuple(X.columns)
        M = X.to_numpy(float)[keep]
        z, A, P = z[keep], _codes(treatment)[keep], np.asarray(propensity, float)[keep]
        self.target_ = "outcome" if improvement is None else "improvement_rc"
        # out-of-fold baseline so that residuals are honest
        fold = np.random.default_rng(self.random_state).integers(0, 3, len(z))
        m = np.zeros(len(z))
        for g in range(3):
            b = self._booster(self.baseline_estimators, 15, 50, 0.05).fit(M[fold != g],
                                                                          z[fold != g])
            m[fold == g] = b.predict(M[fold == g])
        self.baseline_ = self._booster(self.baseline_estimators, 15, 50, 0.05).fit(M, z)
        r = z - m
        self.sigma_ = float(np.std(r))
        self.uplift_, self.offset_ = [], np.zeros(len(OPTIONS))
        for a in range(len(OPTIONS)):
            s = A == a
            if s.sum() < 4 * self.min_similar:
                raise ValueError(f"only {int(s.sum())} archived clients received {OPTIONS[a]}")
            w = 1.0 / P[s, a]
            # small archives: leaves of at least a fifth of the option's clients
            leaf = max(self.min_similar, min(self.min_child_samples, int(s.sum()) // 5))
            g = self._booster(self.n_estimators, self.num_leaves, leaf,
                              self.learning_rate).fit(M[s], r[s], sample_weight=w)
            # the option's weighted mean residual + the booster centred on its own arm
            self.offset_[a] = np.average(r[s], weights=w) - np.average(g.predict(M[s]),
                                                                       weights=w)
            self.uplift_.append(g)
        return self

    def _tau(self, M: np.ndarray) -> np.ndarray:
        return np.column_stack([g.booster_.predict(M) + self.offset_[a]
                                for a, g in enumerate(self.uplift_)])

    def _gains(self, X: pd.DataFrame, idx: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self, "uplift_")
        M = X[list(self.feature_names_)].to_numpy(float)
        tau = self._tau(M)
        if self.target_ == "outcome":
            return tau[:, 1:] - tau[:, [0]]
        base = self.baseline_.booster_.predict(M)[:, None]
        p = ndtr((base + tau - 1.0) / self.sigma_)  # P(improvement >= 1 reliable change)
        return p[:, 1:] - p[:, [0]]

    def gains(self, X: pd.DataFrame) -> np.ndarray:
        return self._gains(X)

    def _drivers(self, X: pd.DataFrame, top: int = 2) -> list[list[list[str]]]:
        """Per row and adaptation: the features with the largest SHAP contributions to that
        adaptation's uplift over no adaptation, in clinical words."""
        M = X[list(self.feature_names_)].to_numpy(float)
        c0 = self.uplift_[0].booster_.predict(M, pred_contrib=True)[:, :-1]
        contributions = [self.uplift_[j + 1].booster_.predict(M, pred_contrib=True)[:, :-1] - c0
                         for j in range(len(ADAPTATIONS))]
        return self._worded(X, self.feature_names_, contributions, top, floor=0.0)
