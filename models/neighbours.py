"""NeighbourNavigator: expected course and risk from the most similar archived clients.

After the Trier Treatment Navigator (Lutz et al. 2005, J Consult Clin Psychol 73:904; Lutz et
al. 2006; Schilling et al. 2021): for each client choose the most similar archived clients on
intake characteristics and the early course, and let their observed trajectories form this
client's expected course; the failure boundary is the worse-side bound of the 90 % interval
around it.

Implemented here:

* **Matching vector** = the point-in-time feature row *as of the query's session t*
  (``match_features``: intake severity, latest severity, change, slope on log(session), early
  change, alliance, other instruments), standardised on the reference rows (missing -> the
  mean), Euclidean distance. Query rows at session t are matched against each archived client's
  own as-of-t row (carried forward over missed sessions), among the archived clients still in
  care at t, so like is compared with like. One `NearestNeighbors` index per session.
  Sessions past the last index (too few archived clients still in care) use the last index.
* **Expected course** for sessions 1..``max_session``: the query's intake plus quantiles of the
  k neighbours' observed change from THEIR intake at each session (median, and the central
  ``coverage`` band). A session at which fewer than ``min_observed`` neighbours have a score
  is NaN (the neighbours' trajectories are observed, not imputed: late sessions over-represent
  clients who stayed).
* **Risk**: the neighbours' rate of the outcome (``failed``), shrunk towards the reference base
  rate by ``prior_strength`` pseudo-clients, as `predict_proba`.
* **Never the query client**: the reference holds NO ids. Archived clients are numbered by
  their sorted ids at fit (`reference_positions`); pass ``exclude=reference_positions(groups)``
  when querying rows of the reference cohort itself (in-sample use), and the row's own client
  is never returned.

Privacy: the fitted object contains patient-level trajectories (`model_card_note`).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.neighbors import NearestNeighbors
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from features.instruments import get
from features.thresholds import BAND_COVERAGE  # the not-on-track boundary is its upper bound
from models.base import FeatureContract, known_target, unpack_rows

DEFAULT_MATCH_FEATURES: tuple[str, ...] = (
    "intake_severity",
    "latest_severity",
    "change_rc",
    "slope_log",
    "early_change_rc",
    "alliance_latest",
    "alliance_min",
    "other_severity_latest",
)

_CHUNK = 4096  # query rows per block (k x max_session floats each)


def _squared(P: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Squared distances between broadcast points and queries, summed over the last axis: the
    one formula both searches use, so that a tie is broken the same way in both."""
    return ((P - z) ** 2).sum(axis=-1)


def reference_positions(groups) -> np.ndarray:
    """Position of each row's client in the reference (the order of its sorted ids at fit)."""
    return pd.factorize(pd.Series(np.asarray(groups)), sort=True)[0]


def trajectory_matrix(sessions: pd.DataFrame, instrument: str = "PHQ-9",
                      max_session: int = 20) -> pd.DataFrame:
    """Scores on ``instrument`` per client (index client_id) and session (columns 1..max)."""
    s = sessions.loc[(sessions["instrument"] == instrument) & (sessions["session"] >= 1)
                     & (sessions["session"] <= max_session), ["client_id", "session", "score"]]
    wide = s.pivot_table(index="client_id", columns="session", values="score", aggfunc="first")
    return wide.reindex(columns=range(1, max_session + 1)).astype(float)


def _quantiles_axis1(values: np.ndarray, probs: Sequence[float], min_count: int) -> np.ndarray:
    """Linear-interpolation quantiles over axis 1 ignoring NaN; (len(probs), n, m).

    NaN where fewer than ``min_count`` values are present.
    """
    srt = np.sort(values, axis=1)  # NaN sorts last
    n_valid = np.sum(~np.isnan(values), axis=1)  # (n, m)
    out = np.full((len(probs), values.shape[0], values.shape[2]), np.nan)
    nv = np.maximum(n_valid, 1)
    for j, p in enumerate(probs):
        h = p * (nv - 1)
        lo = np.floor(h).astype(int)
        hi = np.minimum(lo + 1, nv - 1)
        v_lo = np.take_along_axis(srt, lo[:, None, :], axis=1)[:, 0, :]
        v_hi = np.take_along_axis(srt, hi[:, None, :], axis=1)[:, 0, :]
        q = v_lo + (h - lo) * (v_hi - v_lo)
        out[j] = np.where(n_valid >= max(min_count, 1), q, np.nan)
    return out


class NeighbourNavigator(FeatureContract, BaseEstimator):
    """k nearest archived clients -> expected course, failure boundary and risk.

    Parameters
    ----------
    instrument : the outcome instrument of the trajectories (direction and score range).
    n_neighbors : k, a hyper-parameter (the literature uses tens to hundreds).
    match_features : feature-row columns forming the matching vector.
    coverage : central coverage of the band (0.90 -> 5th and 95th percentiles).
    max_session : length of the stored trajectories and the expected course.
    min_observed : fewest neighbours with a score at a session for the course there.
    prior_strength : pseudo-clients at the base rate added to the neighbours' outcome rate.
    algorithm : passed to `sklearn.neighbors.NearestNeighbors` (auto, ball_tree, kd_tree).
    """

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        "instrument": [str],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "match_features": ["array-like", None],
        "coverage": [Interval(Real, 0, 1, closed="neither")],
        "max_session": [Interval(Integral, 1, None, closed="left")],
        "min_observed": [Interval(Integral, 1, None, closed="left")],
        "prior_strength": [Interval(Real, 0, None, closed="left")],
        "algorithm": [StrOptions({"auto", "ball_tree", "kd_tree", "brute"})],
    }

    def __init__(self, instrument: str = "PHQ-9", n_neighbors: int = 50,
                 match_features: Sequence[str] | None = None, coverage: float = BAND_COVERAGE,
                 max_session: int = 20, min_observed: int = 5, prior_strength: float = 1.0,
                 algorithm: str = "auto"):
        self.instrument = instrument
        self.n_neighbors = n_neighbors
        self.match_features = match_features
        self.coverage = coverage
        self.max_session = max_session
        self.min_observed = min_observed
        self.prior_strength = prior_strength
        self.algorithm = algorithm

    # -------------------------------------------------------------------------------- fit
    def fit(self, X, y, groups=None, trajectories: pd.DataFrame | None = None
            ) -> NeighbourNavigator:
        """Fit on the reference cohort.

        X: feature rows of archived clients (any sessions); y: outcome per row (the client's
        ``failed``; NaN allowed); groups: client id per row (from ``FeatureFrame.keys`` when
        omitted); trajectories: scores per client id and session 1..max_session
        (`trajectory_matrix`); when omitted, the scores in the feature rows are used.
        The ids are used to align inputs and then dropped.
        """
        self._validate_params()
        frame, version, groups = unpack_rows(X, groups)
        if groups is None:
            raise ValueError("NeighbourNavigator.fit needs groups (a client id per row)")
        self._remember_features(frame, version)
        names = list(self.match_features or DEFAULT_MATCH_FEATURES)
        missing = [c for c in names if c not in frame.columns]
        if missing:
            raise ValueError(f"match features not in the feature rows: {missing}")
        inst = get(self.instrument)
        y = known_target(y, len(frame))
        S, k = int(self.max_session), int(self.n_neighbors)

        pos, ids = pd.factorize(pd.Series(np.asarray(groups)), sort=True)
        n_ref = len(ids)
        # Canonical row order (client position, session): nothing depends on input order,
        # not even the float rounding of the standardisation.
        order = np.lexsort((frame["session"].to_numpy(float), pos))
        frame, y, pos = frame.iloc[order], y[order], pos[order]
        session = frame["session"].to_numpy(float).astype(int)

        Z = frame[names].to_numpy(float)
        Zf = np.where(np.isnan(Z).all(axis=0), 0.0, Z)  # an all-missing column -> constant
        mean, scale = np.nanmean(Zf, axis=0), np.nanstd(Zf, axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        Z = np.nan_to_num((Z - mean) / scale)

        # As-of-t vectors per archived client, carried forward while the client is in care.
        T = int(min(session.max(), S))
        in_rows = session <= T
        G = np.full((n_ref, T, len(names)), np.nan)
        G[pos[in_rows], session[in_rows] - 1] = Z[in_rows]
        has = ~np.isnan(G[:, :, 0])
        last_idx = np.maximum.accumulate(np.where(has, np.arange(T), -1), axis=1)
        G = G[np.arange(n_ref)[:, None], np.maximum(last_idx, 0)]
        last_session = np.zeros(n_ref, dtype=int)
        np.maximum.at(last_session, pos, session)
        in_care = (last_idx >= 0) & (np.arange(1, T + 1)[None, :] <= last_session[:, None])

        trees, members, points = [], [], []
        for t in range(T):
            m = np.flatnonzero(in_care[:, t])
            if len(m) < k + 1:
                break
            trees.append(NearestNeighbors(n_neighbors=k + 1, algorithm=self.algorithm)
                         .fit(G[m, t]))
            members.append(m)
            points.append(np.ascontiguousarray(G[m, t]))
        if not trees:
            raise ValueError(f"NeighbourNavigator needs more than n_neighbors={k} archived "
                             f"clients in care at session 1; got {int(in_care[:, 0].sum())}")

        # Trajectories (no ids kept) and outcomes per archived client.
        if trajectories is not None:
            traj = trajectories.reindex(index=ids, columns=range(1, S + 1)).to_numpy(float)
        else:
            traj = np.full((n_ref, S), np.nan)
            ok = session <= S
            traj[pos[ok], session[ok] - 1] = frame["latest_score"].to_numpy(float)[ok]
        intake = np.full(n_ref, np.nan)
        intake[pos] = frame["intake_score"].to_numpy(float)
        intake = np.where(np.isfinite(traj[:, 0]), traj[:, 0], intake)
        outcome = np.full(n_ref, np.nan)
        fin = np.isfinite(y)
        outcome[pos[fin]] = y[fin]

        self.instrument_ = inst
        self.match_features_ = np.asarray(names, dtype=object)
        self.mean_, self.scale_ = mean, scale
        self.trees_, self.members_, self.points_ = trees, members, points
        self.match_sessions_ = len(trees)
        self.trajectory_ = traj
        self.intake_ = intake
        self.change_ = traj - intake[:, None]
        self.outcome_ = outcome
        self.base_rate_ = float(np.nanmean(outcome)) if np.isfinite(outcome).any() else np.nan
        self.n_reference_ = n_ref
        return self

    @property
    def model_card_note(self) -> str:
        check_is_fitted(self, "trajectory_")
        return (
            f"This model contains patient-level data: the observed {self.instrument_.code} "
            f"trajectories (sessions 1-{self.max_session}), the outcome and the standardised "
            f"early-course features at sessions 1-{self.match_sessions_} of "
            f"{self.n_reference_} archived clients (no identifiers). Store, share and delete "
            "the fitted model as personal health data under the same governance as the "
            "records it was built from.")

    # -------------------------------------------------------------------------------- query
    def _standardised(self, frame: pd.DataFrame) -> np.ndarray:
        pos = frame.columns.get_indexer(list(self.match_features_))
        Z = (frame.to_numpy(float)[:, pos] if (pos >= 0).all()  # one conversion, then columns
             else frame[list(self.match_features_)].to_numpy(float))
        return np.nan_to_num((Z - self.mean_) / self.scale_)

    def _query(self, t: int, Zq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest reference points at session index t, nearest first, ties broken by
        reference position, so that a client gets the same neighbours alone or in a batch of
        any size (ties are common: at intake many clients share the same scores). A request's
        few rows are searched by brute force in NumPy (the tree's per-call checks cost more
        than the search); batches use the tree, asked for extra candidates so that the tie
        group at the k-th distance can be ordered; rows whose tie group reaches past the
        candidates are searched by brute force."""
        points = getattr(self, "points_", None)
        if points is None or len(Zq) > 16:
            tree = self.trees_[t]
            n_ref = tree.n_samples_fit_
            m = min(2 * k, n_ref)
            d, idx = tree.kneighbors(Zq, n_neighbors=m)
            if points is None:
                order = np.lexsort((idx, d), axis=1)[:, :k]
                return tuple(np.take_along_axis(a, order, axis=1) for a in (d, idx))
            # the candidates' distances recomputed exactly as the brute search computes them:
            # the tree's own can differ in the last bit, which reorders a tie (two points at
            # the same distance in exact arithmetic) between a batch and a single request
            d2 = _squared(points[t][idx], Zq[:, None, :])
            order = np.lexsort((idx, d2), axis=1)[:, :k]
            d2_k, i_k = (np.take_along_axis(a, order, axis=1) for a in (d2, idx))
            unsure = (d[:, -1] ** 2 <= d2_k[:, -1] * (1 + 1e-9)) & (m < n_ref)
            d_k = np.sqrt(d2_k)
            if unsure.any():
                d_k[unsure], i_k[unsure] = self._brute(points[t], Zq[unsure], k)
            return d_k, i_k
        return self._brute(points[t], Zq, k)

    @staticmethod
    def _brute(P: np.ndarray, Zq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_d, out_i = np.empty((len(Zq), k)), np.empty((len(Zq), k), dtype=np.int64)
        for start in range(0, len(Zq), 64):  # bounded memory: 64 x reference x features
            z = Zq[start:start + 64]
            d2 = _squared(P[None, :, :], z[:, None, :])
            kth = np.partition(d2, k - 1, axis=1)[:, k - 1]
            for r in range(len(z)):  # every point up to the k-th distance, ties included
                cand = np.flatnonzero(d2[r] <= kth[r])
                pick = cand[np.lexsort((cand, d2[r, cand]))[:k]]
                out_d[start + r] = np.sqrt(d2[r, pick])
                out_i[start + r] = pick
        return out_d, out_i

    def kneighbors(self, X, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, reference positions), each (n, n_neighbors), nearest first.

        ``exclude``: per query row, a reference position never to return (-1 = none); use
        ``reference_positions(groups)`` for rows of the reference cohort itself.
        """
        check_is_fitted(self, "trees_")
        frame = self._checked(X)
        Z = self._standardised(frame)
        n, k = len(frame), int(self.n_neighbors)
        excl = (np.full(n, -1) if exclude is None
                else np.asarray(exclude, dtype=int).reshape(n))
        t = np.clip(np.rint(frame["session"].to_numpy(float)), 1, self.match_sessions_)
        t = np.nan_to_num(t, nan=1).astype(int) - 1
        dist = np.empty((n, k))
        idx = np.empty((n, k), dtype=int)
        for tt in np.unique(t):
            rows = np.flatnonzero(t == tt)
            d, local = self._query(tt, Z[rows], k + 1)
            p = self.members_[tt][local]
            keep = p != excl[rows, None]
            # first k kept columns per row (stable: distance order is preserved)
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            dist[rows] = np.take_along_axis(d, order, axis=1)
            idx[rows] = np.take_along_axis(p, order, axis=1)
        return dist, idx

    def predict_proba(self, X, exclude=None) -> np.ndarray:
        """(n, 2): the neighbours' outcome rate, shrunk towards the base rate."""
        _, idx = self.kneighbors(X, exclude)
        out = self.outcome_[idx]
        known = np.isfinite(out)
        m = float(self.prior_strength)
        p = (np.where(known, out, 0.0).sum(1) + m * self.base_rate_) / (known.sum(1) + m)
        return np.column_stack([1.0 - p, p])

    def expected_course(self, X, exclude=None) -> dict[str, np.ndarray]:
        """Expected course per query row, sessions 1..max_session: ``median``, ``lower``,
        ``upper``, ``boundary`` (worse-side bound), ``n_observed`` — each (n, max_session)."""
        _, idx = self.kneighbors(X, exclude)
        frame = self._checked(X)
        intake = frame["intake_score"].to_numpy(float)
        alpha = (1.0 - self.coverage) / 2.0
        inst = self.instrument_
        parts = {key: [] for key in ("median", "lower", "upper", "n_observed")}
        for start in range(0, len(idx), _CHUNK):
            block = self.change_[idx[start:start + _CHUNK]]  # (b, k, S)
            lo, med, hi = _quantiles_axis1(block, (alpha, 0.5, 1.0 - alpha), self.min_observed)
            base = intake[start:start + _CHUNK, None]
            for key, q in (("lower", lo), ("median", med), ("upper", hi)):
                parts[key].append(np.clip(base + q, inst.score_min, inst.score_max))
            parts["n_observed"].append(np.sum(np.isfinite(block), axis=1))
        out = {key: np.concatenate(v) if v else np.empty((0, self.max_session))
               for key, v in parts.items()}
        out["boundary"] = (out["lower"] if inst.higher_is_better else out["upper"]).copy()
        return out

    def expected(self, X, exclude=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(median, lower, upper, boundary) at each row's own session (for the signal)."""
        course = self.expected_course(X, exclude)
        frame = self._checked(X)
        s = np.clip(np.nan_to_num(np.rint(frame["session"].to_numpy(float)), nan=1),
                    1, self.max_session).astype(int) - 1
        r = np.arange(len(s))
        return tuple(course[key][r, s] for key in ("median", "lower", "upper", "boundary"))
