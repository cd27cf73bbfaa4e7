"""The simulator summary's realism checks, on frames built by hand with known answers.

Therapist share of outcome variance (random-intercept mixed model, Johns et al. 2019 about 5%),
the PHQ-9 / GAD-7 change correlation, and Tang & DeRubeis (1999) sudden gains. One small
simulated cohort checks only that the rows exist and are finite.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

from features.instruments import get as get_instrument
from training.simulate import simulate_cohort, summary

S = importlib.import_module("training.simulate.summary")  # the package re-exports summary()


def _phq_frame(histories: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"client_id": cid, "session": k + 1, "instrument": "PHQ-9", "score": float(v)}
            for cid, scores in histories.items() for k, v in enumerate(scores)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# Therapist share of outcome variance
# ------------------------------------------------------------------------------------------
def _planted_therapist_cohort(share: float, therapists: int = 300, per: int = 40, seed: int = 7):
    """last = 2 + 0.5 intake + u_therapist + e, var(u) / (var(u) + var(e)) = share."""
    rng = np.random.default_rng(seed)
    total = 16.0
    n = therapists * per
    tid = np.repeat([f"T{t:03d}" for t in range(therapists)], per)
    u = np.repeat(rng.normal(0, np.sqrt(share * total), therapists), per)
    intake = rng.uniform(10, 27, n)
    last = 2 + 0.5 * intake + u + rng.normal(0, np.sqrt((1 - share) * total), n)
    cid = [f"C{i:05d}" for i in range(n)]
    sessions = pd.DataFrame({
        "client_id": np.repeat(cid, 2), "session": np.tile([1, 2], n), "instrument": "PHQ-9",
        "score": np.column_stack([intake, last]).ravel(),
        "therapist_id": np.repeat(tid, 2), "clinic_id": np.repeat(
            [f"K{int(t[1:]) % 6}" for t in tid], 2)})
    clients = pd.DataFrame({"client_id": cid, "end_status": "finished"})
    return sessions, clients


def test_mixed_model_recovers_a_planted_five_percent_therapist_share():
    """300 therapists x 40 clients, 5% planted: recovered within +-1.5 points."""
    sessions, clients = _planted_therapist_cohort(0.05)
    te = S.therapist_share(sessions, clients)
    assert te["clients"] == 12_000 and te["therapists"] == 300
    assert abs(te["mixed"] - 0.05) <= 0.015
    assert abs(te["moments"] - 0.05) <= 0.015
    assert abs(te["mixed"] - te["moments"]) <= 0.005  # same model, two estimators


def test_therapist_share_is_near_zero_without_therapist_variance():
    sessions, clients = _planted_therapist_cohort(0.0, therapists=100)
    te = S.therapist_share(sessions, clients)
    assert 0.0 <= te["mixed"] <= 0.01


def test_therapist_sample_keeps_ended_clinical_cases_with_two_scores():
    """Ongoing courses, intake below the PHQ-9 cut-off and single scores are left out."""
    sessions = pd.DataFrame({
        "client_id": ["a", "a", "b", "b", "c", "c", "d"],
        "session": [1, 2, 1, 2, 1, 3, 1], "instrument": "PHQ-9",
        "score": [15.0, 9.0, 9.0, 4.0, 20.0, 18.0, 22.0],
        "therapist_id": ["T1", "T1", "T1", "T1", "T2", "T2", "T2"]})
    clients = pd.DataFrame({"client_id": list("abcd"),
                            "end_status": ["finished", "finished", "ongoing", "dropout"]})
    df = S.therapist_outcome_sample(sessions, clients)
    assert list(df.index) == ["a"]
    assert df.loc["a", "intake"] == 15.0 and df.loc["a", "last"] == 9.0
    # The cut-off is the registry's, not a constant here.
    assert get_instrument("PHQ-9").cutoff == 10


def test_therapist_share_is_nan_without_therapist_ids():
    sessions, clients = _planted_therapist_cohort(0.05, therapists=20)
    te = S.therapist_share(sessions.drop(columns=["therapist_id"]), clients)
    assert np.isnan(te["mixed"]) and te["clients"] == 0


# ------------------------------------------------------------------------------------------
# PHQ-9 / GAD-7 change correlation
# ------------------------------------------------------------------------------------------
def test_change_correlation_equals_numpy_corrcoef_on_a_hand_built_frame():
    # (client, session, PHQ-9, GAD-7); None = not scored at that session.
    scored = [
        # Counted: both scores at intake and at a later session.
        ("a", 1, 18, 15), ("a", 2, 14, 12), ("a", 4, 9, 7),
        ("b", 1, 12, 9), ("b", 3, 13, 11),
        ("c", 1, 22, 18), ("c", 2, 20, 17), ("c", 3, 8, None),  # last paired session is 2
        ("d", 1, 15, 16), ("d", 5, 5, 4),
        ("e", 1, 10, 14), ("e", 2, 11, 9),
        # Left out: no GAD-7 at intake; a single paired session.
        ("f", 1, 17, None), ("f", 2, 12, 10), ("f", 3, 9, 8),
        ("g", 1, 19, 13),
    ]
    rows = [{"client_id": c, "session": k, "instrument": inst, "score": float(v)}
            for c, k, phq, gad in scored for inst, v in (("PHQ-9", phq), ("GAD-7", gad))
            if v is not None]
    rows += [{"client_id": c, "session": 1, "instrument": "SRS", "score": 30.0} for c in "af"]
    sessions = pd.DataFrame(rows)
    d_phq = np.array([9 - 18, 13 - 12, 20 - 22, 5 - 15, 11 - 10], float)
    d_gad = np.array([7 - 15, 11 - 9, 17 - 18, 4 - 16, 9 - 14], float)
    pg = S.phq_gad_correlations(sessions)
    assert pg["n_change"] == 5
    assert pg["change_r"] == pytest.approx(np.corrcoef(d_phq, d_gad)[0, 1], abs=1e-12)
    # Intake correlation: every client with both at intake (all but f).
    phq0 = [18, 12, 22, 15, 10, 19]
    gad0 = [15, 9, 18, 16, 14, 13]
    assert pg["n_intake"] == 6
    assert pg["intake_r"] == pytest.approx(np.corrcoef(phq0, gad0)[0, 1], abs=1e-12)


# ------------------------------------------------------------------------------------------
# Sudden gains (Tang & DeRubeis 1999)
# ------------------------------------------------------------------------------------------
HISTORIES = {
    "gain": [20, 19, 20, 10, 9, 10, 9],      # 10 points, 50%, stable on both sides
    "small": [8, 8, 8, 3, 3, 3],              # 5 points: below the PHQ-9's RCI of 6
    "relative": [27, 27, 27, 21, 21, 21],     # 6 points but 22% of 27 (< 25%)
    "unstable": [14, 22, 14, 22, 14, 22],     # 8-point drops inside a see-saw
    "short": [20, 10, 10],                    # 3 scores: no testable interval
}


def test_one_sudden_gain_is_counted_and_each_failed_criterion_is_not():
    sessions = _phq_frame(HISTORIES)
    share, n = S.sudden_gain_share(sessions)
    assert n == 4  # clients with >= 4 scores
    assert share == pytest.approx(1 / 4)

    ids, scores, _ = S._phq_histories(sessions)
    c1, c2, c3 = S.sudden_gain_criteria(scores)
    row = {cid: i for i, cid in enumerate(ids)}
    assert get_instrument("PHQ-9").rci == 6  # criterion 1 reads the registry
    g = row["gain"]
    assert (c1 & c2 & c3)[g].tolist() == [False, False, True, False, False, False]
    # Each failing history fails exactly one criterion at its largest drop.
    for cid, j, failed in (("small", 2, 0), ("relative", 2, 1), ("unstable", 1, 2)):
        met = [bool(c[row[cid], j]) for c in (c1, c2, c3)]
        assert met == [k != failed for k in range(3)], (cid, met)
        assert not (c1 & c2 & c3)[row[cid]].any()
    assert not (c1 | c2 | c3)[row["short"]].any()


def test_third_criterion_scales_the_critical_value_with_fewer_scores():
    """Difference 3.0 with pooled SD 1.0: passes at t(4) = 2.776 (3 + 3 scores), fails at
    t(3) = 3.182 (2 + 3 scores, the first testable interval)."""
    h = 0.5 ** 0.5
    scores = np.array([[11, 12, 13, 8, 9, 10],
                       [12 - h, 12 + h, 8, 9, 10, np.nan]])
    _, _, c3 = S.sudden_gain_criteria(scores)
    assert c3[0, 2]
    assert not c3[1, 1]


def test_simplified_criterion_counts_the_see_saw_that_tang_derubeis_rejects():
    """The looser row: a fixed 5-point mean drop instead of the t criterion."""
    sessions = _phq_frame({"a": [22, 22, 22, 14, 22, 14, 14], "gain": HISTORIES["gain"]})
    strict, n = S.sudden_gain_share(sessions)
    loose, n_loose = S.simplified_sudden_gain_share(sessions)
    assert n == n_loose == 2
    assert strict == pytest.approx(0.5) and loose == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------
# Smoke test on a small simulated cohort
# ------------------------------------------------------------------------------------------
def test_summary_rows_exist_and_are_finite_on_a_small_cohort():
    cohort = simulate_cohort(3000, seed=23, oracle_clients=0)
    rows = {r.figure.split(" (n=")[0]: r for r in summary(cohort.sessions, cohort.clients)}
    for name in ("therapist share of outcome variance, mixed model",
                 "PHQ-9 / GAD-7 change correlation", "PHQ-9 / GAD-7 intake correlation",
                 "sudden-gain share, Tang & DeRubeis",
                 "sudden-gain share, simplified criterion (same n)", "alliance-outcome r"):
        r = rows[name]
        assert isinstance(r.simulated, float) and np.isfinite(r.simulated), name
        # the therapist SD is calibrated to the published share (params.py), so that row says so
        assert r.tuned == name.startswith("therapist share"), name
    te = rows["therapist share of outcome variance, mixed model"]
    assert (te.low, te.high) == (0.03, 0.07)
    ar = rows["alliance-outcome r"]
    assert (ar.low, ar.high) == (0.20, 0.35)
    assert "%" in rows["therapist share: moments / with clinic fixed effects"].simulated
