"""Sample size for external validation (training/samplesize.py), checked against the published
pmvalsampsize example and against simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import beta, norm
from sklearn.metrics import roc_auc_score

from training.samplesize import (
    Targets,
    binormal_lp,
    precision_check,
    required_sample_size,
)


def _by_name(items) -> dict:
    return {c.name: c for c in items}


def test_pmvalsampsize_heart_valve_example():
    """pmvalsampsize's documented binary example (R package, man/pmvalsampsize.Rd, first
    example; Python port, docs/example.ipynb), based on Riley et al. Stat Med 2021: mechanical
    heart valve failure, outcome proportion 0.018, C-statistic 0.8, LP normal with mean -5 and
    SD 2.5, O/E interval width 1, other widths at their defaults. Printed table: O/E 905,
    calibration slope 4544, C-statistic 4252; final 4544 clients with 82 events.

    O/E: the exact solution is 905.06, so 906 here; pmvalsampsize searches the SE in steps of
    0.0001 and stops at 0.2456, just above the exact 0.24552, hence 905. Slope: pmvalsampsize
    averages over 1,000,000 random LP draws (4544; 4501 with the 1,000 draws of its own test);
    here the integral is exact (4554)."""
    got = _by_name(required_sample_size(0.018, 0.8, lp_normal=(-5, 2.5),
                                        targets=Targets(oe_width=1)))
    assert abs(got["oe"].n - 905) <= 1
    assert got["calibration_slope"].n == pytest.approx(4544, rel=0.01)
    assert got["c_statistic"].n == 4252
    final = max(got.values(), key=lambda c: c.n)
    assert final.name == "calibration_slope"
    assert final.events == 82


def test_pmvalsampsize_beta_example_through_a_sample_of_predictions():
    """The second documented example (man/pmvalsampsize.Rd; CRAN tests/testthat/test_bin.R,
    "Test 4.2"): predicted probabilities Beta(0.5, 0.5), otherwise as above; slope criterion
    1641 (from 1,000 random draws, so only within a few per cent). A deterministic sample of
    predictions (the Beta quantiles) goes in as `p_sample`."""
    grid = (np.arange(200_000) + 0.5) / 200_000
    got = _by_name(required_sample_size(0.018, 0.8, p_sample=beta.ppf(grid, 0.5, 0.5),
                                        targets=Targets(oe_width=1)))
    assert got["calibration_slope"].n == pytest.approx(1641, rel=0.02)
    assert got["c_statistic"].n == 4252  # does not depend on the predictions


def test_a_sample_of_predictions_agrees_with_the_normal_lp_integral():
    grid = (np.arange(200_000) + 0.5) / 200_000
    p = expit(norm.ppf(grid, loc=-1.0, scale=1.2))
    from_sample = _by_name(required_sample_size(0.3, 0.75, p_sample=p))
    from_normal = _by_name(required_sample_size(0.3, 0.75, lp_normal=(-1.0, 1.2)))
    assert from_sample["calibration_slope"].n == pytest.approx(
        from_normal["calibration_slope"].n, rel=0.002)


def test_binormal_default_is_calibrated_with_the_given_c_statistic():
    """Without predictions, the LP is binormal with equal variances (pmvalsampsize's `lpcstat`);
    the closed form must give the stated prevalence and C-statistic."""
    prevalence, c = 0.35, 0.78
    m0, m1, sd = binormal_lp(prevalence, c)
    rng = np.random.default_rng(0)
    n = 400_000
    y = rng.random(n) < prevalence
    lp = np.where(y, rng.normal(m1, sd, n), rng.normal(m0, sd, n))
    assert roc_auc_score(y, lp) == pytest.approx(c, abs=0.003)
    assert expit(lp).mean() == pytest.approx(prevalence, abs=0.003)
    # calibrated: among clients with predicted risk near 0.5, about half have the outcome
    mid = np.abs(lp) < 0.05
    assert y[mid].mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("field,narrow,wide", [
    ("oe_width", 0.1, 0.3), ("slope_width", 0.1, 0.3), ("c_width", 0.05, 0.15),
    ("net_benefit_width", 0.1, 0.3),
])
def test_a_wider_target_needs_fewer_clients(field, narrow, wide):
    def need(width):
        targets = Targets(threshold=0.3, **{field: width})
        return _by_name(required_sample_size(0.3, 0.75, targets=targets))
    name = {"oe_width": "oe", "slope_width": "calibration_slope", "c_width": "c_statistic",
            "net_benefit_width": "net_benefit"}[field]
    assert need(wide)[name].n < need((narrow + wide) / 2)[name].n < need(narrow)[name].n


def test_precision_check_on_100_clients_says_too_small():
    checks = _by_name(precision_check(100, 27, None, 0.75))
    assert set(checks) == {"oe", "calibration_slope", "c_statistic"}
    for c in checks.values():
        assert not c.meets and c.width > c.target and c.required_n > 100
        assert c.sentence.startswith("Too small for ")
        assert c.sentence.endswith("this cohort has 100 (27).")
    slope = checks["calibration_slope"]
    assert slope.sentence.startswith(
        "Too small for a calibration slope with a 95% interval narrower than 0.2")
    assert f"needs about {slope.required_n:,} clients ({slope.required_events:,} with the " \
           "outcome)" in slope.sentence


def test_precision_check_turns_at_the_required_size():
    for c in required_sample_size(0.27, 0.75, targets=Targets(threshold=0.3)):
        events = round(c.n * 0.27)
        at = _by_name(precision_check(c.n, events, 0.27, 0.75,
                                      targets=Targets(threshold=0.3)))[c.name]
        below = _by_name(precision_check(c.n - 1, events, 0.27, 0.75,
                                         targets=Targets(threshold=0.3)))[c.name]
        assert at.meets and at.width <= c.target and at.sentence.startswith("Enough for ")
        assert not below.meets and below.width > c.target


@pytest.mark.parametrize("n,events,start", [
    (0, 0, "No clients: nothing can be estimated."),
    (100, 0, "No outcome events among the 100 clients: nothing can be estimated."),
    (50, 50, "All 50 clients had the outcome: nothing can be estimated"),
])
def test_empty_cohorts_get_a_sentence_not_a_traceback(n, events, start):
    checks = precision_check(n, events, None, 0.75)
    assert len(checks) == 3
    assert all(c.sentence.startswith(start) and not c.meets and c.required_n is None
               for c in checks)
    planned = precision_check(n, events, 0.3, 0.75)  # a planning prevalence adds the target
    assert all(c.required_n is not None and "needs about" in c.sentence for c in planned)


def test_net_benefit_standard_error_matches_simulation():
    """The standardised net benefit variance (Riley et al. 2021, as in pmvalsampsize) against
    the spread of sNB over simulated validation cohorts from a calibrated model."""
    # threshold 0.4: the weight w = (1 - phi)/phi * t/(1 - t) is 1.53, far enough from 1 that
    # w and w^2 give standard errors 5% apart; 4,000 cohorts pin the spread to about 1%.
    n, prevalence_lp, threshold = 2000, (-1.0, 1.0), 0.4
    check = _by_name(precision_check(n, 600, 0.303, 0.74, lp_normal=prevalence_lp,
                                     targets=Targets(threshold=threshold)))["net_benefit"]
    rng = np.random.default_rng(1)
    snb = []
    for _ in range(4000):
        p = expit(rng.normal(*prevalence_lp, n))
        y = rng.random(n) < p
        flagged = p >= threshold
        nb = np.mean(flagged & y) - np.mean(flagged & ~y) * threshold / (1 - threshold)
        snb.append(nb / y.mean())
    assert check.width / (2 * 1.96) == pytest.approx(np.std(snb), rel=0.03)


@pytest.mark.parametrize("kwargs", [
    {"prevalence": 0.0}, {"prevalence": 1.2}, {"c_statistic": 1.0},
    {"p_sample": [0.2, 1.5]}, {"lp_normal": (-1, 0)},
])
def test_bad_input_is_refused(kwargs):
    args = {"prevalence": 0.3, "c_statistic": 0.75} | kwargs
    with pytest.raises(ValueError):
        required_sample_size(**args)


@pytest.mark.parametrize("kwargs", [{"c_width": 0}, {"oe_width": -0.2}, {"threshold": 1.0}])
def test_targets_refuse_impossible_widths(kwargs):
    with pytest.raises(ValueError):
        Targets(**kwargs)
