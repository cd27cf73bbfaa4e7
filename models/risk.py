"""GBMRisk: LightGBM risk of a binary outcome (not on track at the end of care, or dropout).

Design (see also docs and shared/STACK.md):

* **Pipeline**: feature rows (`features.pointintime.FEATURE_NAMES`) -> `ExpectedDeviation`
  (appends ``expected_deviation``; an expected-response curve fitted on the training rows) ->
  ``LGBMClassifier`` with monotone constraints where the clinical direction is known.
* **Calibration**: Platt scaling of the booster's raw logit, fitted on out-of-fold raw logits
  from folds grouped by client (`GroupKFold`; the deviation step is refitted inside each fold),
  then ONE booster refitted on all training rows. The calibrated logit is ``a * raw + b`` with
  ``a > 0``, so monotonicity survives and the TreeSHAP contributions scale exactly:
  ``(a * base + b) + sum(a * phi_j) == calibrated logit``. A non-positive slope refuses the
  model (`models.base.CalibrationError`).
* **Threshold** (`threshold_`, the ``at_risk`` flag), chosen on the out-of-fold calibrated
  probabilities. Default rule ``"sensitivity"``: the HIGHEST threshold whose out-of-fold
  sensitivity is at least ``min_sensitivity`` (0.80), i.e. the most specific flag that still
  catches 4 in 5 clients who end up not improved. Rationale: a flag is a prompt for a
  conversation (a false alarm is cheap); an unflagged client who is going wrong is the costly
  error (Hannan et al. 2005). ``"youden"`` (maximise sensitivity + specificity - 1) is available.
* **Minimum data**: fewer than `models.base.MIN_TRAINING_CASES` (300) clients with a known outcome raise
  `InsufficientDataError` (Giesemann et al. 2023 found LightGBM needed about 300 training cases).
* **Feature contract**: the fitted object stores the feature names and
  `features.pointintime.FEATURE_VERSION`; other input is refused with a readable diff
  (`features.pointintime.check_features`, `FeatureMismatchError`).

The request path (`predict_logit`, `predict_proba`, `contributions`) uses ``booster_.predict``
on a NumPy matrix, never the sklearn wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GroupKFold
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from features.instruments import get
from features.pointintime import CHECKLIST_FEATURES
from models.base import (
    MIN_TRAINING_CASES,
    FeatureContract,
    InsufficientDataError,
    binary_scores,
    canonical_order,
    choose_threshold,
    known_target,
    platt,
    unpack_rows,
)
from models.expected import DEVIATION_COLUMN, ExpectedDeviation

__all__ = ["GBMRisk", "monotone_directions", "model_inputs", "NOT_RISK_INPUTS"]

# ---------------------------------------------------------------------------------------------
# Monotone directions (+1: a higher value never lowers the risk; -1: never raises it)
# ---------------------------------------------------------------------------------------------
_FAILED = {
    "latest_severity": +1,
    "slope_log": +1,  # slope of direction-aware severity: positive = getting worse
    "max_improvement_rc": -1,
    "change_raw": -1,
    "change_rc": -1,
    "change_frac": -1,
    "early_change_rc": -1,
    DEVIATION_COLUMN: +1,
    "alliance_latest": -1,  # alliance quality, 1 = best (pointintime)
    "alliance_min": -1,
    "alliance_drop": +1,
    "alliance_below_cutoff": +1,
    "other_severity_latest": +1,
}
_DROPOUT = {
    "alliance_latest": -1,
    "alliance_min": -1,
    "alliance_drop": +1,
    "alliance_below_cutoff": +1,
    "sessions_missed": +1,
}


#: Features never given to a risk model. Risk-item answers: a risk item raises the safety flag
#: on its own, whatever any model says, and must never be averaged into (or offset inside) a
#: risk estimate or appear as one of its drivers. Checklist ratings: the clinical-support
#: checklist is given when a client is already not on track, so whether one exists says more
#: about the therapist's earlier judgement than about the client; its ratings serve the
#: suggestions (rules and recommender), not the risk.
NOT_RISK_INPUTS: tuple[str, ...] = ("risk_item_latest", "risk_item_ever", *CHECKLIST_FEATURES)
#: Features left out of one target's model by default. ``variability`` moves in either
#: direction when the latest score gets worse, so no monotone constraint on it can guarantee
#: that a worse latest score never lowers the risk of not improving; it stays in the dropout
#: model.
_EXCLUDED = {"failed": ("variability", *NOT_RISK_INPUTS), "dropped_out": NOT_RISK_INPUTS}


def model_inputs(target: str, columns: Sequence[str]) -> list[str]:
    """The feature columns a risk model of ``target`` uses by default (in column order)."""
    drop = _EXCLUDED.get(target, NOT_RISK_INPUTS)
    return [c for c in columns if c not in drop]


def monotone_directions(target: str, instrument: str) -> dict[str, int]:
    """Default monotone constraints per target. ``latest_score`` follows the instrument."""
    if target == "failed":
        out = dict(_FAILED)
        out["latest_score"] = get(instrument).sign  # PHQ-9 +1, ORS -1
        return out
    if target == "dropped_out":
        return dict(_DROPOUT)
    raise ValueError(f"unknown target {target!r}; expected 'failed' or 'dropped_out'")


# ---------------------------------------------------------------------------------------------
class GBMRisk(FeatureContract, ClassifierMixin, BaseEstimator):
    """LightGBM risk model with Platt calibration, exact calibrated-logit contributions and
    an out-of-fold threshold.

    ``fit(X, y, groups)``: X = feature rows (DataFrame with `FEATURE_NAMES` or a FeatureFrame),
    y = 0/1 target per row (NaN rows are dropped), groups = client id per row (taken from
    ``FeatureFrame.keys`` when omitted).
    """

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        "target": [str], "instrument": [str], "features": ["array-like", None],
        "monotone": [Mapping, None],
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "num_leaves": [Interval(Integral, 2, None, closed="left")],
        "max_depth": [Interval(Integral, -1, None, closed="left")],  # -1: no limit (LightGBM)
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "min_child_samples": [Interval(Integral, 1, None, closed="left")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "n_splits": [Interval(Integral, 2, None, closed="left")],
        "threshold_rule": [StrOptions({"sensitivity", "youden"})],
        "min_sensitivity": [Interval(Real, 0, 1, closed="both")],
        "min_training_cases": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "n_jobs": [Integral],
    }

    def __init__(self, target: str = "failed", instrument: str = "PHQ-9",
                 features: Sequence[str] | None = None,
                 monotone: Mapping[str, int] | None = None,
                 n_estimators: int = 100, num_leaves: int = 7, max_depth: int = 3,
                 learning_rate: float = 0.05, min_child_samples: int = 20,
                 subsample: float = 0.8, colsample_bytree: float = 0.8,
                 reg_lambda: float = 1.0, n_splits: int = 5,
                 threshold_rule: str = "sensitivity", min_sensitivity: float = 0.80,
                 min_training_cases: int = MIN_TRAINING_CASES,
                 random_state: int = 0, n_jobs: int = 1):
        self.target = target
        self.instrument = instrument
        self.features = features
        self.monotone = monotone
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_splits = n_splits
        self.threshold_rule = threshold_rule
        self.min_sensitivity = min_sensitivity
        self.min_training_cases = min_training_cases
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ---------------------------------------------------------------------------- fitting
    def _model_features(self, columns: Sequence[str]) -> list[str]:
        base = (model_inputs(self.target, columns) if self.features is None
                else list(self.features))
        unknown = [c for c in base if c not in columns]
        if unknown:
            raise ValueError(f"features not in the feature rows: {unknown}")
        return [c for c in base if c != DEVIATION_COLUMN] + [DEVIATION_COLUMN]

    def _classifier(self, names: Sequence[str]) -> LGBMClassifier:
        directions = (monotone_directions(self.target, self.instrument)
                      if self.monotone is None else dict(self.monotone))
        return LGBMClassifier(
            n_estimators=self.n_estimators, num_leaves=self.num_leaves,
            max_depth=self.max_depth, learning_rate=self.learning_rate,
            min_child_samples=self.min_child_samples, subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1.0 else 0,
            colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda,
            monotone_constraints=[int(directions.get(n, 0)) for n in names],
            random_state=self.random_state, n_jobs=self.n_jobs, deterministic=True,
            force_row_wise=True, verbose=-1)

    def _fit_one(self, X: pd.DataFrame, y: np.ndarray, names: list[str]):
        dev = ExpectedDeviation(instrument=self.instrument).fit(X)
        M = self._matrix_with(dev, X, names)
        clf = self._classifier(names).fit(M, y.astype(int))
        return dev, clf

    @staticmethod
    def _matrix_with(dev: ExpectedDeviation, X: pd.DataFrame, names: list[str]) -> np.ndarray:
        """The model matrix by column position (one NumPy copy, no per-column pandas work:
        this runs on every request)."""
        cols = list(X.columns)
        values = X.to_numpy(dtype=float)
        pos = {c: j for j, c in enumerate(cols)}
        M = np.empty((len(X), len(names)))
        M[:, :-1] = values[:, [pos[n] for n in names[:-1]]]
        M[:, -1] = dev.deviation(values[:, pos["intake_score"]], values[:, pos["session"]],
                                 values[:, pos["latest_score"]])
        return M

    def fit(self, X, y, groups=None) -> GBMRisk:
        self._validate_params()
        frame, version, groups = unpack_rows(X, groups)
        if groups is None:
            raise ValueError("GBMRisk.fit needs groups (a client id per row) so that the "
                             "calibration folds never split a client")
        self._remember_features(frame, version)
        names = self._model_features(list(frame.columns))
        y = known_target(y, len(frame))
        groups = np.asarray(groups)
        keep = np.isfinite(y)
        frame, y, groups = frame.loc[keep], y[keep], groups[keep]
        n_cases = int(pd.unique(groups).size)
        if n_cases < self.min_training_cases:
            raise InsufficientDataError(type(self).__name__, n_cases, self.min_training_cases)
        if not np.isin(y, (0.0, 1.0)).all() or len(np.unique(y)) < 2:
            raise ValueError("y must be 0/1 with both classes present")
        order = canonical_order(groups, frame["session"].to_numpy(float))
        rows = np.flatnonzero(keep)[order]
        frame = frame.iloc[order].reset_index(drop=True)
        y, groups = y[order], groups[order]

        oof = np.empty(len(y))
        for train, test in GroupKFold(n_splits=self.n_splits).split(frame, y, groups):
            dev, clf = self._fit_one(frame.iloc[train], y[train], names)
            M = self._matrix_with(dev, frame.iloc[test], names)
            oof[test] = clf.booster_.predict(M, raw_score=True, num_threads=self.n_jobs)

        a, b = platt(oof, y, f"{type(self).__name__} ({self.target}, {self.instrument})")
        p_oof = expit(a * oof + b)
        threshold = choose_threshold(y, p_oof, self.threshold_rule, self.min_sensitivity)

        dev, clf = self._fit_one(frame, y, names)
        self.deviation_ = dev
        self.estimator_ = clf
        self.booster_ = clf.booster_
        self.feature_names_ = np.asarray(names, dtype=object)
        self.calibration_ = (a, b)
        self.threshold_ = threshold
        self.classes_ = np.array([0, 1])
        self.oof_logit_ = a * oof + b
        self.oof_proba_ = p_oof
        self.oof_rows_ = rows  # position of each out-of-fold value among the fitted rows
        self.cv_scores_ = {**binary_scores(y, p_oof, threshold), "n_rows": float(len(y)),
                           "n_clients": float(n_cases)}
        self.n_training_cases_ = n_cases
        return self

    # ---------------------------------------------------------------------------- request path
    def transform_features(self, X) -> np.ndarray:
        """The model matrix (columns `feature_names_`) for feature rows, after the checks."""
        frame = self._checked(X)
        return self._matrix_with(self.deviation_, frame, list(self.feature_names_))

    def predict_logit(self, X) -> np.ndarray:
        """Calibrated log-odds ``a * raw + b``."""
        check_is_fitted(self, "booster_")
        a, b = self.calibration_
        return a * self.booster_.predict(self.transform_features(X), raw_score=True,
                                         num_threads=self.n_jobs) + b

    def predict_proba(self, X) -> np.ndarray:
        p = expit(self.predict_logit(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        """1 = at risk (calibrated probability >= `threshold_`)."""
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)

    def contributions(self, X) -> np.ndarray:
        """TreeSHAP log-odds contributions on the calibrated logit scale.

        Shape (n, n_features + 1); columns follow `feature_names_`, the last is the intercept
        ``a * expected_value + b``. Each row sums to `predict_logit` exactly (up to float
        rounding). One ``booster_.predict(..., pred_contrib=True)`` call per batch.
        """
        check_is_fitted(self, "booster_")
        a, b = self.calibration_
        phi = self.booster_.predict(self.transform_features(X), pred_contrib=True,
                                   num_threads=self.n_jobs) * a
        phi[:, -1] += b
        return phi

    def logit_from_matrix(self, M: np.ndarray) -> np.ndarray:
        """Calibrated log-odds for a model matrix built by `transform_features` (the flag
        policy reads the risk at every past session; no contributions needed there)."""
        check_is_fitted(self, "booster_")
        a, b = self.calibration_
        return a * self.booster_.predict(M, raw_score=True, num_threads=self.n_jobs) + b

    def contributions_from_matrix(self, M: np.ndarray) -> np.ndarray:
        """`contributions` for a model matrix already built by `transform_features` (the
        service builds it once per request and reuses it for values and explanations)."""
        check_is_fitted(self, "booster_")
        a, b = self.calibration_
        phi = self.booster_.predict(M, pred_contrib=True, num_threads=self.n_jobs) * a
        phi[:, -1] += b
        return phi

    def explain(self, X) -> pd.DataFrame:
        """`contributions` as a DataFrame with named columns (``intercept`` last)."""
        return pd.DataFrame(self.contributions(X),
                            columns=[*self.feature_names_, "intercept"])
