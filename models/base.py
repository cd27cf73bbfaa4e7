"""What every OnTrack estimator shares: the feature contract, the rows it is given, the minimum
data, the at-risk threshold rule and the refusal of a model whose calibration failed.

Used by the risk models (`models.risk`, `models.baseline`, `models.expected_risk`), the
navigator (`models.neighbours`) and the recommender. May import `features` only (and
scientific libraries); never another `models` module, `training` or `serving`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve
from sklearn.utils.validation import check_is_fitted

from features.pointintime import FEATURE_NAMES, FEATURE_VERSION, FeatureFrame, check_features

__all__ = [
    "MIN_TRAINING_CASES", "InsufficientDataError", "CalibrationError", "FeatureContract",
    "platt", "choose_threshold", "binary_scores", "unpack_rows", "known_target", "canonical_order",
]

#: Giesemann et al. 2023 (n = 49,602): LightGBM needed about 300 training cases (clients).
MIN_TRAINING_CASES = 300


class InsufficientDataError(ValueError):
    """Too few training cases (clients with a known outcome) to fit a model responsibly."""

    def __init__(self, model: str, n_cases: int, minimum: int) -> None:
        super().__init__(
            f"{model} needs at least {minimum} training cases (clients with a known outcome); "
            f"got {n_cases}. Below about {minimum} cases LightGBM risk models were not reliable "
            "(Giesemann et al. 2023). Collect more data or use the expected-response signal only.")
        self.n_cases = n_cases
        self.minimum = minimum


class CalibrationError(ValueError):
    """The calibration step failed, so the fitted model would not be safe to serve (for
    example a non-positive Platt slope: a higher model score would mean a LOWER risk). The
    model is refused; it is never clipped into shape and shipped."""

    def __init__(self, model: str, detail: str) -> None:
        super().__init__(f"{model} refused: {detail}. A model whose calibration fails is not "
                         "served; check the outcome labels and the amount of data, or use the "
                         "expected-response signal only.")
        self.model = model
        self.detail = detail


def platt(logits: np.ndarray, y: np.ndarray, model: str) -> tuple[float, float]:
    """Platt scaling (Platt 1999): ``(a, b)`` of ``P(y=1) = expit(a * logit + b)`` fitted
    without penalty on out-of-fold logits. Raises `CalibrationError` unless ``a > 0``: with a
    non-positive slope a higher model score would mean a lower risk, the monotone constraints
    would be reversed and the drivers would point the wrong way."""
    fit = LogisticRegression(C=np.inf).fit(np.asarray(logits, float)[:, None],
                                           np.asarray(y).astype(int))
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if not a > 0:
        raise CalibrationError(model, f"out-of-fold logits do not rank the outcome (Platt "
                                      f"slope {a:.3g}, must be positive)")
    return a, b


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str = "sensitivity",
                     min_sensitivity: float = 0.80) -> float:
    """The at-risk threshold on out-of-fold probabilities (flag when p >= threshold).

    ``"sensitivity"``: highest threshold with sensitivity >= ``min_sensitivity``.
    ``"youden"``: threshold maximising sensitivity + specificity - 1.
    """
    fpr, tpr, thr = roc_curve(y, p)
    thr = np.minimum(thr, 1.0)  # the first threshold is +inf ("flag nobody")
    if rule == "sensitivity":
        i = int(np.flatnonzero(tpr >= min_sensitivity)[0])
    elif rule == "youden":
        i = int(np.argmax(tpr - fpr))
    else:
        raise ValueError(f"unknown threshold rule {rule!r}; expected 'sensitivity' or 'youden'")
    return float(thr[i])


def binary_scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    flag = p >= threshold
    pos, neg = y == 1, y == 0
    return {
        "auc": float(roc_auc_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "sensitivity": float(flag[pos].mean()),
        "specificity": float((~flag[neg]).mean()),
        "flag_rate": float(flag.mean()),
        "prevalence": float(y.mean()),
    }


def unpack_rows(X, groups=None) -> tuple[pd.DataFrame, str, np.ndarray | None]:
    """(feature DataFrame, feature version, groups) from a FeatureFrame or a DataFrame.

    A plain DataFrame is taken to be built by the installed feature code unless it says
    otherwise in ``X.attrs["feature_version"]``.
    """
    if isinstance(X, FeatureFrame):
        if groups is None:
            groups = X.keys["client_id"].to_numpy()
        return X.X, X.version, groups
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"expected feature rows as a DataFrame or FeatureFrame; got {type(X)}")
    return X, str(X.attrs.get("feature_version", FEATURE_VERSION)), groups


def known_target(y, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=float).ravel()
    if len(y) != n:
        raise ValueError(f"y has {len(y)} values for {n} feature rows")
    return y


def canonical_order(groups: np.ndarray, session: np.ndarray) -> np.ndarray:
    """Row order by (client, session): fitting does not depend on the order rows arrive in."""
    codes = pd.factorize(pd.Series(groups), sort=True)[0]
    return np.lexsort((session, codes))


class FeatureContract:
    """Mixin: store and check the feature version and names seen at fit."""

    def _remember_features(self, X: pd.DataFrame, version: str) -> None:
        check_features(FEATURE_VERSION, FEATURE_NAMES, version, list(X.columns))
        self.feature_version_ = version
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)

    def _checked(self, X) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_in_")
        frame, version, _ = unpack_rows(X)
        check_features(self.feature_version_, list(self.feature_names_in_), version,
                       list(frame.columns))
        return frame
