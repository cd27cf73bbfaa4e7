"""Learned adaptation suggestions for a client who is not on track.

Two estimators, both scikit-learn style (``__init__`` stores arguments, ``fit`` learns, fitted
attributes end in ``_``), both fitted on the *decision rows* of archived clients (one row per
client who went off track: features as of the decision session, the option received, its
propensity, the outcome; `training.recommend_eval.build_decision_data`):

* `NeighbourAdvantage` (personalised advantage from similar clients, after the Trier navigator):
  the k most similar archived clients as of the decision session (standardised matching
  features, Euclidean); per adaptation, the inverse-propensity-weighted (Hajek) rate of reliable
  improvement among those who received it and among those who did not; the gain is the
  difference, shrunk towards the whole archive's difference by ``prior_strength`` pseudo-clients.
* `UpliftGBM` (gradient-boosted uplift): a LightGBM baseline of the improvement by the end
  (intake to last score, in reliable-change units) and, per option, a small LightGBM fitted on
  the residuals of the clients who received it, weighted by 1 / propensity (a propensity-weighted
  T-learner on residuals, shrunk towards the option's mean effect by few, shallow trees). The
  gain in the chance of reliable improvement is read off a normal residual model:
  ``P(reliable | x, a) = Phi((m(x) + tau_a(x) - 1) / sigma)``. Drivers are the booster's SHAP
  contributions in clinical words (`models.explain.TEMPLATES`).

Both correct for who received what with the propensities: known in simulation, estimated on real
data (`PropensityModel`, multinomial logistic on the same features).

Every suggestion carries the *observational comparison* behind it: among the k similar archived
clients, how many received the adaptation and how many did not, their (weighted) rates of
reliable improvement with 95 % intervals (Wilson on the Kish effective sample size), and the
interval of the difference. An adaptation received by fewer than ``min_similar`` (at least
`MIN_SIMILAR`) of the similar clients, or missing by fewer than that, is never suggested; when no
adaptation qualifies the result is a fallback with the reason, and the service shows the
rule-based suggestions instead (`models.suggestions`).

Suggestions are prompts for a conversation, never orders; the comparison is observational.
Privacy: the fitted objects hold the archived clients' decision rows (features, option, outcome),
no ids.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from scipy.special import ndtr
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from features.instruments import ADAPTATIONS, get
from features.pointintime import CHECKLIST_FEATURES
from models.explain import TEMPLATES
from models.suggestions import PROMPTS as RULE_PROMPTS

#: Options at a decision point: no adaptation + the contract's adaptation codes.
OPTIONS: tuple[str, ...] = ("none", *ADAPTATIONS)
#: Fewest similar archived clients who received (and who did not receive) an adaptation for it
#: to be suggested. An OnTrack heuristic: at least 10.
MIN_SIMILAR = 10
Z95 = 1.959963984540054
#: z of the claims' simultaneous 95 % intervals: Bonferroni over the adaptations, two-sided
#: (Phi^-1(1 - 0.05 / (2 * 6)) = 2.638): under no personalised gain at all, the chance that any
#: adaptation's lower bound is above zero for a client is at most 2.5 %. The 95 % level is an
#: OnTrack choice (the usual one), not a clinical threshold from a source.
CLAIM_Z = 2.638257273476751
CLAIM_WORDS = "simultaneous 95 % interval over the adaptations, estimated on archived clients " \
              "held out from choosing the model's terms"

DEFAULT_MATCH_FEATURES: tuple[str, ...] = (
    "session", "intake_severity", "latest_severity", "change_rc", "slope_log",
    "sessions_missed", "max_gap", "alliance_latest", "alliance_min", "alliance_drop",
    "other_severity_latest", *CHECKLIST_FEATURES,
)
PROPENSITY_FEATURES: tuple[str, ...] = (
    "session", "latest_score", "latest_severity", "change_rc", "slope_log", "sessions_missed",
    "max_gap", "alliance_latest", "alliance_drop", "alliance_below_cutoff", *CHECKLIST_FEATURES,
)
LABELS = {
    "alliance_repair": "alliance repair", "motivation": "work on motivation and goals",
    "social_support": "work on social support", "life_events": "attention to life events",
    "medication_review": "a medication review", "change_approach": "a change of approach",
}
PROMPTS = RULE_PROMPTS  # one wording per adaptation, shared with the rules
SOURCE = "learned: similar clients (observational comparison)"


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}.get(
        n, f"number {n}")


# ------------------------------------------------------------------------------------------
# Result records
# ------------------------------------------------------------------------------------------
@dataclass
class LearnedSuggestion:
    """One adaptation for one client, with the evidence behind it."""

    adaptation: str
    gain: float  # estimated gain in the chance of reliable improvement (probability)
    lower: float  # 95 % interval of the observed difference among the similar clients
    upper: float
    n_similar: int  # similar clients who received the adaptation
    n_without: int  # similar clients who did not
    rate_with: float
    rate_with_ci: tuple[float, float]
    rate_without: float
    rate_without_ci: tuple[float, float]
    drivers: list[str] = field(default_factory=list)
    method: str = ""
    rank: int = 0  # position among the adaptations by estimated gain for this client (1 = top)
    # the honest claim (`RLearnerUplift.claims`): the estimated gain in the chance of reliable
    # improvement over the comparator, with its simultaneous 95 % interval; NaN = no claim made
    claim_gain: float = float("nan")
    claim_lower: float = float("nan")
    claim_upper: float = float("nan")
    versus: str = ""  # the comparator in words
    claimed: bool = False  # shown as learned: the interval's lower bound is above zero
    same_as_rules: bool = False  # the comparator is the rules' top, and it is this adaptation

    @property
    def prompt(self) -> str:
        return PROMPTS[self.adaptation]

    @property
    def rationale(self) -> str:
        lo_w, hi_w = self.rate_with_ci
        lo_o, hi_o = self.rate_without_ci
        text = (f"Observational comparison: of {self.n_similar + self.n_without} similar clients "
                f"as of the decision session, {_pct(self.rate_with)} [{_pct(lo_w)}–{_pct(hi_w)}] "
                f"of the {self.n_similar} who received {LABELS[self.adaptation]} reliably "
                f"improved vs {_pct(self.rate_without)} [{_pct(lo_o)}–{_pct(hi_o)}] of the "
                f"{self.n_without} who did not (difference {100 * (self.rate_with - self.rate_without):+.0f} "
                f"percentage points [{100 * self.lower:+.0f} to {100 * self.upper:+.0f}], "
                f"weighted for who received what). The {self.method} ranks it "
                f"{_ordinal(self.rank)} of the {len(ADAPTATIONS)} adaptations for this client's "
                "chance of reliable improvement.")
        if np.isfinite(self.claim_gain):
            text += (f" Estimated gain over {self.versus}: "
                     f"{100 * self.claim_gain:+.0f} percentage points "
                     f"[{100 * self.claim_lower:+.0f} to {100 * self.claim_upper:+.0f}] "
                     f"({CLAIM_WORDS}); "
                     + ("the archive supports it." if self.claimed else
                        "the archive cannot tell it apart from no gain."))
        if self.drivers:
            text += " What drove it: " + "; ".join(self.drivers) + "."
        return text


@dataclass
class Recommendation:
    """The ranked learned suggestions for one client, or the reason there are none."""

    suggestions: list[LearnedSuggestion]
    fallback_reason: str | None = None

    @property
    def top(self) -> str | None:
        return self.suggestions[0].adaptation if self.suggestions else None

    @property
    def claimed(self) -> list[LearnedSuggestion]:
        """The suggestions whose gain the archive supports (lower bound above zero)."""
        return [s for s in self.suggestions if s.claimed]

    @property
    def unclaimed_reason(self) -> str | None:
        """Why nothing is shown as learned: the fallback reason, or the top suggestion's
        interval when it includes zero; None when a suggestion is claimed."""
        if not self.suggestions:
            return self.fallback_reason
        if self.claimed:
            return None
        s = self.suggestions[0]
        if not np.isfinite(s.claim_gain):
            return None  # an estimator without claims: its ranking stands as before
        if s.same_as_rules:
            return (f"the learned ranking agrees with the rule-based suggestion "
                    f"({LABELS[s.adaptation]}); the rule-based suggestions are shown")
        return (f"the learned top suggestion ({LABELS[s.adaptation]}) has an estimated gain "
                f"over {s.versus} of {100 * s.claim_gain:+.0f} percentage points "
                f"[{100 * s.claim_lower:+.0f} to {100 * s.claim_upper:+.0f}], an interval "
                "that includes no gain, so the archive it was learned from cannot support it; "
                "the rule-based suggestions are shown")


def _pct(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{100 * p:.0f}%"


def wilson(p: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a proportion ``p`` from (effective) sample size ``n``."""
    p, n = np.asarray(p, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


# ------------------------------------------------------------------------------------------
# Propensities on real data
# ------------------------------------------------------------------------------------------
class PropensityModel(BaseEstimator):
    """Multinomial logistic model of the option received, on the decision-session features.

    Used when the propensities are not known (real data). Probabilities are floored at
    ``floor`` and renormalised so that inverse weights stay bounded.
    """

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


# ------------------------------------------------------------------------------------------
# Shared: the similar archived clients and the observational comparison
# ------------------------------------------------------------------------------------------
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


class _SimilarClients:
    """Neighbour index over the archived decision rows and the per-adaptation comparison."""

    def _fit_similar(self, X: pd.DataFrame, treatment, outcome, propensity) -> None:
        if self.min_similar < MIN_SIMILAR:
            raise ValueError(f"min_similar must be at least {MIN_SIMILAR}")
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


# ------------------------------------------------------------------------------------------
class NeighbourAdvantage(_SimilarClients, BaseEstimator):
    """Personalised advantage from the k most similar archived clients (see module docstring).

    Parameters
    ----------
    instrument : the outcome instrument (for the wording of the drivers).
    n_neighbors : k similar archived clients as of the decision session.
    match_features : decision-row columns forming the matching vector.
    prior_strength : pseudo-clients (per arm) at the whole archive's difference; shrinks the
        gain where few similar clients received an adaptation.
    min_similar : fewest similar clients with (and without) an adaptation to suggest it
        (>= MIN_SIMILAR).
    """

    method_label = "nearest-neighbour personalised advantage"

    def __init__(self, instrument: str = "PHQ-9", n_neighbors: int = 400,
                 match_features: Sequence[str] | None = None, prior_strength: float = 20.0,
                 min_similar: int = MIN_SIMILAR):
        self.instrument = instrument
        self.n_neighbors = n_neighbors
        self.match_features = match_features
        self.prior_strength = prior_strength
        self.min_similar = min_similar

    def fit(self, X: pd.DataFrame, treatment, outcome, propensity, improvement=None
            ) -> NeighbourAdvantage:
        """X: decision rows; treatment: option received (OPTIONS); outcome: 1 reliably improved
        by the end, 0 not, NaN unknown (dropped); propensity: (n, len(OPTIONS))."""
        self._fit_similar(X, treatment, outcome, propensity)
        return self

    def _gains(self, X: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
        ev = self.evidence(X, idx)
        n = self.prior_strength
        e = 1.0 / (1.0 / np.maximum(ev["neff_with"], 1e-9) + 1.0 / np.maximum(
            ev["neff_without"], 1e-9))
        d = np.where(np.isfinite(ev["diff"]), ev["diff"], 0.0)
        e = np.where(np.isfinite(ev["diff"]), e, 0.0)
        return (e * d + n * self.global_gain_[None, :]) / (e + n)

    def gains(self, X: pd.DataFrame) -> np.ndarray:
        """Estimated gain in the chance of reliable improvement, (n, len(ADAPTATIONS))."""
        return self._gains(X, self.neighbours(X))

    def recommend(self, X: pd.DataFrame, top: int | None = 3) -> list[Recommendation]:
        idx = self.neighbours(X)
        return self._rank(X, self._gains(X, idx), None, idx, self.method_label, top)


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


# ------------------------------------------------------------------------------------------
class RLearnerUplift(_ModelDrivers, BaseEstimator):
    """R-learner with penalised linear effects (Nie & Wager 2021, Biometrika 108:299).

    Robinson's decomposition, one arm per adaptation: with ``m(x)`` an out-of-fold LightGBM of
    the improvement (intake to last score, reliable-change units) and ``e(x)`` the propensities,
    the residual ``z - m(x)`` is regressed on ``(1[A = a] - e_a(x)) * b(x)`` for every
    adaptation a, where ``b(x)`` = 1, the standardised decision-row features and, for each
    checklist item, the steps "rated at least k" (k = 1..4; a domain is present or not, so its
    effect is a step in the rating, not a line). ``tau_a(x) = b(x) . beta_a`` is the effect
    of adaptation a against none. The L1 penalty is chosen by 5-fold cross-validation of this
    R-loss on the training rows (``alpha=None``), never on outcomes the evaluation sees.
    Known propensities make the estimate unbiased for any ``m``; ``m`` only removes noise.

    Drivers are exact SHAP values of the linear effect: ``beta_a,f * (x_f - mean_f)``,
    summed per decision-row feature, in clinical words.
    """

    method_label = "R-learner (penalised linear effects)"

    def __init__(self, instrument: str = "PHQ-9", n_neighbors: int = 400,
                 match_features: Sequence[str] | None = None, alpha: float | None = None,
                 baseline_estimators: int = 150, min_similar: int = MIN_SIMILAR,
                 random_state: int = 0):
        self.instrument = instrument
        self.n_neighbors = n_neighbors
        self.match_features = match_features
        self.alpha = alpha
        self.baseline_estimators = baseline_estimators
        self.min_similar = min_similar
        self.random_state = random_state

    def _raw_basis(self, X: pd.DataFrame) -> np.ndarray:
        M = _query(X).matrix(self.feature_names_)
        steps = []
        for j in self.step_columns_:
            v = M[:, j:j + 1]
            steps.append(np.where(np.isfinite(v), (v >= np.arange(1, 5)[None, :]) * 1.0,
                                  np.nan))
        return np.column_stack([M, *steps]) if steps else M

    def _basis(self, X: pd.DataFrame) -> np.ndarray:
        q = _query(X)
        if "basis" not in q.cache:
            Z = (self._raw_basis(q) - self.mean_b_) / self.scale_b_
            q.cache["basis"] = np.where(np.isfinite(Z), Z, 0.0)  # missing -> the archive mean
        return q.cache["basis"]

    def _level(self, X) -> np.ndarray:
        """The baseline's predicted improvement per row (once per query)."""
        q = _query(X)
        if "level" not in q.cache:
            q.cache["level"] = self.baseline_.booster_.predict(q.matrix(self.feature_names_))
        return q.cache["level"]

    def fit(self, X: pd.DataFrame, treatment, outcome, propensity, improvement=None
            ) -> RLearnerUplift:
        """As `UpliftGBM.fit`."""
        from sklearn.linear_model import Lasso, LassoCV

        self._fit_similar(X, treatment, outcome, propensity)
        y = np.asarray(outcome, float)
        z = y if improvement is None else np.asarray(improvement, float)
        keep = np.isfinite(y) & np.isfinite(z)
        self.feature_names_ = tuple(X.columns)
        self.step_columns_ = tuple(j for j, c in enumerate(self.feature_names_)
                                   if c in CHECKLIST_FEATURES)
        self.basis_names_ = self.feature_names_ + tuple(
            self.feature_names_[j] for j in self.step_columns_ for _ in range(4))
        M = X.to_numpy(float)[keep]
        z, A, P = z[keep], _codes(treatment)[keep], np.asarray(propensity, float)[keep]
        for a in range(1, len(OPTIONS)):
            if (A == a).sum() < 4 * self.min_similar:
                raise ValueError(f"only {int((A == a).sum())} archived clients received "
                                 f"{OPTIONS[a]}")
        self.target_ = "outcome" if improvement is None else "improvement_rc"
        fold = np.random.default_rng(self.random_state).integers(0, 3, len(z))
        m = np.zeros(len(z))
        for g in range(3):
            b = self._baseline().fit(M[fold != g], z[fold != g])
            m[fold == g] = b.predict(M[fold == g])
        self.baseline_ = self._baseline().fit(M, z)
        r = z - m
        self.sigma_ = float(np.std(r))
        self.mean_b_, self.scale_b_ = _standardiser(self._raw_basis(X.loc[keep]))
        B1 = np.column_stack([np.ones(len(z)), self._basis(X.loc[keep])])
        T = np.eye(len(OPTIONS))[A][:, 1:] - P[:, 1:]
        F = (T[:, :, None] * B1[:, None, :]).reshape(len(z), -1)
        if self.alpha is None:
            # the smallest penalties on the path may stop before converging; they are not the
            # ones chosen on small data, and the chosen one is refitted below with warnings on
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                cv = LassoCV(fit_intercept=False, cv=5, alphas=30, max_iter=5000, tol=1e-3,
                             random_state=self.random_state, n_jobs=1).fit(F, r)
            self.alpha_ = float(cv.alpha_)
        else:
            self.alpha_ = float(self.alpha)
        lasso = Lasso(alpha=self.alpha_, fit_intercept=False, max_iter=5000, tol=1e-3).fit(F, r)
        self.coef_ = lasso.coef_.reshape(len(ADAPTATIONS), B1.shape[1])
        self.mean_propensity_ = P[:, 1:].mean(axis=0)
        self._fit_honest(F, r, B1.shape[1])
        self.support_ = self._support(X.loc[keep], A)
        return self

    def _support(self, X: pd.DataFrame, A: np.ndarray) -> dict:
        """What the archive can and cannot support, for the model card: per adaptation, the
        archived clients who received it and the share of the archive's own decision rows for
        which its gain over the other adaptations on average is claimed."""
        c = self.claims(X)
        return {"decision_rows": int(len(X)), "interval": CLAIM_WORDS,
                "adaptations": {a: {"received": int((A == j + 1).sum()),
                                    "claimed_share": float(c["claimed"][:, j].mean())}
                                for j, a in enumerate(ADAPTATIONS)},
                "any_claimed_share": float(c["claimed"].any(axis=1).mean())}

    def support_words(self) -> str:
        """`support_` in a sentence."""
        check_is_fitted(self, "support_")
        s = self.support_
        parts = [f"{LABELS[a]} {100 * v['claimed_share']:.0f}%"
                 for a, v in s["adaptations"].items()]
        return (f"Fitted on {s['decision_rows']:,} archived decision rows; the gains behind "
                "the claims are estimated on each half of them with the terms chosen on the "
                f"other half ({s['interval']}). A learned suggestion is shown only where its "
                "gain's lower bound is above zero; on the archive's own rows the gain over the "
                "other adaptations on average is claimed for: " + ", ".join(parts)
                + f" (any: {100 * s['any_claimed_share']:.0f}%). Elsewhere the archive cannot "
                "tell the adaptations apart for a client and the rule-based suggestions are "
                "shown.")

    def _fit_honest(self, F: np.ndarray, r: np.ndarray, p: int) -> None:
        """The effects behind the claims, estimated honestly by sample splitting (as in honest
        causal forests, Athey & Imbens 2016) and cross-fitted (as in double machine learning,
        Chernozhukov et al. 2018): the archive's decision rows are split in two at random; on
        each half in turn the L1 path (penalty by 5-fold cross-validation) chooses the terms,
        and an unpenalised least-squares fit of the same R-loss on those terms (each
        adaptation's intercept always kept) on the OTHER half gives coefficients and their
        heteroscedasticity-robust (HC1) covariance. The two estimates are averaged, their
        covariances added and quartered (the halves are disjoint). The rows that estimate a
        coefficient never chose it, so selection neither widens nor narrows the interval."""
        from sklearn.linear_model import LassoCV

        rng = np.random.default_rng([self.random_state, 29])
        first = rng.random(len(r)) < 0.5
        q = len(ADAPTATIONS) * p
        coef, cov = np.zeros(q), np.zeros((q, q))
        for choose in (first, ~first):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                sel = LassoCV(fit_intercept=False, cv=5, alphas=30, max_iter=5000, tol=1e-3,
                              random_state=self.random_state, n_jobs=1).fit(F[choose],
                                                                            r[choose])
            keep = sel.coef_ != 0
            keep[np.arange(len(ADAPTATIONS)) * p] = True  # every adaptation's own intercept
            cols = np.flatnonzero(keep)
            G, y = F[~choose][:, cols], r[~choose]
            bread = np.linalg.pinv(G.T @ G)
            beta = bread @ (G.T @ y)
            e = y - G @ beta
            n, k = G.shape
            meat = (G * (e * e)[:, None]).T @ G
            coef[cols] += beta / 2
            cov[np.ix_(cols, cols)] += bread @ meat @ bread * (n / max(n - k, 1)) / 4
        used = np.flatnonzero(np.diag(cov) > 0)
        self.honest_columns_ = used
        self.honest_coef_ = coef.reshape(len(ADAPTATIONS), p)
        self.honest_cov_ = cov[np.ix_(used, used)]

    def claims(self, X: pd.DataFrame, versus: Sequence[str | None] | None = None
               ) -> dict[str, np.ndarray]:
        """Per row and adaptation (columns = ADAPTATIONS): the honest estimate of the gain in
        the chance of reliable improvement over the comparator, its simultaneous 95 % interval
        (Bonferroni over the adaptations, `CLAIM_Z`) and whether it is claimed (lower bound
        above zero). The comparator per row is ``versus[i]``, the rules' top adaptation, or,
        where that is None (no rule fires) or ``versus`` is not given, the average of the other
        adaptations. The gain is on the probability scale of `gains` (a normal residual model of
        the improvement), its standard error by the delta method with the level held fixed."""
        check_is_fitted(self, "honest_coef_")
        n = len(X)
        vs = [None] * n if versus is None else list(versus)
        if len(vs) != n or any(v is not None and v not in ADAPTATIONS for v in vs):
            raise ValueError("versus must give, per row, an adaptation of ADAPTATIONS or None")
        step = 1000  # the gradients are (rows, adaptations, terms): bounded memory
        q = _query(X)
        parts = [self._claims_block(q if n <= step else q.rows(i, i + step), vs[i:i + step])
                 for i in range(0, max(n, 1), step)]
        return {key: np.concatenate([q[key] for q in parts]) for key in parts[0]}

    def _claims_block(self, X: pd.DataFrame, vs: list[str | None]) -> dict[str, np.ndarray]:
        n, k = len(X), len(ADAPTATIONS)
        W = np.full((n, k, k), 0.0)  # W[i, a, b]: weight of adaptation b in a's contrast
        for i, v in enumerate(vs):
            if v is None:
                W[i] = -(1.0 - np.eye(k)) / (k - 1)
            else:
                W[i, :, ADAPTATIONS.index(v)] = -1.0
            W[i][np.diag_indices(k)] += 1.0
        B1 = np.column_stack([np.ones(n), self._basis(X)])
        tau = B1 @ self.honest_coef_.T  # (n, k)
        if self.target_ == "outcome":
            slope = np.ones((n, k))
            level = tau
        else:
            m = self._level(X)
            u = ((m - tau @ self.mean_propensity_)[:, None] + tau - 1.0) / self.sigma_
            level = ndtr(u)
            slope = np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi) / self.sigma_
        gain = np.einsum("iab,ib->ia", W, level)
        # gradient of gain[i, a] in the stacked coefficients (b, f), on the kept columns only
        Dw = W * slope[:, None, :]  # (n, a, b)
        grad = (Dw[:, :, :, None] * B1[:, None, None, :]).reshape(n, k, -1)
        g = grad[:, :, self.honest_columns_]
        var = np.einsum("iac,cd,iad->ia", g, self.honest_cov_, g)
        se = np.sqrt(np.maximum(var, 0.0))
        same = np.zeros((n, k), dtype=bool)
        for i, v in enumerate(vs):
            if v is not None:
                same[i, ADAPTATIONS.index(v)] = True
        lower, upper = gain - CLAIM_Z * se, gain + CLAIM_Z * se
        lower[same] = upper[same] = gain[same] = 0.0
        words = np.array([f"the rule-based suggestion ({LABELS[v]})" if v is not None else
                          "the other adaptations on average" for v in vs], dtype=object)
        return {"gain": gain, "lower": lower, "upper": upper, "claimed": lower > 0,
                "same": same, "versus": words}

    def recommend(self, X: pd.DataFrame, top: int | None = 3,
                  versus: Sequence[str | None] | None = None) -> list[Recommendation]:
        """As the other estimators, each suggestion with its honest claim against ``versus``
        (see `claims`)."""
        q = _query(X)
        idx = self.neighbours(q)
        return self._rank(q, self._gains(q, idx), self._drivers(q), idx, self.method_label,
                          top, claims=self.claims(q, versus))

    def claimed_top(self, X: pd.DataFrame, versus: Sequence[str | None] | None = None
                    ) -> np.ndarray:
        """The top adaptation per row where its gain is claimed (as the service shows it);
        None where nothing is claimed (the caller shows the rules)."""
        X = _query(X)
        idx = self.neighbours(X)
        ev = self.evidence(X, idx)
        ok = ((ev["n_with"] >= self.min_similar) & (ev["n_without"] >= self.min_similar)
              & self.claims(X, versus)["claimed"])
        best = np.where(ok, self._gains(X, idx), -np.inf).argmax(axis=1)
        names = np.array(ADAPTATIONS, dtype=object)[best]
        return np.where(ok.any(axis=1), names, None)

    def _baseline(self) -> LGBMRegressor:
        return _lgbm(self.baseline_estimators, 15, 50, 0.05, self.random_state)

    def effects(self, X: pd.DataFrame) -> np.ndarray:
        """tau_a(x): effect of each adaptation against none on the improvement, in
        reliable-change units (or on the 0/1 outcome), (n, len(ADAPTATIONS))."""
        check_is_fitted(self, "coef_")
        B = self._basis(X)
        return self.coef_[:, 0][None, :] + B @ self.coef_[:, 1:].T

    def _gains(self, X: pd.DataFrame, idx: np.ndarray | None = None) -> np.ndarray:
        tau = self.effects(X)
        if self.target_ == "outcome":
            return tau
        m = self._level(X)
        mu0 = m - tau @ self.mean_propensity_  # level without an adaptation (approximately)
        return (ndtr((mu0[:, None] + tau - 1.0) / self.sigma_)
                - ndtr((mu0[:, None] - 1.0) / self.sigma_))

    def gains(self, X: pd.DataFrame) -> np.ndarray:
        return self._gains(X)

    def _drivers(self, X: pd.DataFrame, top: int = 2) -> list[list[list[str]]]:
        """Per row and adaptation: the decision-row features with the largest exact SHAP
        contributions to that adaptation's effect, in clinical words."""
        B = self._basis(X)  # standardised: contribution = beta * z
        names = np.array(self.basis_names_, dtype=object)
        base = list(dict.fromkeys(self.basis_names_))
        groups = np.array([base.index(n) for n in names])
        contributions = []
        for j in range(len(ADAPTATIONS)):
            C = np.zeros((len(X), len(base)))
            np.add.at(C.T, groups, (B * self.coef_[j, 1:][None, :]).T)
            contributions.append(C)
        return self._worded(X, base, contributions, top, floor=MIN_DRIVER)


def _standardiser(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the mean and SD of the finite values; 0 and 1 for a column without any
    (e.g. a checklist nobody filled in) or without spread."""
    M = np.where(np.isfinite(M), M, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column
        mu, sd = np.nanmean(M, axis=0), np.nanstd(M, axis=0)
    return np.where(np.isfinite(mu), mu, 0.0), np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)


#: Smallest contribution (reliable-change units, about 0.06 PHQ-9 points) worth naming.
MIN_DRIVER = 0.01


def _clause(text: str) -> str:
    """A sentence as a clause: first letter lower-cased unless it starts an acronym."""
    if len(text) > 1 and text[1].isupper():
        return text
    return text[0].lower() + text[1:]


def top_from_gains(gains: np.ndarray) -> np.ndarray:
    """Index into ADAPTATIONS of the highest gain per row."""
    return np.asarray(gains).argmax(axis=1)

