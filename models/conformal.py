"""Conformal bands for the expected course: the served 90% band widened (or narrowed) by a
per-session margin (in band widths) so that it covers 90% of NEW clients' scores, in finite samples.

The expected course's ``lower``/``upper`` are empirical quantiles (of the neighbours' changes,
`models.neighbours`, or of the expected-response residuals, `models.expected`): nothing
guarantees that 90% of new clients land inside them. Conformalized quantile regression (CQR;
Romano, Patterson & Candès 2019, "Conformalized quantile regression", NeurIPS) uses that band
as the base quantile regressor and corrects it on calibration points:

* conformity score per point, scaled by the served band's width ``w = max(upper - lower,
  MIN_WIDTH)``: ``E = max(lower - y, y - upper) / w`` (negative inside the band, positive
  outside, in band widths; the "CQR-r" score of Sesia & Candès 2020, "A comparison of some
  conformal quantile regression methods", Stat 9:e261);
* per session s, with the n calibration points of that session, ``q_s`` = the
  ``ceil((n + 1) * coverage)``-th smallest E (the finite-sample split-conformal quantile;
  Romano et al. 2019, Theorem 1). When ``ceil((n + 1) * coverage) > n`` (n < 9 at 90%) no
  finite margin has the guarantee and ``q_s = +inf`` (the whole score range); ``min_cell``
  pools small sessions before that can happen;
* the band for a new client at session s: ``(lower - q_s * w, upper + q_s * w)``, clipped to
  the instrument's score range. Session 1 is the intake itself: its band is the intake (q = 0).

Why the scaled score. Scores are whole numbers and the served band's ends fall on few
fractions, so the unscaled score ``max(lower - y, y - upper)`` takes few values: where its
margin was a whole number (q = 1, say) every client exactly one point outside the served band
was inside the conformal one, and coverage exceeded 90% by that tie mass (92.7% at PHQ-9
session 5 and 93.0% at GAD-7 session 6 on the `make run` cohort). Dividing by the band's
width, which varies between clients, breaks those ties; the guarantee is the same (any
conformity score fixed before calibration has it), and the margin grows with the band, wider
where the course is less certain.

Exchangeability. Each client contributes at most one point per session (one row per client
and session), and clients are independent, so the points of one session are exchangeable
across clients and with a new client seen at that session: the guarantee is coverage >= 90%
for a new client observed at that session, marginal over clients (not conditional on the
intake, the clinic or whether the band came from the neighbours or the expected-response
curve). A session with fewer than ``min_cell`` points is pooled with its neighbouring
sessions (a window widened one session at a time, as `models.expected` pools its residual
cells); a pooled cell can hold two points of one client, so there the guarantee is
approximate. The margin conditional on the calibration set is itself random: its coverage
follows Beta(n + 1 - l, l), l = floor((n + 1) * (1 - coverage)) (Vovk 2012, "Conditional
validity of inductive conformal predictors", ACML; Angelopoulos & Bates 2023, "Conformal
prediction: a gentle introduction", Found. Trends ML 16:494, section 3.2), SD about
sqrt(coverage * (1 - coverage) / n).

Ties that remain (equal widths and equal distances) can still push coverage above the
nominal level; ``calibration_coverage_`` shows the share inside per session.

Why not MAPIE: its prefit conformalizers (``ConformalizedQuantileRegressor``) take fitted
quantile regressors that predict from a feature matrix (one per quantile) and conformalize
them with one margin. Here the base band is a per-client lookup (the neighbour reference's
course matched at intake, the expected-response curve elsewhere) evaluated per session, and
the margin is per session; wrapping that lookup as three scikit-learn regressors only to call
one order statistic would add a dependency and hide the per-session cells. The computation is
one partial sort per session.

NumPy only: the served course that feeds `fit` and `apply` is computed in
`models.assess.served_course`, the same code the service uses.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from features.thresholds import BAND_COVERAGE

#: Fewest calibration points per session before it is pooled with neighbouring sessions.
#: OnTrack heuristic: with n points the coverage given the calibration set has SD about
#: sqrt(0.9 * 0.1 / n) (Angelopoulos & Bates 2023, section 3.2): 2.1 points at n = 200.
MIN_CELL = 200
#: Smallest band width the conformity score divides by (score points): a served band that
#: collapsed to a point (all neighbours on one score) still gets a margin. OnTrack heuristic:
#: one point, the resolution of every questionnaire total in the registry.
MIN_WIDTH = 1.0
#: Added to every margin so that a score exactly on the band's edge in exact arithmetic
#: counts as inside whatever the last bit of float rounding says (the guarantee is for
#: E <= q, and integer scores tie often). OnTrack heuristic: far below any score's resolution.
TIE_SLACK = 1e-6
#: Last session with its own margin; later sessions use it. The expected-response curves
#: and the neighbours' course stop at session 20 (Finch et al. 2001; `models.expected`).
MAX_SESSION = 20


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) * coverage)``-th smallest of the n ``scores`` (1-based): the
    split-conformal quantile (Romano et al. 2019, Theorem 1); +inf when that rank exceeds n
    (too few points for a finite margin with the guarantee)."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    # round first: (n + 1) * 0.9 is an integer in exact arithmetic for n = 9, 19, ... and
    # must not be pushed to the next rank by a last-bit rounding error
    k = math.ceil(round((n + 1) * coverage, 9))
    if k > n:
        return float("inf")
    return float(np.partition(scores, k - 1)[k - 1])


class ConformalBand:
    """Per-session CQR margins on top of the served expected-course band.

    Fitted attributes (all end in ``_``): ``q_`` (margin per session index 0..max_session;
    0 at sessions 0 and 1), ``n_`` (calibration points behind each margin, pooled cells
    included), ``n_session_`` (points at that session itself), ``window_`` (pooling window in
    sessions either side; 0 = the session alone), ``calibration_coverage_`` (share of the
    cell's calibration points inside the conformal band: at least ``coverage``, more where
    integer scores tie at the margin), ``coverage_``, ``max_session_``, ``n_points_``.
    """

    def fit(self, session, y, lower, upper, coverage: float = BAND_COVERAGE,
            min_cell: int = MIN_CELL, max_session: int = MAX_SESSION) -> ConformalBand:
        """Calibrate on points (session, observed score, served lower, served upper): one
        point per client and session, with the band known at the client's intake and the
        client kept out of the reference that produced it."""
        if not 0.0 < float(coverage) < 1.0:
            raise ValueError(f"coverage must be in (0, 1); got {coverage}")
        if int(min_cell) < 1:
            raise ValueError(f"min_cell must be >= 1; got {min_cell}")
        if int(max_session) < 2:
            raise ValueError(f"max_session must be >= 2; got {max_session}")
        arrays = [np.asarray(a, dtype=float).ravel() for a in (session, y, lower, upper)]
        if len({len(a) for a in arrays}) != 1:
            raise ValueError("session, y, lower and upper must have the same length; got "
                             f"{[len(a) for a in arrays]}")
        session, y, lower, upper = arrays
        keep = (np.isfinite(session) & np.isfinite(y) & np.isfinite(lower)
                & np.isfinite(upper) & (np.rint(session) >= 2))
        S = int(max_session)
        s = np.minimum(np.rint(session[keep]).astype(int), S)
        w = np.maximum(upper[keep] - lower[keep], MIN_WIDTH)
        E = np.maximum(lower[keep] - y[keep], y[keep] - upper[keep]) / w
        if not len(E):
            raise ValueError("ConformalBand needs calibration points at sessions >= 2 with a "
                             "score and a finite band; got none")
        q = np.zeros(S + 1)
        n = np.zeros(S + 1, dtype=int)
        own = np.bincount(s, minlength=S + 1)
        window = np.zeros(S + 1, dtype=int)
        inside = np.ones(S + 1)
        for t in range(2, S + 1):
            for w in range(0, S + 1):
                sel = np.abs(s - t) <= w
                if sel.sum() >= min_cell or w == S:  # w == S: every point (all sessions)
                    break
            q[t] = conformal_quantile(E[sel], coverage) + TIE_SLACK
            n[t], window[t] = int(sel.sum()), w
            inside[t] = float(np.mean(E[sel] <= q[t]))
        self.coverage_ = float(coverage)
        self.min_cell_ = int(min_cell)
        self.max_session_ = S
        self.q_ = q
        self.n_ = n
        self.n_session_ = own
        self.window_ = window
        self.calibration_coverage_ = inside
        self.n_points_ = int(len(E))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "q_"):
            raise RuntimeError("ConformalBand is not fitted: call fit first")

    def margin(self, session) -> np.ndarray:
        """``q_s`` for each session (0 at the intake and for a missing session)."""
        self._check_fitted()
        s = np.rint(np.asarray(session, dtype=float))
        s = np.where(s >= 0, s, 0.0)  # NaN and negative sessions: no margin
        return self.q_[np.minimum(s, self.max_session_).astype(np.intp)]

    def apply(self, session, lower, upper, score_min: float, score_max: float
              ) -> tuple[np.ndarray, np.ndarray]:
        """(conformal lower, conformal upper) = (lower - q_s * w, upper + q_s * w) with
        ``w = max(upper - lower, MIN_WIDTH)``, clipped to the score range; arrays broadcast
        together. A negative margin (the served band is wider
        than needed) narrows the band; where it would cross itself both ends are the
        midpoint of the served band. NaN where the served band is NaN."""
        q = self.margin(session)
        lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        m = q * np.maximum(upper - lower, MIN_WIDTH)
        lo, hi = lower - m, upper + m
        crossed = lo > hi
        if crossed.any():
            mid = (lower + upper) / 2.0
            lo, hi = np.where(crossed, mid, lo), np.where(crossed, mid, hi)
        # minimum/maximum rather than np.clip: the same values, a third of the time on the
        # request path's small arrays
        return (np.minimum(np.maximum(lo, score_min), score_max),
                np.minimum(np.maximum(hi, score_min), score_max))

    def table(self) -> pd.DataFrame:
        """One row per session 2..max_session: the margin, its points and pooling window."""
        self._check_fitted()
        t = np.arange(2, self.max_session_ + 1)
        return pd.DataFrame({"session": t, "q": self.q_[t], "n": self.n_[t],
                             "n_session": self.n_session_[t], "window": self.window_[t],
                             "calibration_coverage": self.calibration_coverage_[t]})
