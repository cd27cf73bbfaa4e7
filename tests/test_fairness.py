"""Subgroup fairness tables (training/fairness.py) on seeded synthetic cohorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.metrics import confusion_matrix, recall_score, roc_auc_score

from training.fairness import ALL_CLIENTS, OVERALL, RISK_METRICS, flag_fairness, risk_fairness


def _noise_vs_informative(n_per_group: int = 300, seed: int = 0):
    """Two age bands with the same outcome rate; the risk is informative in "18-25" and pure
    noise in "66+"."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(-0.3, 1.2, n_per_group)
    p_inf = 1 / (1 + np.exp(-lp))
    y_inf = (rng.random(n_per_group) < p_inf).astype(int)
    y_noise = (rng.random(n_per_group) < p_inf.mean()).astype(int)
    p_noise = rng.permutation(p_inf)  # same spread of risks, unrelated to the outcome
    y = np.r_[y_inf, y_noise]
    p = np.r_[p_inf, p_noise]
    groups = pd.DataFrame({"age_band": ["18-25"] * n_per_group + ["66+"] * n_per_group,
                           "gender": rng.choice(["female", "male"], 2 * n_per_group)})
    return y, p, (p >= 0.5).astype(int), groups


def _row(result, grouping: str, group: str) -> pd.Series:
    t = result.table
    return t[(t["grouping"] == grouping) & (t["group"] == group)].iloc[0]


def test_auroc_gap_names_the_group_whose_predictions_are_noise():
    y, p, flag, groups = _noise_vs_informative()
    result = risk_fairness(y, p, flag, groups, n_boot=0)
    gap = result.gaps.set_index(["grouping", "metric"]).loc[("age_band", "auroc")]
    assert gap["group_high"] == "18-25"
    assert gap["group_low"] == "66+"
    informative, noise = _row(result, "age_band", "18-25"), _row(result, "age_band", "66+")
    assert informative["auroc"] > 0.7
    assert abs(noise["auroc"] - 0.5) < 0.1
    assert gap["largest_gap"] == pytest.approx(informative["auroc"] - noise["auroc"])
    line = next(s for s in result.sentences() if s.startswith("Largest AUROC gap by age band:"))
    assert f"{gap['largest_gap']:.2f} (18-25 {informative['auroc']:.2f}" in line
    assert f"vs 66+ {noise['auroc']:.2f}" in line


def test_equal_groups_have_no_gap_and_no_named_groups():
    # the noise group's risks are a permutation of the informative group's: same flag rate
    y, p, flag, groups = _noise_vs_informative()
    result = risk_fairness(y, p, flag, groups, n_boot=0)
    gap = result.gaps.set_index(["grouping", "metric"]).loc[("age_band", "flag_rate")]
    assert gap["largest_gap"] == 0
    assert pd.isna(gap["group_high"]) and pd.isna(gap["group_low"])
    rate = _row(result, "age_band", "66+")["flag_rate"]
    assert f"No flag rate gap by age band: {100 * rate:.0f}% in every group." in result.sentences()


def test_group_of_nine_is_suppressed_and_group_of_ten_is_not():
    rng = np.random.default_rng(1)
    sizes = {"clinic_a": 9, "clinic_b": 10, "clinic_c": 120}
    clinic = np.repeat(list(sizes), list(sizes.values()))
    n = len(clinic)
    p = rng.uniform(0.1, 0.9, n)
    y = (rng.random(n) < p).astype(int)
    y[:9] = 1  # clinic_a's nine clients all had the outcome: the highest rates if it were shown
    flag = np.ones(n, dtype=int)
    flag[9:] = (p[9:] >= 0.5).astype(int)
    result = risk_fairness(y, p, flag, pd.DataFrame({"clinic_id": clinic}), n_boot=20,
                           min_cell=10)

    a, b = _row(result, "clinic_id", "clinic_a"), _row(result, "clinic_id", "clinic_b")
    assert bool(a["suppressed"]) and not bool(b["suppressed"])
    metric_cols = [c for c in result.table.columns
                   if c not in ("grouping", "group", "suppressed")]
    assert a[metric_cols].isna().all()
    assert b["n"] == 10 and b["events"] == y[9:19].sum()
    assert np.isfinite(b["flag_rate"])
    named = set(result.gaps["group_high"].dropna()) | set(result.gaps["group_low"].dropna())
    assert "clinic_a" not in named
    flag_gap = result.gaps.set_index("metric").loc["flag_rate"]
    assert flag_gap["group_high"] != "clinic_a"  # clinic_a (flag rate 100%) is left out
    overall = _row(result, OVERALL, ALL_CLIENTS)
    assert overall["n"] == n and overall["events"] == y.sum()  # suppressed clients still count
    assert any("clinic id (fewer than 10 clients): clinic_a." in s for s in result.sentences())


@pytest.mark.slow
def test_intervals_contain_the_point_estimate():
    y, p, flag, groups = _noise_vs_informative(seed=2)
    result = risk_fairness(y, p, flag, groups, n_boot=50, seed=3)
    shown = result.table[~result.table["suppressed"]]
    assert len(shown) == 5  # overall, two age bands, two genders
    for m in RISK_METRICS:
        lo, v, hi = shown[f"{m}_lo"], shown[m], shown[f"{m}_hi"]
        assert (lo <= v).all() and (v <= hi).all(), m
        assert (hi - lo > 0).all(), m  # a real interval, not the point repeated


def test_flag_fairness_equals_hand_computed_shares():
    # clinic x: failed 1 1 1 0 0 0, flagged 1 1 0 1 0 0 -> flag rate 3/6, sensitivity 2/3,
    #           false alarms 1/3
    # clinic y: failed 1 0 0,       flagged 0 1 1       -> flag rate 2/3, sensitivity 0,
    #           false alarms 2/2
    failed = [1, 1, 1, 0, 0, 0, 1, 0, 0]
    flagged = [1, 1, 0, 1, 0, 0, 0, 1, 1]
    groups = pd.DataFrame({"clinic_id": ["x"] * 6 + ["y"] * 3})
    result = flag_fairness(flagged, failed, groups, n_boot=0, min_cell=2)
    x, yy = _row(result, "clinic_id", "x"), _row(result, "clinic_id", "y")
    assert (x["n"], x["events"], yy["n"], yy["events"]) == (6, 3, 3, 1)
    assert x["flag_rate"] == pytest.approx(3 / 6)
    assert x["sensitivity"] == pytest.approx(2 / 3)
    assert x["false_alarm_rate"] == pytest.approx(1 / 3)
    assert yy["flag_rate"] == pytest.approx(2 / 3)
    assert yy["sensitivity"] == 0
    assert yy["false_alarm_rate"] == 1
    overall = _row(result, OVERALL, ALL_CLIENTS)
    assert overall["flag_rate"] == pytest.approx(5 / 9)
    assert overall["sensitivity"] == pytest.approx(2 / 4)
    assert overall["false_alarm_rate"] == pytest.approx(3 / 5)
    gaps = result.gaps.set_index("metric")
    assert gaps.loc["sensitivity", "largest_gap"] == pytest.approx(2 / 3)
    assert (gaps.loc["sensitivity", "group_high"], gaps.loc["sensitivity", "group_low"]) == \
        ("x", "y")
    assert gaps.loc["false_alarm_rate", "largest_gap"] == pytest.approx(2 / 3)
    assert gaps.loc["false_alarm_rate", "group_high"] == "y"
    assert gaps.loc["flag_rate", "largest_gap"] == pytest.approx(2 / 3 - 3 / 6)
    assert "auroc" not in result.table.columns


def test_metricframe_overall_equals_direct_computation():
    y, p, flag, groups = _noise_vs_informative(seed=4)
    result = risk_fairness(y, p, flag, groups, n_boot=0)
    overall = result.frames[OVERALL].overall
    tn, fp, fn, tp = confusion_matrix(y, flag).ravel()
    assert overall["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert overall["sensitivity"] == pytest.approx(recall_score(y, flag))
    assert overall["false_alarm_rate"] == pytest.approx(fp / (fp + tn))
    assert overall["flag_rate"] == pytest.approx(flag.mean())
    assert overall["oe_ratio"] == pytest.approx(y.sum() / p.sum())
    offset = np.log(p / (1 - p))
    glm = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=offset).fit()
    assert overall["cal_intercept"] == pytest.approx(glm.params[0], abs=1e-6)
    # and per group, the table row is fairlearn's by_group value
    by = result.frames["gender"].by_group
    male = groups["gender"].to_numpy() == "male"
    assert by.loc["male", "auroc"] == pytest.approx(roc_auc_score(y[male], p[male]), abs=1e-12)
    assert _row(result, "gender", "male")["auroc"] == by.loc["male", "auroc"]


def test_undefined_metric_is_nan_not_an_error():
    rng = np.random.default_rng(5)
    n = 60
    p = rng.uniform(0.2, 0.8, n)
    y = (rng.random(n) < p).astype(int)
    y[:20] = 0  # clinic q: no eventual non-improvers
    groups = pd.DataFrame({"clinic_id": ["q"] * 20 + ["r"] * 40})
    result = risk_fairness(y, p, (p >= 0.5).astype(int), groups, n_boot=10)
    q = _row(result, "clinic_id", "q")
    assert not q["suppressed"]
    assert np.isnan(q["auroc"]) and np.isnan(q["sensitivity"]) and np.isnan(q["sensitivity_hi"])
    assert np.isfinite(q["false_alarm_rate"])
    auroc_gap = result.gaps.set_index("metric").loc["auroc"]
    assert np.isnan(auroc_gap["largest_gap"]) and pd.isna(auroc_gap["group_high"])


def test_renaming_a_clinic_changes_only_its_label():
    y, p, flag, groups = _noise_vs_informative(seed=6)
    a = risk_fairness(y, p, flag, groups, n_boot=0).table
    renamed = groups.replace({"age_band": {"18-25": "young adults"}})
    b = risk_fairness(y, p, flag, renamed, n_boot=0).table
    b = b.replace({"group": {"young adults": "18-25"}})
    key = ["grouping", "group"]
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                  b.sort_values(key).reset_index(drop=True))


@pytest.mark.parametrize("bad", [
    {"y": [0, 1, 2]}, {"p": [0.1, 1.2, 0.3]}, {"groups": pd.DataFrame({"a": [1, 2]})},
    {"n_boot": -1},
])
def test_bad_input_is_refused_before_any_work(bad):
    args = {"y": [0, 1, 1], "p": [0.1, 0.6, 0.3], "flag": [0, 1, 0],
            "groups": pd.DataFrame({"a": ["u", "u", "v"]}), "n_boot": 0} | bad
    with pytest.raises(ValueError):
        risk_fairness(**args)
