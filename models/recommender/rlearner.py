"""`RLearnerUplift`: the R-learner with penalised linear effects, and its honest claims.

The effects of the adaptations against none are fitted by Robinson's decomposition (see the
class), and the claims behind what the service shows as learned are estimated honestly: terms
chosen on one half of the archive, coefficients and their robust covariance on the other,
cross-fitted, with simultaneous 95 % intervals over the adaptations (`CLAIM_Z`). A suggestion is
claimed only where its gain's lower bound is above zero.

Imports: numpy, pandas, LightGBM, SciPy, scikit-learn, `features`, `models.recommender.evidence`,
`models.recommender.similar`, `models.recommender.uplift` and `models.recommender.wording`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from scipy.special import ndtr
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from features.instruments import ADAPTATIONS
from features.pointintime import CHECKLIST_FEATURES
from features.thresholds import MIN_SIMILAR
from models.recommender.evidence import (
    CLAIM_WORDS,
    CLAIM_Z,
    OPTIONS,
    Recommendation,
)
from models.recommender.similar import SIMILAR_CONSTRAINTS, _codes, _query, _standardiser
from models.recommender.uplift import _lgbm, _ModelDrivers
from models.recommender.wording import LABELS

#: Smallest contribution (reliable-change units, about 0.06 PHQ-9 points) worth naming.
MIN_DRIVER = 0.01


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

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        **SIMILAR_CONSTRAINTS,
        "alpha": [Interval(Real, 0, None, closed="neither"), None],
        "baseline_estimators": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
    }

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
