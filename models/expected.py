"""Expected treatment response: the expected course of one instrument's score, by intake severity.

Finch, Lambert & Schaalje (2001), *Psychotherapy outcome: the expected treatment response*
(Clin Psychol Psychother 8:231; n = 11,492, OQ-45): the score is modelled on log(session number)
for sessions 1-20, stratified by intake score; tolerance intervals around each session's expected
score form the alarm boundaries.

What is implemented here (per instrument):

* **Strata** on the intake score: quantile bands of the training intakes (``n_strata``), merged
  until every stratum holds at least ``min_stratum`` trajectory points; or explicit ``edges``
  (e.g. the registry's cut-off) when given.
* **Curve** per stratum k, least squares on the post-intake points (session >= 2)::

      score = a_k + c_k * (intake - m_k) + (b_k + d_k * (intake - m_k)) * log(session)

  i.e. the published ``a_k + b_k * log(session)`` with the intake (centred on the stratum mean
  m_k) as a covariate inside the stratum. At session 1 the expected score IS the intake.
* **Band**: empirical residual quantiles per stratum and session. A cell with fewer than
  ``min_cell`` residuals is pooled with neighbouring sessions (a window of at least
  ``session_window`` sessions either side, widened one session at a time), then with all
  strata. ``lower``/``upper`` are the central ``coverage`` interval (default 90 %: the 5th and
  95th percentiles); ``median`` is the fitted curve plus the median
  residual.
* **Failure boundary** = the bound of that interval on the worse side (``upper`` when a higher
  score is worse, ``lower`` for ORS-like instruments), as in the Trier navigator (Lutz et al.
  2005: "the upper bound of the 90 % interval around the expected course").

Sessions beyond ``max_session`` use the ``max_session`` curve and band (the published curves
stop at session 20). Everything is vectorised over arrays of clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from features.instruments import get
from features.pointintime import expected_deviation
from features.thresholds import BAND_COVERAGE  # the not-on-track boundary is its upper bound

#: Column appended by `ExpectedDeviation`.
DEVIATION_COLUMN = "expected_deviation"

_REQUIRED = ("intake_score", "session", "score")


def _as_points(X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intake, session, score) arrays from trajectory points or feature rows."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError("ExpectedResponse.fit expects a DataFrame with columns "
                        "intake_score, session, score (or latest_score)")
    score_col = "score" if "score" in X.columns else "latest_score"
    missing = [c for c in ("intake_score", "session") if c not in X.columns]
    if score_col not in X.columns:
        missing.append("score")
    if missing:
        raise ValueError(f"missing columns {missing}; expected {list(_REQUIRED)} "
                         f"(or latest_score for score); got {list(X.columns)}")
    return (X["intake_score"].to_numpy(dtype=float), X["session"].to_numpy(dtype=float),
            X[score_col].to_numpy(dtype=float))


def trajectory_points(wide: pd.DataFrame) -> pd.DataFrame:
    """Long trajectory points (intake_score, session, score) from a wide score matrix.

    ``wide``: one row per client, columns = session numbers 1..S, NaN = no score (e.g.
    `models.neighbours.trajectory_matrix`). The intake is the score at the first session the
    client has one. Use this to fit `ExpectedResponse` on whole courses (sessions 1..20)
    rather than on feature rows, which often stop at session 6.
    """
    values = wide.to_numpy(dtype=float)
    sessions = np.asarray(wide.columns, dtype=float)
    has = ~np.isnan(values)
    first = np.argmax(has, axis=1)
    intake = np.where(has.any(axis=1), values[np.arange(len(values)), first], np.nan)
    r, c = np.nonzero(has)
    return pd.DataFrame({"intake_score": intake[r], "session": sessions[c], "score": values[r, c]})


def _quantile_edges(intake: np.ndarray, n_strata: int, min_stratum: int) -> np.ndarray:
    """Interior stratum edges: quantiles of the intakes, fewest merges so that each >= min."""
    for k in range(max(int(n_strata), 1), 1, -1):
        edges = np.unique(np.quantile(intake, np.linspace(0.0, 1.0, k + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, intake, side="right"),
                             minlength=len(edges) + 1)
        if counts.min() >= min_stratum:
            return edges
    return np.empty(0)


def _design(ic: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones_like(ic), ic, log_s, ic * log_s])


#: The course parameters as scikit-learn constraints.
_COURSE_CONSTRAINTS: dict = {
    "instrument": [str],
    "n_strata": [Interval(Integral, 1, None, closed="left")],
    "edges": ["array-like", None],
    "min_stratum": [Interval(Integral, 1, None, closed="left")],
    "min_cell": [Interval(Integral, 1, None, closed="left")],
    "coverage": [Interval(Real, 0, 1, closed="neither")],
    "max_session": [Interval(Integral, 1, None, closed="left")],
    "session_window": [Interval(Integral, 0, None, closed="left")],
}


class _CourseParameters:
    """The parameters `ExpectedResponse` and `ExpectedDeviation` share (documented on
    `ExpectedResponse`), declared once."""

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = _COURSE_CONSTRAINTS

    def __init__(self, instrument: str = "PHQ-9", n_strata: int = 5,
                 edges: Sequence[float] | None = None, min_stratum: int = 100,
                 min_cell: int = 30, coverage: float = BAND_COVERAGE, max_session: int = 20,
                 session_window: int = 1):
        self.instrument = instrument
        self.n_strata = n_strata
        self.edges = edges
        self.min_stratum = min_stratum
        self.min_cell = min_cell
        self.coverage = coverage
        self.max_session = max_session
        self.session_window = session_window


class ExpectedResponse(_CourseParameters, BaseEstimator):
    """Expected course of one instrument's score given the intake score (Finch et al. 2001).

    Parameters
    ----------
    instrument : registry code of the outcome instrument (sets direction and score range).
    n_strata : number of intake-severity strata (quantile bands), reduced until each stratum
        holds ``min_stratum`` points. Ignored when ``edges`` is given.
    edges : explicit interior stratum edges on the intake score (e.g. ``(10, 15, 20)``).
    min_stratum : minimum trajectory points per stratum.
    min_cell : minimum residuals per (stratum, session) cell before pooling.
    coverage : central coverage of the band (0.90 -> 5th and 95th percentiles).
    max_session : last session with its own curve value and band.
    session_window : residuals of sessions s +- session_window always share a cell, which keeps
        the band from zig-zagging between adjacent sessions.
    """

    # -------------------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y=None) -> ExpectedResponse:
        """Fit on trajectory points: columns intake_score, session, score (or latest_score)."""
        self._validate_params()
        inst = get(self.instrument)
        intake, session, score = _as_points(X)
        keep = np.isfinite(intake) & np.isfinite(session) & np.isfinite(score) & (session >= 2)
        intake, session, score = intake[keep], np.rint(session[keep]), score[keep]
        if len(score) < max(self.min_cell, 4):
            raise ValueError(f"ExpectedResponse needs at least {max(self.min_cell, 4)} "
                             f"post-intake points (session >= 2); got {len(score)}")
        S = int(self.max_session)
        session = np.minimum(session, S)

        if self.edges is not None:
            edges = np.unique(np.asarray(self.edges, dtype=float))
        else:
            edges = _quantile_edges(intake, self.n_strata, self.min_stratum)
        stratum = np.searchsorted(edges, intake, side="right")
        K = len(edges) + 1

        log_s = np.log(session)
        centers = np.zeros(K)
        coef = np.zeros((K, 4))
        resid = np.empty_like(score)
        for k in range(K):
            m = stratum == k
            if not m.any():  # possible only with explicit edges
                centers[k] = edges[min(k, len(edges) - 1)]
                continue
            centers[k] = intake[m].mean()
            D = _design(intake[m] - centers[k], log_s[m])
            coef[k] = np.linalg.lstsq(D, score[m], rcond=None)[0]
            resid[m] = score[m] - D @ coef[k]
        # Strata left empty by explicit edges borrow the nearest fitted stratum's curve.
        counts = np.bincount(stratum, minlength=K)
        fitted = np.flatnonzero(counts > 0)
        for k in np.flatnonzero(counts == 0):
            coef[k] = coef[fitted[np.argmin(np.abs(fitted - k))]]

        alpha = (1.0 - self.coverage) / 2.0
        probs = np.array([alpha, 0.5, 1.0 - alpha])
        table = np.zeros((K, S + 1, 3))
        cell_n = np.zeros((K, S + 1), dtype=int)
        window = np.zeros((K, S + 1), dtype=int)
        for k in range(K):
            r_k, s_k = resid[stratum == k], session[stratum == k]
            for s in range(2, S + 1):
                chosen = None
                for w in range(int(self.session_window), S):
                    sel = r_k[np.abs(s_k - s) <= w]
                    if len(sel) >= self.min_cell:
                        chosen = sel
                        break
                if chosen is None:  # pool across strata
                    w = S
                    chosen = resid
                    for ww in range(int(self.session_window), S):
                        sel = resid[np.abs(session - s) <= ww]
                        if len(sel) >= self.min_cell:
                            chosen, w = sel, ww
                            break
                table[k, s] = np.quantile(chosen, probs)
                cell_n[k, s], window[k, s] = len(chosen), w

        self.instrument_ = inst
        self.edges_ = edges
        self.centers_ = centers
        self.coef_ = coef
        self.residual_quantiles_ = table
        self.cell_counts_ = cell_n
        self.pooling_window_ = window
        self.n_points_ = int(len(score))
        self.max_fitted_session_ = int(session.max())  # later sessions are extrapolated
        self.n_per_stratum_ = counts
        return self

    # -------------------------------------------------------------------------------------
    @property
    def n_strata_(self) -> int:
        check_is_fitted(self, "coef_")
        return int(self.coef_.shape[0])

    def expected(self, intake, session) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(median, lower, upper, boundary) for each (intake, session) pair, broadcast.

        ``boundary`` is the failure boundary: ``upper`` when a higher score is worse, ``lower``
        when it is better. NaN where the intake or session is missing.
        """
        check_is_fitted(self, "coef_")
        inst = self.instrument_
        intake, session = np.broadcast_arrays(np.asarray(intake, dtype=float),
                                              np.asarray(session, dtype=float))
        ok = np.isfinite(intake) & np.isfinite(session)
        i = np.where(ok, intake, 0.0)
        s = np.clip(np.rint(np.where(ok, session, 1.0)), 1, self.max_session).astype(int)
        k = np.searchsorted(self.edges_, i, side="right")
        log_s = np.log(s)
        ic = i - self.centers_[k]
        c = self.coef_[k]
        curve = c[..., 0] + c[..., 1] * ic + (c[..., 2] + c[..., 3] * ic) * log_s
        q = self.residual_quantiles_[k, s]
        at_intake = s <= 1
        lower, median, upper = (np.where(at_intake, i, curve + q[..., j]) for j in range(3))
        lo, hi = inst.score_min, inst.score_max
        median, lower, upper = (np.where(ok, np.clip(a, lo, hi), np.nan)
                                for a in (median, lower, upper))
        boundary = lower if inst.higher_is_better else upper
        return median, lower, upper, boundary.copy()

    def course(self, intake: float, sessions: Sequence[int] | None = None) -> pd.DataFrame:
        """Expected course for one client: columns session, median, lower, upper, boundary.

        ``sessions`` defaults to 1..max_session; the service passes the next few sessions.
        """
        check_is_fitted(self, "coef_")
        s = np.arange(1, self.max_session + 1) if sessions is None else np.asarray(sessions)
        median, lower, upper, boundary = self.expected(np.full(s.shape, float(intake)), s)
        return pd.DataFrame({"session": s, "median": median, "lower": lower, "upper": upper,
                             "boundary": boundary})


class ExpectedDeviation(TransformerMixin, _CourseParameters, BaseEstimator):
    """Pipeline step: fit an `ExpectedResponse` on the training rows, append `expected_deviation`.

    Input: feature rows with ``intake_score``, ``session`` and ``latest_score``. The appended
    column is ``expected_deviation(latest_score, expected median, instrument)`` (positive =
    worse than expected, in RCI units). Fitting it inside each cross-validation fold keeps the
    held-out clients out of the expected curve.
    """

    def fit(self, X: pd.DataFrame, y=None) -> ExpectedDeviation:
        self._validate_params()
        self._check_input(X)
        params = {k: getattr(self, k) for k in ExpectedResponse().get_params()}
        self.expected_ = ExpectedResponse(**params).fit(
            X[["intake_score", "session", "latest_score"]])
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    @staticmethod
    def _check_input(X) -> None:
        if not isinstance(X, pd.DataFrame):
            raise TypeError("ExpectedDeviation expects a DataFrame of feature rows")
        missing = [c for c in ("intake_score", "session", "latest_score") if c not in X.columns]
        if missing:
            raise ValueError(f"ExpectedDeviation: missing columns {missing}")

    def deviation(self, intake, session, latest) -> np.ndarray:
        """The deviation as an array (the NumPy path used on the request path)."""
        check_is_fitted(self, "expected_")
        median = self.expected_.expected(intake, session)[0]
        return np.asarray(expected_deviation(np.asarray(latest, dtype=float), median,
                                             self.instrument), dtype=float)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "expected_")
        self._check_input(X)
        out = X.copy()
        out[DEVIATION_COLUMN] = self.deviation(X["intake_score"].to_numpy(float),
                                               X["session"].to_numpy(float),
                                               X["latest_score"].to_numpy(float))
        return out

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "expected_")
        names = self.feature_names_in_ if input_features is None else input_features
        return np.asarray([*names, DEVIATION_COLUMN], dtype=object)
