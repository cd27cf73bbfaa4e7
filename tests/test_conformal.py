"""Conformal bands for the expected course (`models.conformal`): the finite-sample quantile,
pooling, clipping, coverage on fresh draws, and the band end to end from training to the API
and the chart."""

from __future__ import annotations

import copy
import math
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from models.conformal import MIN_WIDTH, TIE_SLACK, ConformalBand, conformal_quantile

NOMINAL = 0.90


# ------------------------------------------------------------------------------------------
# The estimator on synthetic data
# ------------------------------------------------------------------------------------------
def _draws(rng, n_per_session: int, sessions=range(2, 9), half_width: float = 1.0):
    """Scores N(0, (0.5 + 0.25 s)^2) at sessions s, with a fixed served band +-half_width
    (too narrow at later sessions, too wide at early ones for half_width 2.5)."""
    s = np.repeat(np.asarray(list(sessions)), n_per_session)
    y = rng.normal(0.0, 0.5 + 0.25 * s)
    return s, y, np.full(len(s), -half_width), np.full(len(s), half_width)


@pytest.mark.parametrize("half_width", [1.0, 2.5])
def test_coverage_on_fresh_draws_is_nominal(half_width):
    """With 10,000 calibration points per session, coverage on 10,000 fresh draws per session
    is within 1.5 points of 90% whether the served band is too narrow (positive margins) or
    too wide (negative margins). SD of the measured coverage: about 0.4 points (0.3 from the
    fresh draws, 0.3 from the calibration set)."""
    rng = np.random.default_rng(0)
    band = ConformalBand().fit(*_draws(rng, 10_000, half_width=half_width))
    s, y, lo, hi = _draws(rng, 10_000, half_width=half_width)
    clo, chi = band.apply(s, lo, hi, -100.0, 100.0)
    inside = (clo <= y) & (y <= chi)
    raw = (lo <= y) & (y <= hi)
    for t in range(2, 9):
        assert abs(inside[s == t].mean() - NOMINAL) <= 0.015, t
    assert abs(raw[s == 8].mean() - NOMINAL) > 0.05  # the served band alone is off
    assert (band.q_[2] < 0) == (half_width == 2.5)  # too wide early: the band narrows


def test_the_finite_sample_rank_is_ceil_n_plus_1_times_coverage():
    """Romano, Patterson & Candès 2019, Theorem 1: the ceil((n + 1)(1 - alpha))-th smallest
    score. n = 9, alpha = 0.1: ceil(10 * 0.9) = 9, the largest; n = 19: the 18th; n = 99:
    the 90th; n = 8: ceil(8.1) = 9 > 8, no finite margin."""
    scores = np.array([3.0, 1.0, 4.0, 1.5, 9.0, 2.0, 6.0, 5.0, 3.5])
    assert conformal_quantile(scores, NOMINAL) == 9.0
    assert conformal_quantile(np.arange(1.0, 20.0), NOMINAL) == 18.0
    assert conformal_quantile(np.arange(1.0, 100.0), NOMINAL) == 90.0
    assert conformal_quantile(np.arange(1.0, 9.0), NOMINAL) == math.inf
    assert conformal_quantile(np.arange(1.0, 21.0), 0.80) == 17.0  # ceil(21 * 0.8) = 17

    # the same through fit: E = max(lower - y, y - upper) = |y| with a zero-width band
    y = np.array([3.0, -1.0, 4.0, -1.5, 9.0, 2.0, -6.0, 5.0, 3.5])
    band = ConformalBand().fit(np.full(9, 2), y, np.zeros(9), np.zeros(9), min_cell=1,
                               max_session=2)
    assert band.q_[2] == pytest.approx(9.0 + TIE_SLACK, abs=1e-12)
    assert band.n_[2] == 9 and band.calibration_coverage_[2] == 1.0


def test_too_few_points_for_a_finite_margin_give_the_whole_score_range():
    band = ConformalBand().fit(np.full(8, 3), np.arange(8.0), np.zeros(8), np.zeros(8),
                               min_cell=1, max_session=3)
    assert band.q_[3] == math.inf
    lo, hi = band.apply([3], [10.0], [12.0], 0.0, 27.0)
    assert (lo[0], hi[0]) == (0.0, 27.0)


def test_small_sessions_are_pooled_with_their_neighbours():
    rng = np.random.default_rng(1)
    counts = {2: 400, 3: 20, 4: 400, 5: 0, 6: 0, 7: 0, 8: 30}
    s = np.concatenate([np.full(n, t) for t, n in counts.items()])
    y = rng.normal(0.0, 2.0, len(s))
    zero = np.zeros(len(s))
    band = ConformalBand().fit(s, y, zero, zero, min_cell=100, max_session=8)
    E = np.abs(y)
    assert band.window_[2] == 0 and band.n_[2] == 400
    assert band.window_[3] == 1 and band.n_[3] == 820 and band.n_session_[3] == 20
    assert band.q_[3] == pytest.approx(conformal_quantile(E[s <= 4], NOMINAL) + TIE_SLACK)
    # session 6 has no points: 2 sessions either side reach session 4 (400) and 8 (30)
    assert band.window_[6] == 2 and band.n_[6] == 430
    assert band.q_[6] == pytest.approx(
        conformal_quantile(E[(s >= 4) & (s <= 8)], NOMINAL) + TIE_SLACK)
    assert band.window_[8] == 4 and band.n_[8] == 430  # session 4 is the nearest with enough
    assert (band.table()["n"] >= 100).all()


def test_apply_clips_to_the_score_range_and_leaves_the_intake_alone():
    band = ConformalBand().fit(np.full(50, 2), np.full(50, 10.0), np.full(50, 7.0),
                               np.full(50, 7.0), min_cell=1, max_session=2)
    # a zero-width calibration band counts as MIN_WIDTH = 1 point wide: E = 3 widths
    assert band.q_[2] == pytest.approx(3.0 + TIE_SLACK)
    lo, hi = band.apply([2, 2, 1, 9], [1.0, 20.0, 14.0, 24.0], [5.0, 26.0, 14.0, 25.0],
                        0.0, 27.0)
    # margins q * width: 3 * 4 = 12, 3 * 6 = 18, none at the intake, 3 * 1 at session 9
    np.testing.assert_allclose(lo, [0.0, 2.0, 14.0, 21.0], atol=1e-4)
    np.testing.assert_allclose(hi, [17.0, 27.0, 14.0, 27.0], atol=1e-4)  # 9: session 2's
    nan_lo, _ = band.apply([2], [np.nan], [np.nan], 0.0, 27.0)
    assert np.isnan(nan_lo[0])


def test_a_negative_margin_never_turns_the_band_inside_out():
    band = ConformalBand().fit(np.full(50, 2), np.zeros(50), np.full(50, -5.0),
                               np.full(50, 5.0), min_cell=1, max_session=2)
    # every score at the centre of a band 10 wide: E = -5 / 10 widths
    assert band.q_[2] == pytest.approx(-0.5 + TIE_SLACK)
    lo, hi = band.apply([2, 2], [-5.0, 1.0], [5.0, 3.0], -10.0, 10.0)
    assert lo[0] == pytest.approx(0.0, abs=1e-5) and hi[0] == pytest.approx(0.0, abs=1e-5)
    assert lo[1] == pytest.approx(2.0, abs=1e-5) and hi[1] == pytest.approx(2.0, abs=1e-5)
    assert (lo <= hi + 1e-9).all()


@pytest.mark.parametrize("kwargs, match", [({"coverage": 1.0}, "coverage"),
                                           ({"min_cell": 0}, "min_cell"),
                                           ({"max_session": 1}, "max_session")])
def test_bad_arguments_fail_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConformalBand().fit([2], [1.0], [0.0], [2.0], **kwargs)


def test_inputs_must_line_up_and_hold_post_intake_points():
    with pytest.raises(ValueError, match="same length"):
        ConformalBand().fit([2, 3], [1.0], [0.0], [2.0])
    with pytest.raises(ValueError, match="sessions >= 2"):
        ConformalBand().fit([1, 1], [1.0, 2.0], [0.0, 0.0], [2.0, 2.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        ConformalBand().apply([2], [0.0], [1.0], 0.0, 27.0)


# ------------------------------------------------------------------------------------------
# End to end: trained on one simulated cohort, measured on another
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(sim_cohort_dir):
    """PHQ-9 models fitted on the shared 2,000-client cohort (seed 11), as training fits
    them (`fit_instrument`: the band included)."""
    from features.contract import load_cohort
    from models.neighbours import trajectory_matrix
    from training.pipeline import Settings, fit_instrument, instrument_rows

    cohort = load_cohort(sim_cohort_dir)
    rows = instrument_rows(cohort, ["PHQ-9"])["PHQ-9"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = fit_instrument(cohort, rows, Settings(),
                                trajectory_matrix(cohort.sessions, "PHQ-9"))
    return models


@pytest.fixture(scope="module")
def new_clients(tmp_path_factory) -> pd.DataFrame:
    """2,000 clients from another simulator seed: never seen in training."""
    from features.contract import load_cohort
    from training.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("conformal_new")
    simulate_cohort(2000, seed=12, oracle_clients=0).write(out, "csv")
    return load_cohort(out).sessions


def test_conformal_coverage_on_new_clients_is_nominal(fitted, new_clients):
    """Coverage of the conformal band at sessions 2-8 on new clients. Tolerance: the
    guarantee is coverage >= 90%, so no lower than 90% - 3 binomial SE of the test n
    (SE = sqrt(0.9 * 0.1 / n): 0.75-1.1 points for n = 700-1,600); and within 3 SE of the
    calibration's own coverage (90% plus what integer scores tied at the margin add), SE
    combining the test n and the calibration n: sqrt(0.9 * 0.1 * (1/n + 1/n_cal))."""
    from training.conformal_eval import coverage_table

    band = fitted.band
    assert band is not None and band.coverage_ == NOMINAL
    tab = coverage_table(fitted, new_clients, range(2, 9))
    assert list(tab["session"]) == list(range(2, 9))
    assert (tab["n"] >= 500).all() and (tab["nominal"] == NOMINAL).all()
    for r in tab.itertuples():
        se = math.sqrt(NOMINAL * (1 - NOMINAL) / r.n)
        assert r.se == pytest.approx(se)
        assert r.conformal_coverage >= NOMINAL - 3 * se, r
        cal, n_cal = band.calibration_coverage_[r.session], band.n_[r.session]
        assert cal >= NOMINAL
        both = math.sqrt(NOMINAL * (1 - NOMINAL) * (1 / r.n + 1 / n_cal))
        assert abs(r.conformal_coverage - cal) <= 3 * both, r
        assert r.conformal_width > 0 and r.empirical_width > 0


def test_the_served_course_is_the_one_the_assessment_shows(fitted, new_clients):
    """`served_course` (calibration and evaluation) and the assessment's course so far come
    from the same code: identical values per client and session."""
    from models.assess import served_course
    from training.pipeline import make_bundle

    ids = pd.unique(new_clients["client_id"])[:40]
    s = new_clients[new_clients["client_id"].isin(ids)]
    served = served_course(fitted, s, "PHQ-9").set_index(["client_id", "session"])
    bundle = make_bundle({"PHQ-9": fitted}, {}, {})
    checked = 0
    for a in bundle.assess(s):
        for p in a.course_so_far:
            row = served.loc[(a.client_id, p.session)]
            assert (p.expected, p.lower, p.upper, p.failure_boundary) == pytest.approx(
                (row["expected"], row["lower"], row["upper"], row["failure_boundary"]),
                abs=1e-12)
            checked += 1
    assert checked > 100


def test_the_api_course_carries_the_band_around_the_expected_score(fitted, new_clients):
    from models.assess import Assessment
    from training.pipeline import make_bundle

    ids = pd.unique(new_clients["client_id"])[:200]
    s = new_clients[new_clients["client_id"].isin(ids)]
    out = make_bundle({"PHQ-9": fitted}, {}, {}).assess(s)
    points = [p for a in out for p in (*a.course_so_far, *a.course)]
    assert len(points) > 800
    for p in points:
        assert p.band_lower is not None and p.band_upper is not None
        assert 0.0 <= p.band_lower <= p.expected <= p.band_upper <= 27.0
        m = fitted.band.margin(p.session) * max(p.upper - p.lower, MIN_WIDTH)
        assert p.band_lower == pytest.approx(max(p.lower - m, 0.0))
        assert p.band_upper == pytest.approx(min(p.upper + m, 27.0))
    Assessment.model_validate(out[0].model_dump())  # the built objects match the schema

    # a bundle fitted before bands existed: no band attribute on the instance
    old = copy.copy(fitted)
    del old.band
    legacy = make_bundle({"PHQ-9": old}, {}, {}).assess(s.head(200))
    assert all(p.band_lower is None and p.band_upper is None
               for a in legacy for p in (*a.course_so_far, *a.course))


def test_the_chart_outlines_the_conformal_band_and_says_so():
    from serving import charts

    course = [charts.CoursePoint(s, 15 - s, 10 - s, 20 - s, 20 - s, 8.5 - s, 21.5 - s)
              for s in (3, 4, 5)]
    svg = charts.trajectory_svg("c", "PHQ-9", [(1, 18.0), (2, 16.0)], course, y_min=0,
                                y_max=27, cutoff=10, higher_is_better=False)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    outlines = [p for p in root.iter(f"{ns}polygon") if p.get("fill") == "none"]
    assert len(outlines) == 1 and outlines[0].get("stroke-dasharray")
    assert "90% conformal band" in svg
    desc = root.find(f"{ns}desc").text
    assert "session 3: expected 12, band 7 to 17, 90% conformal band 5.5 to 18.5" in desc

    plain = charts.trajectory_svg("c", "PHQ-9", [(1, 18.0)], [
        charts.CoursePoint(3, 12, 7, 17, 17)], y_min=0, y_max=27, cutoff=10,
        higher_is_better=False)
    assert "conformal" not in plain
