"""Reliable change, clinical significance and the NHS Talking Therapies paired rules."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from features.change import Change, classify, nhs_outcomes, nhs_summary, reliable_change
from features.instruments import REGISTRY


def test_phq9_reliable_improvement_golden():
    """NHS Talking Therapies manual: a PHQ-9 fall of 6 or more points is reliable improvement;
    caseness is >= 10. 18 -> 12 is reliable but still at caseness; 15 -> 9 recovers; 15 -> 10
    is unchanged (a fall of 5); 8 -> 14 is reliable deterioration; at the boundary, 16 -> 10 is
    reliable but still at caseness (10 is a case) and 16 -> 9 recovers."""
    pre = [18, 15, 15, 8, 16, 16]
    post = [12, 9, 10, 14, 10, 9]
    assert list(classify(pre, post, "PHQ-9")) == [
        Change.RELIABLY_IMPROVED, Change.RECOVERED, Change.UNCHANGED,
        Change.RELIABLY_DETERIORATED, Change.RELIABLY_IMPROVED, Change.RECOVERED]


def test_ors_direction_golden():
    """ORS (Miller & Duncan): higher is better, adult cut-off 25, RCI 5. 18 -> 27 recovers;
    30 -> 24 is a reliable deterioration."""
    assert list(classify([18, 30], [27, 24], "ORS")) == [Change.RECOVERED,
                                                          Change.RELIABLY_DETERIORATED]


def test_nhs_paired_rules_golden():
    """Cases worked by hand on the published rules of the NHS Talking Therapies manual (the
    manual states the rules, not worked cases: PHQ-9 caseness >= 10 and reliable change 6;
    GAD-7 >= 8 and 4; recovery = at caseness at the start, on neither at the end):
    1. PHQ-9 16 -> 8, GAD-7 12 -> 6: recovery and reliable improvement = reliable recovery.
    2. PHQ-9 16 -> 11, GAD-7 12 -> 7: GAD-7 falls 5 (reliable), PHQ-9 still >= 10 -> reliable
       improvement, no recovery.
    3. PHQ-9 12 -> 18, GAD-7 6 -> 6: reliable deterioration.
    4. PHQ-9 14 -> 6, GAD-7 5 -> 12: one improves, one deteriorates -> neither (tie rule).
    5. PHQ-9 6 -> 5, GAD-7 5 -> 4: not at caseness at the start."""
    f = nhs_outcomes([16, 16, 12, 14, 6], [8, 11, 18, 6, 5], [12, 12, 6, 5, 5], [6, 7, 6, 12, 4])
    assert f["caseness"].tolist() == [True, True, True, True, False]
    assert f["recovery"].tolist() == [True, False, False, False, False]
    assert f["reliable_improvement"].tolist() == [True, True, False, False, False]
    assert f["reliable_deterioration"].tolist() == [False, False, True, False, False]
    assert f["reliable_recovery"].tolist() == [True, False, False, False, False]


def test_nhs_summary_counts_finished_courses_only():
    s = pd.DataFrame({
        "client_id": ["a"] * 4 + ["b"] * 2 + ["c"] * 3,
        "session": [1, 1, 4, 4, 1, 1, 1, 1, 2],
        "instrument": ["PHQ-9", "GAD-7"] * 3 + ["PHQ-9", "GAD-7", "PHQ-9"],
        "score": [16, 12, 8, 6, 20, 15, 20, 15, 5],
    })
    out = nhs_summary(s)
    # b has one paired score; c has no second GAD-7: only a finished a course.
    assert out["finished_courses"] == 1 and out["reliable_recovery"] == 1.0


scores = st.integers(0, 27)


@given(st.lists(st.tuples(scores, scores), min_size=1, max_size=30))
def test_swapping_first_and_last_swaps_improvement_and_deterioration(pairs):
    pre, post = np.array(pairs).T
    fwd, back = reliable_change(pre, post, "PHQ-9"), reliable_change(post, pre, "PHQ-9")
    assert np.array_equal(fwd, -back)
    cf, cb = classify(pre, post, "PHQ-9"), classify(post, pre, "PHQ-9")
    improved = np.isin(cf, [Change.RECOVERED, Change.RELIABLY_IMPROVED])
    assert np.array_equal(improved, cb == Change.RELIABLY_DETERIORATED)


@given(st.sampled_from([c for c, i in REGISTRY.items() if i.rci]), st.floats(0, 1),
       st.floats(0, 1))
def test_direction_mirror(code, a, b):
    inst = REGISTRY[code]
    lo, hi = inst.score_min, inst.score_max
    pre, post = lo + a * (hi - lo), lo + b * (hi - lo)
    rc = reliable_change([pre], [post], code)[0]
    worse = (post - pre) * inst.sign
    assume(abs(abs(post - pre) - inst.rci) > 1e-6)  # not on the threshold itself
    # reliable when the change reaches the RCI; its sign is the direction of the change
    assert rc == (0 if abs(post - pre) < inst.rci else -np.sign(worse))


def test_missing_cutoff_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="cut-off"):
        from features.change import clinical
        clinical([10], "WAI-SR")


def test_nhs_paired_target_by_hand():
    """NHS Talking Therapies rule (manual v6): reliable improvement = PHQ-9 down >= 6 or GAD-7
    down >= 4, and neither reliably worse. A: PHQ-9 15 -> 14, GAD-7 12 -> 7: improved by GAD-7
    (not by PHQ-9). B: PHQ-9 8 -> 9, GAD-7 6 -> 7: not at caseness, undefined. C: PHQ-9 12 -> 4
    but GAD-7 9 -> 14: one improves, one deteriorates, neither counts (tie rule)."""
    from features.targets import targets

    rows = []
    for cid, (p1, p2, g1, g2) in {"A": (15, 14, 12, 7), "B": (8, 9, 6, 7),
                                  "C": (12, 4, 9, 14)}.items():
        rows += [(cid, 1, "PHQ-9", p1), (cid, 1, "GAD-7", g1), (cid, 2, "PHQ-9", p2),
                 (cid, 2, "GAD-7", g2)]
    s = pd.DataFrame(rows, columns=["client_id", "session", "instrument", "score"])
    nhs = targets(s, target="failed_nhs")
    own = targets(s)
    assert nhs.loc["A", "failed"] == 0 and own.loc["A", "failed"] == 1
    assert np.isnan(nhs.loc["B", "failed"]) and np.isnan(own.loc["B", "failed"])
    assert nhs.loc["C", "failed"] == 1 and own.loc["C", "failed"] == 0
    assert nhs.loc["C", "deteriorated"] == 0 and nhs.loc["A", "deteriorated"] == 0
