"""Point-in-time features (features/pointintime.py): leakage, invariance, direction, hand-checked
values, edge cases, one-client vs batch equality, and the feature-mismatch diff."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.pointintime import (
    CHECKLIST_FEATURES,
    FEATURE_NAMES,
    FEATURE_VERSION,
    FeatureMismatchError,
    check_features,
    expected_deviation,
    feature_signature,
    point_in_time,
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def frame(rows: list[tuple], items: dict[int, dict[str, float]] | None = None) -> pd.DataFrame:
    """Contract-typed sessions from (client_id, session, instrument, score[, date]) tuples.
    `items` maps a row position to its item answers."""
    recs = []
    for k, r in enumerate(rows):
        rec = {"client_id": r[0], "session": r[1], "instrument": r[2], "score": float(r[3]),
               "date": pd.Timestamp(r[4]) if len(r) > 4 else pd.NaT}
        rec.update((items or {}).get(k, {}))
        recs.append(rec)
    df = pd.DataFrame(recs)
    df["client_id"] = df["client_id"].astype("string")
    df["session"] = df["session"].astype("Int64")
    df["instrument"] = df["instrument"].astype("string")
    df["date"] = pd.to_datetime(df["date"])
    if "item_9" not in df.columns:
        df["item_9"] = np.nan
    return df


def cohort(n_clients: int, seed: int = 0) -> pd.DataFrame:
    """A simulated cohort's sessions: PHQ-9 (+ item 9), GAD-7 and SRS, missed sessions, dates."""
    from training.simulate import simulate_cohort

    return simulate_cohort(n_clients, seed=seed, oracle_clients=0).sessions


def by_key(ff) -> pd.DataFrame:
    out = pd.concat([ff.keys.rename(columns={"session": "t"}), ff.X], axis=1)
    return out.sort_values(["client_id", "t"]).reset_index(drop=True)


# A 4-session PHQ-9 client, checked by hand (see test_hand_computed_four_sessions).
HAND = [
    ("a", 1, "PHQ-9", 20, "2024-01-01"), ("a", 1, "GAD-7", 15, "2024-01-01"),
    ("a", 1, "SRS", 38, "2024-01-01"),
    ("a", 2, "PHQ-9", 17, "2024-01-08"), ("a", 2, "SRS", 34, "2024-01-08"),
    ("a", 4, "PHQ-9", 12, "2024-01-22"), ("a", 4, "GAD-7", 9, "2024-01-22"),
    ("a", 5, "PHQ-9", 14, "2024-01-29"), ("a", 5, "SRS", 36, "2024-01-29"),
]
HAND_ITEMS = {0: {"item_9": 1.0}, 3: {"item_9": 0.0}, 5: {"item_9": 0.0}}


# --------------------------------------------------------------------------------------------
# Shape
# --------------------------------------------------------------------------------------------
def test_columns_dtypes_and_no_ids():
    ff = point_in_time(cohort(50))
    assert tuple(ff.X.columns) == FEATURE_NAMES
    assert (ff.X.dtypes == np.float64).all()
    assert "client_id" not in ff.X.columns and "end_status" not in ff.X.columns
    assert list(ff.keys.columns) == ["client_id", "session"]
    assert len(ff.keys) == len(ff.X)
    assert ff.version == FEATURE_VERSION
    assert set(ff.keys["session"]) <= {1, 2, 3, 4, 5, 6}


def test_rows_only_where_primary_score_at_t():
    df = cohort(80, seed=3)
    ff = point_in_time(df)
    phq = df[df["instrument"] == "PHQ-9"]
    expected = set(zip(phq["client_id"], phq["session"], strict=True))
    expected = {k for k in expected if k[1] <= 6}
    assert set(zip(ff.keys["client_id"], ff.keys["session"], strict=True)) == expected


# --------------------------------------------------------------------------------------------
# Hand-computed example
# --------------------------------------------------------------------------------------------
def test_hand_computed_four_sessions():
    """PHQ-9 20, 17, -, 12, 14 at sessions 1, 2, (3 missed), 4, 5; GAD-7 15 at 1 and 9 at 4;
    SRS 38, 34, 36 at 1, 2, 5; item 9 answered 1, 0, 0 at sessions 1, 2, 4.

    As of t = 5, by hand: intake 20, latest 14; improvement 20 - 14 = 6 points = 6/6 = 1.0 RC;
    fraction 6/20 = 0.3; severities 20/27 and 14/27. Early change: latest score at or before
    session 3 is session 2 (17): 3/6 = 0.5 RC. Best improvement: 20 - 12 = 8 -> 8/6 RC.
    Successive severity differences (-3, -5, +2)/27: mean -2/27, squared deviations 1, 9, 16
    -> variance 26/2/27^2 -> SD sqrt(13)/27. Slope: OLS of (20, 17, 12, 14)/27 on
    log(1, 2, 4, 5). Attended 1, 2, 4, 5: 4 attended, 1 missed, largest jump 2.
    SRS normalised 0.95, 0.85, 0.90 at sessions 1, 2, 5. The rating of session 5 is given at
    its end, after the assessment, so by default only sessions 1 and 2 count: latest 0.85,
    min 0.85, drop 0.95 - 0.85 = 0.10; 34 is below the cut-off 36 -> 1; 2 alliance scores.
    Item 9 not assessed at session 5 -> NaN, but 1 at intake -> ever = 1. Latest GAD-7 at or
    before 5 is 9 -> 9/21, at or above its cut-off 8 -> in the clinical range.
    Dates: 28 days since intake.
    """
    ff = point_in_time(frame(HAND, HAND_ITEMS))
    assert ff.keys["session"].tolist() == [1, 2, 4, 5]
    row = ff.X.iloc[-1]
    x = np.log([1.0, 2.0, 4.0, 5.0])
    y = np.array([20, 17, 12, 14]) / 27
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    expected = {
        "session": 5, "n_scores": 4, "intake_score": 20, "latest_score": 14,
        "intake_severity": 20 / 27, "latest_severity": 14 / 27, "change_raw": 6,
        "change_rc": 1.0, "change_frac": 0.3, "slope_log": slope,
        "variability": math.sqrt(13) / 27, "early_change_rc": 0.5,
        "max_improvement_rc": 8 / 6, "sessions_attended": 4, "sessions_missed": 1,
        "max_gap": 2, "alliance_latest": 0.85, "alliance_min": 0.85, "alliance_drop": 0.10,
        "alliance_below_cutoff": 1, "alliance_n": 2, "risk_item_latest": np.nan,
        "risk_item_ever": 1, "other_severity_latest": 9 / 21, "other_clinical_latest": 1,
        "days_since_intake": 28,
        **{name: np.nan for name in CHECKLIST_FEATURES},  # no checklist given
    }
    assert set(expected) == set(FEATURE_NAMES)
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=1e-12, nan_ok=True), name

    t2 = ff.X.iloc[1]  # as of session 2: early change uses session 2; only SRS 38 of s1
    assert t2["early_change_rc"] == pytest.approx(0.5)
    assert t2["alliance_latest"] == pytest.approx(0.95)
    assert math.isnan(t2["alliance_drop"])  # one rating before session 2
    assert t2["alliance_below_cutoff"] == 0
    assert t2["other_clinical_latest"] == 1  # GAD-7 15 carried from session 1
    assert math.isnan(t2["variability"])  # fewer than 3 scores
    assert t2["slope_log"] == pytest.approx(-3 / 27 / math.log(2))
    assert t2["other_severity_latest"] == pytest.approx(15 / 21)  # GAD-7 carried from 1


def test_alliance_of_the_assessed_session_when_asked():
    """``alliance_lag=False`` (an assessment made after the session's rating): as of t = 5 the
    SRS of session 5 counts: latest 0.90, min 0.85, drop 0.85 - 0.90 = -0.05, 36 is not
    below the cut-off 36, 3 scores. At intake the default has no alliance at all."""
    row = point_in_time(frame(HAND, HAND_ITEMS), alliance_lag=False).X.iloc[-1]
    for name, value in {"alliance_latest": 0.9, "alliance_min": 0.85, "alliance_drop": -0.05,
                        "alliance_below_cutoff": 0, "alliance_n": 3}.items():
        assert row[name] == pytest.approx(value, abs=1e-12), name
    intake = point_in_time(frame(HAND, HAND_ITEMS)).X.iloc[0]
    assert math.isnan(intake["alliance_latest"]) and intake["alliance_n"] == 0


def test_serving_row_is_the_latest_row():
    df = cohort(60, seed=5)
    full = by_key(point_in_time(df, at=range(1, 100)))
    last = full.groupby("client_id").tail(1).reset_index(drop=True)
    serve = by_key(point_in_time(df, at=None))
    pd.testing.assert_frame_equal(serve, last, check_exact=True)


# --------------------------------------------------------------------------------------------
# Leakage: features at t do not depend on anything after t
# --------------------------------------------------------------------------------------------
@st.composite
def histories(draw):
    n = draw(st.integers(1, 4))
    rows, items = [], {}
    for c in range(n):
        sessions = sorted(draw(st.sets(st.integers(1, 10), min_size=1, max_size=10)))
        for s in sessions:
            date = pd.Timestamp("2024-01-01") + pd.Timedelta(days=7 * s + c)
            if draw(st.booleans()) or s == sessions[0]:
                items[len(rows)] = {"item_9": draw(st.sampled_from([np.nan, 0.0, 1.0, 3.0]))}
                rows.append((f"id{c}", s, "PHQ-9", draw(st.integers(0, 27)), date))
            for code, hi in (("GAD-7", 21), ("SRS", 40), ("WAI-SR", 5)):
                if draw(st.integers(0, 2)) == 0:
                    rows.append((f"id{c}", s, code, draw(st.integers(0 if hi > 5 else 1, hi)),
                                 date))
    return frame(rows, items)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(1, 6))
def test_no_leakage_from_later_sessions(df, t):
    """Rows as of t are identical with and without every session after t in the input.
    (at covers all sessions, so the early drop of rows after max(at) does not hide a leak.)"""
    full = point_in_time(df, at=range(1, 11))
    full = type(full)(X=full.X[full.keys["session"].to_numpy() == t],
                      keys=full.keys[full.keys["session"].to_numpy() == t])
    cut = point_in_time(df[df["session"] <= t].reset_index(drop=True), at=(t,))
    pd.testing.assert_frame_equal(by_key(full), by_key(cut), check_exact=True)
    # and the serving call on the truncated history gives the same rows
    serve = by_key(point_in_time(df[df["session"] <= t].reset_index(drop=True), at=None))
    serve = serve[serve["session"] == t].reset_index(drop=True)
    pd.testing.assert_frame_equal(by_key(full), serve, check_exact=True)


def test_no_leakage_end_status_or_extra_columns_ignored():
    df = cohort(30, seed=8)
    noisy = df.assign(end_status="dropout", clinic_id="X", therapist_id="T")
    pd.testing.assert_frame_equal(point_in_time(df).X, point_in_time(noisy).X)


# --------------------------------------------------------------------------------------------
# Invariance
# --------------------------------------------------------------------------------------------
def test_invariant_to_id_renaming_and_row_order():
    df = cohort(200, seed=1)
    base = by_key(point_in_time(df))
    ids = df["client_id"].unique()
    rng = np.random.default_rng(0)
    new_names = dict(zip(ids, [f"z{v}" for v in rng.permutation(len(ids))], strict=True))
    renamed = df.assign(client_id=df["client_id"].map(new_names).astype("string"))
    shuffled = renamed.sample(frac=1.0, random_state=1).reset_index(drop=True)
    got = by_key(point_in_time(shuffled))
    got["client_id"] = got["client_id"].map({v: k for k, v in new_names.items()})
    got = got.sort_values(["client_id", "t"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns="client_id"),
                                  base.drop(columns="client_id"), check_exact=True)
    assert got["client_id"].tolist() == base["client_id"].tolist()


def test_one_client_alone_equals_in_batch_of_1000():
    df = cohort(1000, seed=2)
    batch = by_key(point_in_time(df))
    batch_serve = by_key(point_in_time(df, at=None))
    for cid in ("c00000", "c00517", "c00999"):
        alone = point_in_time(df[df["client_id"] == cid].reset_index(drop=True))
        mine = batch[batch["client_id"] == cid].reset_index(drop=True)
        pd.testing.assert_frame_equal(by_key(alone), mine, check_exact=True)
        alone = point_in_time(df[df["client_id"] == cid].reset_index(drop=True), at=None)
        mine = batch_serve[batch_serve["client_id"] == cid].reset_index(drop=True)
        pd.testing.assert_frame_equal(by_key(alone), mine, check_exact=True)


def test_mapping_input_equals_frame_input():
    df = frame(HAND, HAND_ITEMS)
    cols = {c: df[c].tolist() for c in df.columns}
    cols["date"] = [str(d.date()) for d in df["date"]]
    a, b = point_in_time(df, at=None), point_in_time(cols, at=None)
    pd.testing.assert_frame_equal(a.X, b.X, check_exact=True)
    assert b.keys["client_id"].tolist() == ["a"] and b.keys["session"].tolist() == [5]


# --------------------------------------------------------------------------------------------
# Direction
# --------------------------------------------------------------------------------------------
def test_direction_ors_mirrors_phq9():
    """The same raw movement is an improvement on PHQ-9 (falling) and a worsening on ORS."""
    scores = [20, 18, 15, 16, 12]
    phq = frame([("p", s, "PHQ-9", v) for s, v in enumerate(scores, 1)])
    ors = frame([("o", s, "ORS", v) for s, v in enumerate(scores, 1)])
    a = point_in_time(phq, instrument="PHQ-9").X
    b = point_in_time(ors, instrument="ORS").X
    np.testing.assert_array_equal(b["change_raw"], -a["change_raw"])
    np.testing.assert_allclose(b["change_rc"] * 5, -a["change_rc"] * 6)
    np.testing.assert_allclose(b["early_change_rc"] * 5, -a["early_change_rc"] * 6)
    assert (a["change_raw"].iloc[1:] > 0).all() and (b["change_raw"].iloc[1:] < 0).all()
    assert (np.sign(b["slope_log"].iloc[1:]) == -np.sign(a["slope_log"].iloc[1:])).all()
    assert b["latest_severity"].iloc[-1] == pytest.approx(1 - 12 / 40)
    # ORS improving 12 -> 30: positive change, fraction of the room to the best score (40)
    up = point_in_time(frame([("o", 1, "ORS", 12), ("o", 2, "ORS", 30)]), instrument="ORS")
    assert up.X["change_raw"].iloc[-1] == 18
    assert up.X["change_frac"].iloc[-1] == pytest.approx(18 / 28)


def test_expected_deviation_is_direction_aware():
    assert expected_deviation(16, 10, "PHQ-9") == pytest.approx(1.0)  # 6 points worse
    assert expected_deviation(20, 25, "ORS") == pytest.approx(1.0)  # 5 points worse
    np.testing.assert_allclose(expected_deviation([10, 4], [10, 10], "PHQ-9"), [0.0, -1.0])
    with pytest.raises(ValueError, match="SRS"):
        expected_deviation(30, 36, "SRS")


# --------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------
def test_single_score_client():
    ff = point_in_time(frame([("s", 1, "PHQ-9", 14)]))
    row = ff.X.iloc[0]
    assert len(ff) == 1 and row["n_scores"] == 1
    assert row["change_raw"] == 0 and row["change_rc"] == 0 and row["max_improvement_rc"] == 0
    for name in ("slope_log", "variability", "max_gap", "alliance_latest", "alliance_drop",
                 "alliance_below_cutoff", "risk_item_latest", "risk_item_ever",
                 "other_severity_latest", "days_since_intake"):
        assert math.isnan(row[name]), name
    assert row["alliance_n"] == 0 and row["sessions_attended"] == 1


def test_missed_sessions_and_gaps():
    rows = [("m", 1, "PHQ-9", 15), ("m", 2, "GAD-7", 10), ("m", 5, "PHQ-9", 12),
            ("m", 6, "PHQ-9", 10)]
    ff = point_in_time(frame(rows))
    assert ff.keys["session"].tolist() == [1, 5, 6]  # no PHQ-9 at 2: not a row as of 2
    x = ff.X.set_index(ff.keys["session"])
    assert x.loc[5, "sessions_attended"] == 3 and x.loc[5, "sessions_missed"] == 2
    assert x.loc[5, "max_gap"] == 3 and x.loc[6, "max_gap"] == 3
    assert x.loc[5, "early_change_rc"] == 0  # only intake at or before session 3
    assert x.loc[5, "other_severity_latest"] == pytest.approx(10 / 21)
    assert x.loc[5, "slope_log"] == pytest.approx(-3 / 27 / math.log(5))
    # zero room to improve: intake at the best possible score
    best = point_in_time(frame([("b", 1, "PHQ-9", 0), ("b", 2, "PHQ-9", 3)])).X
    assert math.isnan(best["change_frac"].iloc[1]) and best["change_raw"].iloc[1] == -3


def test_risk_item_states():
    rows = [("r", s, "PHQ-9", 12) for s in (1, 2, 3, 4)] + [("zz", 1, "PHQ-9", 12)]
    items = {0: {"item_9": 0.0}, 1: {"item_9": 2.0}, 2: {"item_9": 0.0}}  # 4: not assessed
    x = point_in_time(frame(rows, items)).X
    r = x.iloc[:4]
    assert r["risk_item_latest"].tolist()[:3] == [0.0, 2.0, 0.0]
    assert math.isnan(r["risk_item_latest"].iloc[3])
    assert r["risk_item_ever"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert math.isnan(x.iloc[4]["risk_item_ever"])  # never assessed
    # CORE-10 item 6 is a risk item too; answers from any instrument count
    core = frame([("k", 1, "PHQ-9", 12), ("k", 1, "CORE-10", 20)], {1: {"item_6": 3.0}})
    assert point_in_time(core).X["risk_item_latest"].iloc[0] == 3.0


def test_alliance_choice_and_wai():
    rows = [("w", 1, "PHQ-9", 12), ("w", 1, "WAI-SR", 4.0), ("w", 2, "PHQ-9", 10),
            ("w", 2, "WAI-SR", 3.0)]
    x = point_in_time(frame(rows), alliance_lag=False).X.iloc[-1]
    assert x["alliance_latest"] == pytest.approx(0.5) and x["alliance_drop"] == pytest.approx(0.25)
    before = point_in_time(frame(rows)).X.iloc[-1]  # default: only the rating of session 1
    assert before["alliance_latest"] == pytest.approx(0.75) and math.isnan(before["alliance_drop"])
    assert math.isnan(x["alliance_below_cutoff"])  # WAI-SR has no published cut-off
    none = point_in_time(frame(rows), alliance=None).X.iloc[-1]
    assert math.isnan(none["alliance_latest"]) and none["alliance_n"] == 0
    with pytest.raises(ValueError, match="alliance"):
        point_in_time(frame(rows), alliance="GAD-7")


def test_duplicate_scores_are_refused():
    with pytest.raises(ValueError, match="duplicate_session"):
        point_in_time(frame([("d", 1, "PHQ-9", 12), ("d", 1, "PHQ-9", 13)]))


def test_empty_input():
    ff = point_in_time(frame([("e", 8, "PHQ-9", 12)]))
    assert len(ff) == 0 and tuple(ff.X.columns) == FEATURE_NAMES


# --------------------------------------------------------------------------------------------
# Feature version and names travel with the model
# --------------------------------------------------------------------------------------------
def test_check_features_accepts_identical():
    sig = feature_signature()
    check_features(sig["feature_version"], sig["feature_names"], FEATURE_VERSION, FEATURE_NAMES)


def test_check_features_readable_diff():
    got = [n for n in FEATURE_NAMES if n != "slope_log"] + ["shoe_size"]
    got[0], got[1] = got[1], got[0]
    with pytest.raises(FeatureMismatchError) as err:
        check_features("1.0.0", FEATURE_NAMES, "0.9.0", got)
    msg = str(err.value)
    assert "expected '1.0.0', received '0.9.0'" in msg
    assert "missing (1): slope_log" in msg
    assert "unexpected (1): shoe_size" in msg
    assert "reordered" in msg and "session" in msg and "n_scores" in msg
    assert err.value.missing == ("slope_log",) and err.value.unexpected == ("shoe_size",)


def test_checklist_latest_rating_as_of_each_session():
    """CSC given at session 2 (1, 3, 0, 2, 4) and session 4 (0, 1, 0, 4, 2): as of session 1
    every rating is NaN, as of 2 the first checklist, as of 4 and 5 the second; nothing given
    later enters an earlier row, and one client alone equals the same client in a batch."""
    rows = HAND + [("a", 2, "CSC", 10, "2024-01-08"), ("a", 4, "CSC", 7, "2024-01-22")]
    items = dict(HAND_ITEMS)
    items[len(HAND)] = {f"item_{k + 1}": v for k, v in enumerate((1, 3, 0, 2, 4))}
    items[len(HAND) + 1] = {f"item_{k + 1}": v for k, v in enumerate((0, 1, 0, 4, 2))}
    ff = point_in_time(frame(rows, items))
    got = ff.X[list(CHECKLIST_FEATURES)].to_numpy()
    assert ff.keys["session"].tolist() == [1, 2, 4, 5]
    assert np.isnan(got[0]).all()
    assert got[1].tolist() == [1, 3, 0, 2, 4]
    assert got[2].tolist() == [0, 1, 0, 4, 2] and got[3].tolist() == [0, 1, 0, 4, 2]
    # the checklist does not change any other feature
    base = point_in_time(frame(HAND, HAND_ITEMS)).X.drop(columns=list(CHECKLIST_FEATURES))
    pd.testing.assert_frame_equal(ff.X.drop(columns=list(CHECKLIST_FEATURES)), base)
    # batch invariance: the same client among others
    other = [("b", 1, "PHQ-9", 10), ("b", 2, "CSC", 20), ("b", 2, "PHQ-9", 11)]
    batch = point_in_time(frame(rows + other, items))
    a = batch.X[batch.keys["client_id"] == "a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, ff.X)
