"""LogisticRisk: the plain statistical baseline every risk model must beat.

Pipeline: `ExpectedDeviation` (refitted inside each fold) -> median imputation with missing
indicators -> standardisation -> LogisticRegression (L2, ``C``). Same interface, feature
contract and threshold rule as `models.risk.GBMRisk`: the threshold is chosen on out-of-fold
probabilities from folds grouped by client. Logistic regression is fitted on the log-loss, so
no separate calibration step is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from models.base import (
    FeatureContract,
    binary_scores,
    canonical_order,
    choose_threshold,
    known_target,
    unpack_rows,
)
from models.expected import DEVIATION_COLUMN, ExpectedDeviation
from models.risk import NOT_RISK_INPUTS


class LogisticRisk(FeatureContract, ClassifierMixin, BaseEstimator):
    """Median imputation + missing indicators + standardisation + logistic regression.

    ``fit(X, y, groups)`` as for `GBMRisk`; ``features`` selects model inputs (default: all
    feature columns except `models.risk.NOT_RISK_INPUTS`, plus ``expected_deviation``). No minimum-data guard beyond needing at
    least ``n_splits`` clients.
    """

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        "instrument": [str],
        "features": ["array-like", None],
        "C": [Interval(Real, 0, None, closed="neither")],
        "n_splits": [Interval(Integral, 2, None, closed="left")],
        "threshold_rule": [StrOptions({"sensitivity", "youden"})],
        "min_sensitivity": [Interval(Real, 0, 1, closed="both")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, instrument: str = "PHQ-9", features: Sequence[str] | None = None,
                 C: float = 1.0, n_splits: int = 5, threshold_rule: str = "sensitivity",
                 min_sensitivity: float = 0.80, max_iter: int = 1000):
        self.instrument = instrument
        self.features = features
        self.C = C
        self.n_splits = n_splits
        self.threshold_rule = threshold_rule
        self.min_sensitivity = min_sensitivity
        self.max_iter = max_iter

    def _pipeline(self, names: list[str]) -> Pipeline:
        select = ColumnTransformer([("x", "passthrough", names)], remainder="drop",
                                   verbose_feature_names_out=False)
        return Pipeline([
            ("deviation", ExpectedDeviation(instrument=self.instrument)),
            ("select", select),
            ("impute", SimpleImputer(strategy="median", add_indicator=True,
                                     keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logistic", LogisticRegression(C=self.C, max_iter=self.max_iter,
                                            solver="newton-cholesky")),
        ])

    def fit(self, X, y, groups=None) -> LogisticRisk:
        self._validate_params()
        frame, version, groups = unpack_rows(X, groups)
        if groups is None:
            raise ValueError("LogisticRisk.fit needs groups (a client id per row) for the "
                             "threshold folds")
        self._remember_features(frame, version)
        base = ([c for c in frame.columns if c not in NOT_RISK_INPUTS]
                if self.features is None else list(self.features))
        names = [c for c in base if c != DEVIATION_COLUMN] + [DEVIATION_COLUMN]
        y = known_target(y, len(frame))
        groups = np.asarray(groups)
        keep = np.isfinite(y)
        frame, y, groups = frame.loc[keep], y[keep].astype(int), groups[keep]
        n_cases = int(pd.unique(groups).size)
        if n_cases < self.n_splits:
            raise ValueError(f"LogisticRisk needs at least {self.n_splits} clients; got {n_cases}")
        order = canonical_order(groups, frame["session"].to_numpy(float))
        rows = np.flatnonzero(keep)[order]
        frame = frame.iloc[order].reset_index(drop=True)
        y, groups = y[order], groups[order]

        template = self._pipeline(names)
        oof = np.empty(len(y))
        for train, test in GroupKFold(n_splits=self.n_splits).split(frame, y, groups):
            fold = clone(template).fit(frame.iloc[train], y[train])
            oof[test] = fold.predict_proba(frame.iloc[test])[:, 1]
        self.threshold_ = choose_threshold(y, oof, self.threshold_rule, self.min_sensitivity)
        self.oof_proba_ = oof
        self.oof_rows_ = rows  # position of each out-of-fold value among the fitted rows
        self.pipeline_ = clone(template).fit(frame, y)
        self.feature_names_ = np.asarray(names, dtype=object)
        self.classes_ = np.array([0, 1])
        self.cv_scores_ = {**binary_scores(y, oof, self.threshold_), "n_rows": float(len(y)),
                           "n_clients": float(n_cases)}
        self.n_training_cases_ = n_cases
        return self

    def predict_logit(self, X) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.decision_function(self._checked(X))

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict_proba(self._checked(X))

    def predict(self, X) -> np.ndarray:
        """1 = at risk (probability >= `threshold_`)."""
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)

    def transform_features(self, X) -> np.ndarray:
        """Model inputs (columns `feature_names_`) before imputation, as a therapist reads them."""
        check_is_fitted(self, "pipeline_")
        frame = self.pipeline_.named_steps["deviation"].transform(self._checked(X))
        return frame[list(self.feature_names_)].to_numpy(dtype=float)

    def contributions(self, X) -> np.ndarray:
        """Exact log-odds contributions: coef x standardised input, a feature's missing
        indicator folded into the feature. Shape (n, n_features + 1), intercept last; each row
        sums to `predict_logit`."""
        return self.contributions_from_matrix(self.transform_features(X))

    def logit_from_matrix(self, M: np.ndarray) -> np.ndarray:
        """Log-odds for a matrix built by `transform_features`."""
        return self.contributions_from_matrix(M).sum(axis=1)

    def contributions_from_matrix(self, M: np.ndarray) -> np.ndarray:
        """`contributions` for a matrix built by `transform_features`."""
        check_is_fitted(self, "pipeline_")
        steps = self.pipeline_.named_steps
        frame = pd.DataFrame(M, columns=list(self.feature_names_))
        z = steps["scale"].transform(steps["impute"].transform(frame))
        coef = steps["logistic"].coef_[0]
        parts = z * coef
        names = list(self.feature_names_)
        out = np.zeros((len(z), len(names) + 1))
        out[:, : len(names)] = parts[:, : len(names)]
        indicator = steps["impute"].indicator_
        if indicator is not None:
            for j, feat in enumerate(indicator.features_):
                out[:, feat] += parts[:, len(names) + j]
        out[:, -1] = steps["logistic"].intercept_[0]
        return out
