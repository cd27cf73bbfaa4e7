"""The expected-response rule as a risk score, so it can sit in the same comparison tables.

Finch, Lambert & Schaalje (2001): the signal compares the latest score with the expected
course for clients who started at the same level. As a probability, the rule is a one-variable
logistic map of the deviation from that course (in reliable-change units, positive = worse),
refitted inside each fold together with the curve. It is the bar the first champion must clear.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from models.base import choose_threshold, known_target, unpack_rows
from models.expected import ExpectedDeviation


class ExpectedResponseRisk(ClassifierMixin, BaseEstimator):
    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        "instrument": [str],
        "threshold_rule": [StrOptions({"sensitivity", "youden"})],
        "min_sensitivity": [Interval(Real, 0, 1, closed="both")],
    }

    def __init__(self, instrument: str = "PHQ-9", threshold_rule: str = "sensitivity",
                 min_sensitivity: float = 0.80):
        self.instrument = instrument
        self.threshold_rule = threshold_rule
        self.min_sensitivity = min_sensitivity

    def _score(self, frame) -> np.ndarray:
        d = self.deviation_.deviation(frame["intake_score"].to_numpy(float),
                                      frame["session"].to_numpy(float),
                                      frame["latest_score"].to_numpy(float))
        return np.nan_to_num(d, nan=0.0)

    def fit(self, X, y, groups=None) -> ExpectedResponseRisk:
        self._validate_params()
        frame, _, _ = unpack_rows(X, groups)
        y = known_target(y, len(frame))
        keep = np.isfinite(y)
        frame, y = frame.loc[keep], y[keep].astype(int)
        self.deviation_ = ExpectedDeviation(instrument=self.instrument).fit(frame)
        score = self._score(frame)
        self.logistic_ = LogisticRegression(C=1e6).fit(score[:, None], y)
        p = self.logistic_.predict_proba(score[:, None])[:, 1]
        self.threshold_ = choose_threshold(y, p, self.threshold_rule, self.min_sensitivity)
        self.classes_ = np.array([0, 1])
        return self

    def predict_logit(self, X) -> np.ndarray:
        check_is_fitted(self, "logistic_")
        frame, _, _ = unpack_rows(X)
        return self.logistic_.decision_function(self._score(frame)[:, None])

    def predict_proba(self, X) -> np.ndarray:
        p = expit(self.predict_logit(X))
        return np.column_stack([1 - p, p])
