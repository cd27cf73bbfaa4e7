"""Tests for models/: estimator contract, behaviour (directional, invariance), exact
explanations, neighbour self-exclusion, signal rules and the minimum-data guard.

The cohort is a small simulated one (the simulator's PHQ-9 and SRS sessions turned into
point-in-time rows by `features.pointintime.point_in_time`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from features.pointintime import FEATURE_NAMES, FeatureMismatchError, point_in_time
from features.targets import targets
from models.base import MIN_TRAINING_CASES, InsufficientDataError
from models.baseline import LogisticRisk
from models.expected import ExpectedDeviation, ExpectedResponse, trajectory_points
from models.neighbours import NeighbourNavigator, reference_positions, trajectory_matrix
from models.risk import GBMRisk
from models.signal import signal


# ---------------------------------------------------------------------------------------------
# Simulated cohort
# ---------------------------------------------------------------------------------------------
def _sessions(n: int, seed: int) -> pd.DataFrame:
    """A simulated cohort's PHQ-9 and SRS sessions (the simulator, without the oracle)."""
    from training.simulate import simulate_cohort

    s = simulate_cohort(n, seed=seed, oracle_clients=0).sessions
    s = s[s["instrument"].isin(["PHQ-9", "SRS"])]
    return s[["client_id", "session", "instrument", "score"]].reset_index(drop=True)


def _cohort(n: int, seed: int):
    sessions = _sessions(n, seed)
    ff = point_in_time(sessions, "PHQ-9", at=range(1, 9))
    y = targets(sessions)["failed"].reindex(ff.keys["client_id"]).to_numpy()
    return ff, y, sessions


@pytest.fixture(scope="module")
def cohort():
    return _cohort(450, seed=1)


@pytest.fixture(scope="module")
def gbm(cohort):
    ff, y, _ = cohort
    return GBMRisk().fit(ff, y)


@pytest.fixture(scope="module")
def navigator(cohort):
    ff, y, sessions = cohort
    return NeighbourNavigator(n_neighbors=25).fit(ff, y, trajectories=trajectory_matrix(sessions))


# ---------------------------------------------------------------------------------------------
# Estimator contract
# ---------------------------------------------------------------------------------------------
ESTIMATORS = [ExpectedResponse(), ExpectedDeviation(), NeighbourNavigator(n_neighbors=7),
              GBMRisk(n_estimators=20), LogisticRisk(C=0.5)]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_and_params_round_trip(est):
    params = est.get_params()
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert not [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]


@pytest.mark.parametrize("est,call", [
    (ExpectedResponse(), lambda e, X: e.expected([20.0], [3])),
    (ExpectedDeviation(), lambda e, X: e.transform(X)),
    (NeighbourNavigator(), lambda e, X: e.predict_proba(X)),
    (GBMRisk(), lambda e, X: e.predict_proba(X)),
    (GBMRisk(), lambda e, X: e.contributions(X)),
    (LogisticRisk(), lambda e, X: e.predict_proba(X)),
], ids=["ExpectedResponse.expected", "ExpectedDeviation.transform",
        "NeighbourNavigator.predict_proba", "GBMRisk.predict_proba", "GBMRisk.contributions",
        "LogisticRisk.predict_proba"])
def test_not_fitted_error_before_fit(est, call, cohort):
    with pytest.raises(NotFittedError):
        call(est, cohort[0].X.head(3))


# ---------------------------------------------------------------------------------------------
# Expected response
# ---------------------------------------------------------------------------------------------
def test_expected_response_band_covers_held_out_points(cohort):
    """Finch et al. 2001: the 90 % band is empirical, so ~90 % of new clients' points fall in it."""
    ff, _, _ = cohort
    model = ExpectedResponse().fit(ff.X)
    new = _cohort(200, seed=7)[0].X
    new = new[new["session"] >= 2]
    med, lo, hi, bnd = model.expected(new["intake_score"], new["session"])
    inside = ((new["latest_score"] >= lo) & (new["latest_score"] <= hi)).mean()
    assert 0.82 <= inside <= 0.97
    assert np.array_equal(bnd, hi)  # PHQ-9: higher is worse -> boundary on the upper side
    assert np.all(lo <= med) and np.all(med <= hi)
    # session 1 is the intake itself; the median improves with log(session) here
    course = model.course(20.0)
    assert course.loc[0, ["median", "lower", "upper"]].tolist() == [20.0, 20.0, 20.0]
    assert course["median"].iloc[1] > course["median"].iloc[7]


def test_expected_response_fits_whole_courses_from_a_trajectory_matrix(cohort):
    _, _, sessions = cohort
    points = trajectory_points(trajectory_matrix(sessions))
    phq = sessions[sessions["instrument"] == "PHQ-9"]
    assert len(points) == len(phq) and points["session"].max() == phq["session"].max()
    model = ExpectedResponse().fit(points)
    assert model.max_fitted_session_ == phq["session"].max()  # later ones are extrapolated
    assert model.course(20.0, [10])["median"].iloc[0] < 20.0


def test_expected_response_ors_boundary_is_the_lower_side():
    rng = np.random.default_rng(3)
    intake = rng.uniform(8, 24, 3000)
    session = rng.integers(2, 13, 3000)
    score = np.clip(intake + 3 * np.log(session) + rng.normal(0, 2.5, 3000), 0, 40)
    model = ExpectedResponse(instrument="ORS").fit(
        pd.DataFrame({"intake_score": intake, "session": session, "score": score}))
    med, lo, hi, bnd = model.expected(15.0, 6)
    assert bnd == lo < med < hi and med > 15.0


def test_expected_deviation_is_refitted_per_fit_and_direction_aware(cohort):
    ff, _, _ = cohort
    step = ExpectedDeviation().fit(ff.X)
    out = step.transform(ff.X)
    assert list(out.columns) == [*FEATURE_NAMES, "expected_deviation"]
    worse = ff.X.assign(latest_score=ff.X["latest_score"] + 3)
    assert np.all(step.transform(worse)["expected_deviation"] > out["expected_deviation"])


# ---------------------------------------------------------------------------------------------
# GBMRisk
# ---------------------------------------------------------------------------------------------
def test_raising_latest_severity_never_lowers_risk(gbm, cohort):
    X = cohort[0].X.iloc[::7].reset_index(drop=True)
    risks = [gbm.predict_proba(X.assign(latest_severity=v))[:, 1]
             for v in np.linspace(0.0, 1.0, 11)]
    assert np.all(np.diff(np.vstack(risks), axis=0) >= -1e-12)


def test_a_worse_latest_score_never_lowers_risk(gbm, cohort):
    """All else equal, a latest PHQ-9 that is 1..5 points worse (and the change and severity
    features that follow from it) never lowers the risk."""
    X = cohort[0].X.iloc[::5].reset_index(drop=True)
    base = gbm.predict_proba(X)[:, 1]
    for d in range(1, 6):
        w = X.copy()
        w["latest_score"] += d
        w["latest_severity"] += d / 27
        w["change_raw"] -= d
        w["change_rc"] -= d / 6
        w["change_frac"] -= d / (w["intake_severity"] * 27)
        assert np.all(gbm.predict_proba(w)[:, 1] >= base - 1e-12)


def test_contributions_sum_to_the_calibrated_logit(gbm, cohort):
    X = cohort[0].X.iloc[:300]
    phi = gbm.contributions(X)
    assert phi.shape == (300, len(gbm.feature_names_) + 1)
    p = gbm.predict_proba(X)[:, 1]
    np.testing.assert_allclose(phi.sum(axis=1), logit(p), atol=1e-6)
    np.testing.assert_allclose(phi.sum(axis=1), gbm.predict_logit(X), atol=1e-9)
    a, b = gbm.calibration_
    assert a > 0 and np.ptp(phi[:, -1]) == 0.0  # one intercept: a * base value + b


def test_fitted_risk_model_carries_its_features_and_a_sensible_threshold(gbm):
    assert gbm.feature_version_ and list(gbm.feature_names_in_) == list(FEATURE_NAMES)
    assert gbm.feature_names_[-1] == "expected_deviation"
    assert 0.0 < gbm.threshold_ < 1.0
    assert gbm.cv_scores_["sensitivity"] >= 0.80  # the documented threshold rule
    assert gbm.cv_scores_["auc"] > 0.7


def test_mismatched_columns_are_refused_with_a_diff(gbm, cohort):
    X = cohort[0].X.head(5)
    with pytest.raises(FeatureMismatchError, match=r"missing \(1\): alliance_min"):
        gbm.predict_proba(X.drop(columns="alliance_min"))
    with pytest.raises(FeatureMismatchError, match="reordered"):
        gbm.predict_proba(X[list(reversed(X.columns))])
    old = X.copy()
    old.attrs["feature_version"] = "0.0.1"
    with pytest.raises(FeatureMismatchError, match="feature version"):
        gbm.contributions(old)


def test_fit_does_not_depend_on_row_order(gbm, cohort):
    ff, y, _ = cohort
    perm = np.random.default_rng(0).permutation(len(ff.X))
    X_p = ff.X.iloc[perm].reset_index(drop=True)
    groups_p = ff.keys["client_id"].to_numpy()[perm]
    refit = GBMRisk().fit(X_p, y[perm], groups_p)
    np.testing.assert_allclose(refit.predict_proba(ff.X), gbm.predict_proba(ff.X), atol=1e-12)
    assert refit.threshold_ == gbm.threshold_
    # and predicting a permuted batch permutes the answers
    np.testing.assert_allclose(gbm.predict_proba(X_p), gbm.predict_proba(ff.X)[perm], atol=1e-12)


def test_too_few_clients_raises_with_the_numbers(cohort):
    ff, y, _ = cohort
    few = ff.keys["client_id"].isin(ff.keys["client_id"].unique()[:120]).to_numpy()
    with pytest.raises(InsufficientDataError) as err:
        GBMRisk().fit(ff.X[few], y[few], ff.keys["client_id"][few])
    ids, known = ff.keys["client_id"][few], np.isfinite(y[few])
    n_known = ids[known].nunique()  # the simulator's dropouts have no known outcome
    assert 0 < n_known < MIN_TRAINING_CASES
    assert str(n_known) in str(err.value) and str(MIN_TRAINING_CASES) in str(err.value)
    assert (err.value.n_cases, err.value.minimum) == (n_known, 300)


# ---------------------------------------------------------------------------------------------
# LogisticRisk
# ---------------------------------------------------------------------------------------------
def test_logistic_baseline_interface(cohort):
    ff, y, _ = cohort
    model = LogisticRisk().fit(ff, y)
    p = model.predict_proba(ff.X.head(50))
    assert p.shape == (50, 2) and np.allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(logit(p[:, 1]), model.predict_logit(ff.X.head(50)), atol=1e-9)
    assert model.cv_scores_["sensitivity"] >= 0.80 and 0 < model.threshold_ < 1
    with pytest.raises(FeatureMismatchError):
        model.predict(ff.X.drop(columns="session"))


# ---------------------------------------------------------------------------------------------
# NeighbourNavigator
# ---------------------------------------------------------------------------------------------
def test_neighbours_never_return_the_query_client(navigator, cohort):
    ff, _, _ = cohort
    own = reference_positions(ff.keys["client_id"])
    dist, idx = navigator.kneighbors(ff)
    # without exclusion an in-sample row finds itself at distance 0 (unless more than k
    # clients share its vector exactly: at intake many have the same scores) ...
    assert (dist[:, 0] == 0).all()
    unique = dist[:, -1] > 0
    assert unique.mean() > 0.5 and (idx == own[:, None]).any(axis=1)[unique].all()
    # ... with it, never
    dist, idx = navigator.kneighbors(ff, exclude=own)
    assert idx.shape == (len(own), 25) and not (idx == own[:, None]).any()
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_reference_holds_no_ids_and_says_so(navigator, cohort):
    ids = set(cohort[0].keys["client_id"])
    for name, value in vars(navigator).items():
        if name.endswith("_"):
            arr = np.asarray(value, dtype=object).ravel() if not isinstance(value, list) else []
            assert not ids.intersection(map(str, arr[:1000])), name
    assert "patient-level" in navigator.model_card_note


def test_neighbour_course_boundary_and_risk(navigator, cohort):
    ff, y, _ = cohort
    own = reference_positions(ff.keys["client_id"])
    course = navigator.expected_course(ff, exclude=own)
    assert course["median"].shape == (len(own), 20)
    np.testing.assert_array_equal(course["median"][:, 0], ff.X["intake_score"])
    assert np.array_equal(course["boundary"], course["upper"], equal_nan=True)
    p = navigator.predict_proba(ff, exclude=own)[:, 1]
    assert np.all((p > 0) & (p < 1))
    assert p[y == 1].mean() > p[y == 0].mean() + 0.15
    med, lo, hi, bnd = navigator.expected(ff, exclude=own)
    assert np.all(lo[np.isfinite(lo)] <= hi[np.isfinite(lo)])


def test_neighbour_fit_does_not_depend_on_row_order(navigator, cohort):
    ff, y, sessions = cohort
    perm = np.random.default_rng(2).permutation(len(ff.X))
    refit = NeighbourNavigator(n_neighbors=25).fit(
        ff.X.iloc[perm], y[perm], ff.keys["client_id"].to_numpy()[perm],
        trajectories=trajectory_matrix(sessions))
    np.testing.assert_array_equal(refit.predict_proba(ff.X), navigator.predict_proba(ff.X))


# ---------------------------------------------------------------------------------------------
# Signal
# ---------------------------------------------------------------------------------------------
def test_signal_produces_each_colour_with_a_reason():
    out = signal(latest_score=[14, 8, 14, 11, 9.5], n_scores=[1, 3, 3, 3, 3],
                 expected_median=9.5,
                 failure_boundary=12.5, session=4, instrument="PHQ-9")
    assert out["colour"].tolist() == ["grey", "white", "red", "yellow", "white"]
    assert out["reason"][2] == ("PHQ-9 14 is above the not-on-track boundary of 12.5 expected by "
                                "session 4: not on track; review alliance, motivation, social "
                                "support and life events.")
    high = signal([13, 17, 11], 3, expected_median=14, failure_boundary=16, session=4,
                  instrument="PHQ-9")
    assert high["colour"].tolist() == ["green", "red", "green"]
    assert not out["reason"].str.contains("failure[^ ]|a failure", regex=True).any()


def test_signal_respects_ors_direction():
    # ORS: higher is better, the boundary lies BELOW the expected score
    out = signal([30, 15, 19, 22, 10], [3, 3, 3, 3, 1], expected_median=20,
                 failure_boundary=16, session=4, instrument="ORS")
    assert out["colour"].tolist() == ["white", "red", "yellow", "green", "grey"]
    assert "below the not-on-track boundary of 16" in out["reason"][1]
    # the same numbers read as PHQ-9 scores mean the opposite
    phq = signal([15, 19, 22], 3, expected_median=20, failure_boundary=21, session=4,
                 instrument="PHQ-9")
    assert phq["colour"].tolist() == ["green", "green", "red"]


def test_signal_without_a_course_or_cutoff():
    out = signal([30, 30], 3, expected_median=[np.nan, 35], failure_boundary=[np.nan, 45],
                 session=4, instrument="OQ-30")  # OQ-30: no published cut-off, never white
    assert out["colour"].tolist() == ["grey", "green"]


def test_logistic_contributions_sum_to_the_logit():
    ff, y, _ = _cohort(500, 3)
    m = LogisticRisk().fit(ff, y)
    phi = m.contributions(ff.X)
    assert phi.shape == (len(ff.X), len(m.feature_names_) + 1)
    np.testing.assert_allclose(phi.sum(axis=1), m.predict_logit(ff.X), atol=1e-9)
    assert m.transform_features(ff.X).shape == (len(ff.X), len(m.feature_names_))


def test_brute_force_and_tree_neighbours_agree():
    """A request's few rows use NumPy brute force; batches use the tree: the same neighbours
    in the same order, ties included (at intake many clients share their scores, and two
    points at the same distance can differ in the last bit depending on how it is summed)."""
    ff, y, sessions = _cohort(500, 9)
    nav = NeighbourNavigator(n_neighbors=20).fit(ff, y, trajectories=trajectory_matrix(sessions))
    Xq = ff.X.iloc[:300]
    d_big, i_big = nav.kneighbors(Xq)  # 300 rows: the tree path
    for r in range(len(Xq)):
        d_one, i_one = nav.kneighbors(Xq.iloc[[r]])  # one row: brute force
        np.testing.assert_allclose(d_one[0], d_big[r], atol=1e-9)
        assert i_one[0].tolist() == i_big[r].tolist(), r


def test_a_tie_in_the_last_bit_is_broken_the_same_way_alone_and_in_a_batch():
    """Six points at the same distance from the query in exact arithmetic (the permutations
    of one vector), whose summed squares differ in the last bit: the tree (batches) and the
    brute-force search (a request's few rows) return the same neighbours in the same order."""
    from itertools import permutations

    from sklearn.neighbors import NearestNeighbors

    tied = np.array(list(permutations((1.3, 0.9, -0.7))))
    assert len(set(((tied ** 2).sum(axis=1)).tolist())) > 1  # the last bits differ
    far = np.random.default_rng(0).uniform(5, 9, size=(60, 3))
    P = np.vstack([far[:30], tied, far[30:]])
    nav = NeighbourNavigator()
    nav.points_ = [P]
    nav.trees_ = [NearestNeighbors().fit(P)]
    q = np.zeros((1, 3))
    for k in (2, 3, 4):
        d_one, i_one = nav._query(0, q, k)  # brute force
        d_big, i_big = nav._query(0, np.repeat(q, 20, axis=0), k)  # the tree
        assert (i_big == i_one).all(), (k, i_one, i_big)
        np.testing.assert_allclose(d_big, np.repeat(d_one, 20, axis=0), atol=1e-12)


def test_a_bad_parameter_is_refused_before_any_fitting(cohort):
    from sklearn.utils._param_validation import InvalidParameterError

    ff, y, _ = cohort
    for bad in ({"threshold_rule": "bogus"}, {"learning_rate": 0.0}, {"n_splits": 1},
                {"min_sensitivity": 1.5}):
        with pytest.raises(InvalidParameterError, match=next(iter(bad))):
            GBMRisk(**bad).fit(ff, y)

