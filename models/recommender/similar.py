"""Shared by the three estimators: the similar archived clients and the observational comparison.

Every suggestion carries the *observational comparison* behind it: among the k similar archived
clients, how many received the adaptation and how many did not, their (weighted) rates of
reliable improvement with 95 % intervals (Wilson on the Kish effective sample size), and the
interval of the difference. An adaptation received by fewer than ``min_similar`` (at least
`MIN_SIMILAR`) of the similar clients, or missing by fewer than that, is never suggested; when no
adaptation qualifies the result is a fallback with the reason, and the service shows the
rule-based suggestions instead (`models.suggestions`).

Here: the coding of the option received, the query rows converted once per call (`_Query`), the
per-column standardiser, and the `_SimilarClients` mixin (neighbour index, inverse-propensity
(Hajek) rates with Kish effective sample sizes, the comparison, the ranking into
`Recommendation` records). The estimators add the gains (and, for the model-based ones, the
drivers).

Imports: numpy, pandas, scikit-learn, `features`, `models.explain`, `models.recommender.evidence`
and `models.recommender.wording`; never an estimator module of this package.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from features.instruments import ADAPTATIONS, get
from features.pointintime import CHECKLIST_FEATURES
from features.thresholds import MIN_SIMILAR
from models.explain import TEMPLATES
from models.recommender.evidence import (
    OPTIONS,
    Z95,
    LearnedSuggestion,
    Recommendation,
    wilson,
)
from models.recommender.wording import _clause

DEFAULT_MATCH_FEATURES: tuple[str, ...] = (
    "session", "intake_severity", "latest_severity", "change_rc", "slope_log",
    "sessions_missed", "max_gap", "alliance_latest", "alliance_min", "alliance_drop",
    "other_severity_latest", *CHECKLIST_FEATURES,
)


def _codes(treatment) -> np.ndarray:
    t = pd.Categorical(np.asarray(treatment, dtype=object), categories=OPTIONS).codes
    if (t < 0).any():
        raise ValueError("treatment must be one of " + ", ".join(OPTIONS))
    return t.astype(np.int64)


class _Query:
    """One call's query rows, each conversion made once: the frame's columns as a float matrix
    (and the arrays derived from it, such as the basis and the baseline's predictions), shared
    by the neighbours, the gains, the claims and the wording of one `recommend` call. Every
    method that takes a frame takes one of these too."""

    __slots__ = ("frame", "cache", "_full", "_pos")

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.cache: dict = {}
        self._full: np.ndarray | bool | None = None
        self._pos = {c: j for j, c in enumerate(frame.columns)}

    def __len__(self) -> int:
        return len(self.frame)

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """``frame[names].to_numpy(float)``, from one conversion of the whole frame."""
        key = ("matrix", tuple(names))
        if key not in self.cache:
            if self._full is None:
                try:
                    self._full = self.frame.to_numpy(float)
                except (TypeError, ValueError):  # a column that is not numeric: select first
                    self._full = False
            if self._full is not False and all(n in self._pos for n in names):
                self.cache[key] = self._full[:, [self._pos[n] for n in names]]
            else:  # a missing column raises the frame's own error
                self.cache[key] = self.frame[list(names)].to_numpy(float)
        return self.cache[key]

    def records(self, names: Sequence[str]) -> list[dict[str, float]]:
        """``frame[names].to_dict("records")`` from the matrix."""
        names = list(names)
        return [dict(zip(names, row, strict=True)) for row in self.matrix(names).tolist()]

    def rows(self, start: int, stop: int) -> _Query:
        return _Query(self.frame.iloc[start:stop])


def _query(X) -> _Query:
    return X if isinstance(X, _Query) else _Query(X)


#: The parameters every similar-clients estimator shares, as scikit-learn constraints.
SIMILAR_CONSTRAINTS: dict = {
    "instrument": [str],
    "n_neighbors": [Interval(Integral, 1, None, closed="left")],
    "match_features": ["array-like", None],
    "min_similar": [Interval(Integral, MIN_SIMILAR, None, closed="left")],
}


class _SimilarClients:
    """Neighbour index over the archived decision rows and the per-adaptation comparison."""

    def _fit_similar(self, X: pd.DataFrame, treatment, outcome, propensity) -> None:
        self._validate_params()  # the estimator's `_parameter_constraints`, before any work
        names = list(self.match_features or DEFAULT_MATCH_FEATURES)
        missing = [c for c in names if c not in X.columns]
        if missing:
            raise ValueError(f"missing feature columns: {missing}")
        y = np.asarray(outcome, float)
        P = np.asarray(propensity, float)
        if P.shape != (len(X), len(OPTIONS)) or not np.isfinite(P).all() or (P <= 0).any():
            raise ValueError(f"propensity must be a positive (n, {len(OPTIONS)}) array")
        keep = np.isfinite(y)
        self.match_features_ = tuple(names)
        self.mean_, self.scale_ = _standardiser(X.loc[keep, names].to_numpy(float))
        self.treatment_ = _codes(treatment)[keep]
        self.outcome_ = y[keep]
        self.propensity_ = P[keep]
        self.n_archive_ = int(keep.sum())
        k = min(self.n_neighbors, self.n_archive_)
        if k < 2 * self.min_similar:
            raise ValueError(f"{self.n_archive_} archived decision rows with a known outcome: "
                             f"too few for {self.min_similar} similar cases per arm")
        self.k_ = k
        self.index_ = NearestNeighbors(n_neighbors=k).fit(self._standardised(X.loc[keep]))
        # whole-archive weighted difference per adaptation (the shrinkage target)
        self.global_gain_ = np.array([self._weighted(
            self.treatment_[None, :], self.outcome_[None, :], self.propensity_[None, :, :], a)[4][0]
            for a in range(1, len(OPTIONS))])

    def _standardised(self, X: pd.DataFrame) -> np.ndarray:
        Z = (_query(X).matrix(self.match_features_) - self.mean_) / self.scale_
        return np.where(np.isfinite(Z), Z, 0.0)  # missing -> the mean

    @staticmethod
    def _weighted(A, y, P, a):
        """Hajek rates with / without option ``a`` over rows of neighbour sets."""
        got = A == a
        w1 = np.where(got, 1.0 / P[..., a], 0.0)
        w0 = np.where(~got, 1.0 / (1.0 - P[..., a]), 0.0)
        s1, s0 = w1.sum(-1), w0.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r1, r0 = (w1 * y).sum(-1) / s1, (w0 * y).sum(-1) / s0
            e1 = s1 ** 2 / (w1 ** 2).sum(-1)  # Kish effective sample sizes
            e0 = s0 ** 2 / (w0 ** 2).sum(-1)
        return r1, r0, e1, e0, r1 - r0, got.sum(-1), (~got).sum(-1)

    def neighbours(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "index_")
        return self.index_.kneighbors(self._standardised(X), return_distance=False)

    def evidence(self, X: pd.DataFrame, idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per query row and adaptation (columns = ADAPTATIONS): counts, weighted rates with
        and without, their Wilson intervals, and the difference with its 95 % interval."""
        idx = self.neighbours(X) if idx is None else idx
        A, y, P = self.treatment_[idx], self.outcome_[idx], self.propensity_[idx]
        out = {k: np.full((len(idx), len(ADAPTATIONS)), np.nan) for k in (
            "rate_with", "rate_without", "with_lo", "with_hi", "without_lo", "without_hi",
            "diff", "diff_lo", "diff_hi", "n_with", "n_without", "neff_with", "neff_without")}
        for j, a in enumerate(range(1, len(OPTIONS))):
            r1, r0, e1, e0, d, n1, n0 = self._weighted(A, y, P, a)
            lo1, hi1 = wilson(r1, e1)
            lo0, hi0 = wilson(r0, e0)
            with np.errstate(invalid="ignore", divide="ignore"):
                se = np.sqrt(r1 * (1 - r1) / e1 + r0 * (1 - r0) / e0)
            for key, v in (("rate_with", r1), ("rate_without", r0), ("with_lo", lo1),
                           ("with_hi", hi1), ("without_lo", lo0), ("without_hi", hi0),
                           ("diff", d), ("diff_lo", d - Z95 * se), ("diff_hi", d + Z95 * se),
                           ("n_with", n1), ("n_without", n0), ("neff_with", e1),
                           ("neff_without", e0)):
                out[key][:, j] = v
        return out

    def _shared_traits(self, X: pd.DataFrame, idx: np.ndarray, top: int = 2) -> list[list[str]]:
        """The traits the similar clients share with each query: the matching features on which
        the query is furthest from the archive average (so the neighbours are selected on them),
        in clinical words."""
        Zq = self._standardised(X)
        inst = get(self.instrument)
        rows = _query(X).records(self.match_features_)
        out = []
        for i, row in enumerate(rows):
            order = np.argsort(-np.abs(Zq[i]), kind="stable")
            words, seen = [], set()
            for j in order:
                name = self.match_features_[j]
                text = TEMPLATES[name].template(row[name], inst, row) if name in TEMPLATES else name
                if TEMPLATES.get(name) and TEMPLATES[name].concept in seen:
                    continue
                seen.add(TEMPLATES[name].concept if name in TEMPLATES else name)
                words.append(_clause(text) if text else text)
                if len(words) == top:
                    break
            out.append([f"similar clients share this one's trait: {w}" for w in words])
        return out

    def _rank(self, X: pd.DataFrame, gains: np.ndarray, drivers: list[list[list[str]]] | None,
              idx: np.ndarray, method: str, top: int | None,
              claims: dict[str, np.ndarray] | None = None) -> list[Recommendation]:
        ev = self.evidence(X, idx)
        C = {k: v.tolist() for k, v in claims.items()} if claims is not None else None
        enough = (ev["n_with"] >= self.min_similar) & (ev["n_without"] >= self.min_similar)
        traits = self._shared_traits(X, idx) if drivers is None else None
        # plain Python lists: indexing NumPy scalars one by one costs more than the ranking
        order_all = np.argsort(-gains, axis=1, kind="stable").tolist()
        enough_l = enough.tolist()
        n_with_max = np.nanmax(ev["n_with"], axis=1).tolist()
        E = {k: v.tolist() for k, v in ev.items()}
        g = gains.tolist()
        out = []
        for i in range(len(X)):
            order = [j for j in order_all[i] if enough_l[i][j]]
            if not order:
                best = int(n_with_max[i])
                out.append(Recommendation([], (
                    f"not enough similar cases: no adaptation was received by at least "
                    f"{self.min_similar} of the {self.k_} most similar archived clients (at most "
                    f"{best}); the rule-based suggestions are shown instead")))
                continue
            items = [LearnedSuggestion(
                adaptation=ADAPTATIONS[j], gain=g[i][j],
                lower=E["diff_lo"][i][j], upper=E["diff_hi"][i][j],
                n_similar=int(E["n_with"][i][j]), n_without=int(E["n_without"][i][j]),
                rate_with=E["rate_with"][i][j],
                rate_with_ci=(E["with_lo"][i][j], E["with_hi"][i][j]),
                rate_without=E["rate_without"][i][j],
                rate_without_ci=(E["without_lo"][i][j], E["without_hi"][i][j]),
                drivers=traits[i] if drivers is None else drivers[i][j], method=method,
                rank=order_all[i].index(j) + 1,
                **({} if C is None else {
                    "claim_gain": C["gain"][i][j], "claim_lower": C["lower"][i][j],
                    "claim_upper": C["upper"][i][j], "versus": C["versus"][i],
                    "claimed": C["claimed"][i][j], "same_as_rules": C["same"][i][j]}))
                for j in order[:top]]
            out.append(Recommendation(items))
        return out

    def top_adaptation(self, X: pd.DataFrame) -> np.ndarray:
        """The highest-gain adaptation per row among those with enough similar cases; None where
        there is none (the caller falls back to the rules)."""
        idx = self.neighbours(X)
        gains = self._gains(X, idx)
        ev = self.evidence(X, idx)
        ok = (ev["n_with"] >= self.min_similar) & (ev["n_without"] >= self.min_similar)
        g = np.where(ok, gains, -np.inf)
        best = g.argmax(axis=1)
        names = np.array(ADAPTATIONS, dtype=object)[best]
        return np.where(ok.any(axis=1), names, None)


def _standardiser(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the mean and SD of the finite values; 0 and 1 for a column without any
    (e.g. a checklist nobody filled in) or without spread."""
    M = np.where(np.isfinite(M), M, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column
        mu, sd = np.nanmean(M, axis=0), np.nanstd(M, axis=0)
    return np.where(np.isfinite(mu), mu, 0.0), np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
