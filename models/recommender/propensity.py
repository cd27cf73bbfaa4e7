"""Propensities on real data: the chance of each option at a decision point given the
decision-session features, for correcting who received what when the propensities are not known
(in simulation they are).

Imports: numpy, pandas, scikit-learn, `features.pointintime` and `models.recommender.evidence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from features.pointintime import CHECKLIST_FEATURES
from models.recommender.evidence import OPTIONS

PROPENSITY_FEATURES: tuple[str, ...] = (
    "session", "latest_score", "latest_severity", "change_rc", "slope_log", "sessions_missed",
    "max_gap", "alliance_latest", "alliance_drop", "alliance_below_cutoff", *CHECKLIST_FEATURES,
)


class PropensityModel(BaseEstimator):
    """Multinomial logistic model of the option received, on the decision-session features.

    Used when the propensities are not known (real data). Probabilities are floored at
    ``floor`` and renormalised so that inverse weights stay bounded.
    """

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        "features": ["array-like"],
        "floor": [Interval(Real, 0, 1, closed="left")],
        "C": [Interval(Real, 0, None, closed="neither")],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(self, features: Sequence[str] = PROPENSITY_FEATURES, floor: float = 0.02,
                 C: float = 1.0, random_state: int = 0):
        self.features = features
        self.floor = floor
        self.C = C
        self.random_state = random_state

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        M = X[list(self.features)].to_numpy(float)
        return np.where(np.isfinite(M), M, self.fill_)

    def fit(self, X: pd.DataFrame, treatment) -> PropensityModel:
        self._validate_params()
        M = X[list(self.features)].to_numpy(float)
        with np.errstate(invalid="ignore"):
            fill = np.nanmean(np.where(np.isfinite(M), M, np.nan), axis=0)
        self.fill_ = np.where(np.isfinite(fill), fill, 0.0)
        t = pd.Categorical(np.asarray(treatment, dtype=object), categories=OPTIONS).codes
        if (t < 0).any():
            raise ValueError("treatment must be one of " + ", ".join(OPTIONS))
        self.model_ = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=1000))
        self.model_.fit(self._matrix(X), t)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "model_")
        p = np.zeros((len(X), len(OPTIONS)))
        p[:, self.model_.classes_] = self.model_.predict_proba(self._matrix(X))
        p = np.maximum(p, self.floor)
        return p / p.sum(axis=1, keepdims=True)
