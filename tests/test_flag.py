"""The not-on-track flag policy: hand-made histories (entry, continuing, hysteresis, clearing),
purity (a flag never changes when later sessions arrive), the budget, eligibility, safety
precedence over reassurance and ending wording (also over a 10,000-client simulated run), and
the wording reviewers asked for."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from models.flag import (
    STATES,
    History,
    Outcomes,
    cumulative_curve,
    fit_policy,
    replay,
)


def hist(p, red=None, det=None, eligible=True, sessions=None, client=None):
    n = len(p)
    return History(
        client=np.zeros(n, int) if client is None else np.asarray(client),
        session=np.arange(1, n + 1) if sessions is None else np.asarray(sessions),
        p=np.asarray(p, float), red=np.zeros(n, bool) if red is None else np.asarray(red),
        deteriorated=np.zeros(n, bool) if det is None else np.asarray(det),
        eligible=np.full(n, eligible))


def states(h, entry=0.6, exit=0.5, exit_sessions=2):
    return list(replay(h, entry, exit, exit_sessions).state_names())


# ------------------------------------------------------------------------------------------
# Hand-made histories
# ------------------------------------------------------------------------------------------
def test_enter_continue_clear_with_hysteresis():
    """Risk 0.9 at intake (no flag at intake), 0.7 at session 2 (enters), 0.55 between the
    thresholds (continues: hysteresis), 0.4 and 0.45 below exit (the second clears), then 0.3
    (stays cleared) and 0.65 (opens again)."""
    h = hist([0.9, 0.7, 0.55, 0.4, 0.45, 0.3, 0.65])
    assert states(h) == ["none", "new", "continuing", "continuing", "cleared", "cleared",
                         "new"]
    r = replay(h, 0.6, 0.5, 2)
    assert r.opened_session.tolist() == [-1, 2, 2, 2, 2, 2, 7]
    assert r.cleared_session.tolist() == [-1, -1, -1, -1, 5, 5, -1]
    assert r.flagged.tolist() == [False, True, True, True, False, False, True]


def test_a_non_calm_session_resets_the_count():
    h = hist([0.1, 0.7, 0.4, 0.55, 0.4, 0.4])
    assert states(h) == ["none", "new", "continuing", "continuing", "continuing", "cleared"]


def test_one_red_score_does_not_flag_two_in_a_row_do():
    red = [False, True, False, True, True]
    h = hist([0.1] * 5, red=red)
    assert states(h) == ["none", "none", "none", "none", "new"]
    assert replay(h, 0.6, 0.5).opened_by[-1] == 2  # red_twice


def test_red_holds_the_flag_open():
    h = hist([0.1, 0.7, 0.1, 0.1, 0.1], red=[False, False, True, False, False])
    assert states(h) == ["none", "new", "continuing", "continuing", "cleared"]


def test_below_cut_off_only_deterioration_opens_a_flag():
    h = hist([0.9, 0.9, 0.9, np.nan], red=[False, True, True, False],
             det=[False, False, False, True], eligible=False)
    assert states(h) == ["none", "none", "none", "new"]
    assert replay(h, 0.6, 0.5).opened_by[-1] == 4  # reliable_deterioration


def test_clients_are_independent_and_missed_sessions_count_as_nothing():
    h = hist([0.1, 0.7, 0.8, 0.2, 0.9], client=[0, 0, 1, 1, 1], sessions=[1, 4, 1, 2, 7])
    assert states(h) == ["none", "new", "none", "none", "new"]


def test_flag_at_t_is_a_pure_function_of_history_up_to_t():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        h = hist(rng.random(n), red=rng.random(n) < 0.3, det=rng.random(n) < 0.1,
                 eligible=bool(rng.random() < 0.8))
        full = replay(h, 0.6, 0.45, 2)
        for t in range(1, n + 1):
            part = replay(h.subset(np.arange(n) < t), 0.6, 0.45, 2)
            assert part.state[-1] == full.state[t - 1]
            assert part.opened_by[-1] == full.opened_by[t - 1]


# ------------------------------------------------------------------------------------------
# The budget
# ------------------------------------------------------------------------------------------
def _synthetic(n=3000, seed=0):
    """Clients with 6 sessions; the risk rises with a latent badness that sets the outcome."""
    rng = np.random.default_rng(seed)
    bad = rng.normal(size=n)
    failed = (bad + rng.normal(scale=0.8, size=n) > 0).astype(float)
    det = ((bad > 1.2) & (failed == 1)).astype(float)
    rows = []
    for c in range(n):
        for s in range(1, 7):
            p = 1 / (1 + np.exp(-(bad[c] + rng.normal(scale=0.7))))
            rows.append((c, s, p, failed[c], det[c]))
    a = np.array(rows)
    h = History(client=a[:, 0].astype(int), session=a[:, 1].astype(int), p=a[:, 2],
                red=np.zeros(len(a), bool), deteriorated=np.zeros(len(a), bool),
                eligible=np.ones(len(a), bool))
    return h, Outcomes(a[:, 3], a[:, 4])


def test_entry_threshold_is_the_lowest_within_the_budget():
    h, o = _synthetic()
    pol = fit_policy(h, o, budget=0.3)
    # within the budget with 95% confidence: a little under it on the fitting clients
    assert 0.27 < pol.achieved["improvers"] < 0.3
    lower = cumulative_curve(h, o, thresholds=[pol.entry * 0.97])
    assert lower["improvers"][0] > pol.achieved["improvers"]  # a lower threshold flags more
    assert pol.exit == pytest.approx(pol.entry - 0.10)
    # replaying the fitted policy gives the same cumulative figure the curve promised
    rep = pol.replay(h)
    early = h.session <= 3
    flagged = pd.Series(rep.flagged & early).groupby(h.client).any().to_numpy()
    first = np.r_[True, h.client[1:] != h.client[:-1]]
    imp = o.failed[first] == 0
    assert flagged[imp].mean() == pytest.approx(pol.achieved["improvers"])


def test_a_clinic_budget_moves_the_threshold_monotonically():
    h, o = _synthetic()
    pol = fit_policy(h, o, budget=0.3)
    strict, loose = pol.for_budget(0.1), pol.for_budget(0.5)
    assert strict.entry > pol.entry > loose.entry
    assert strict.achieved["improvers"] <= 0.1 and loose.achieved["improvers"] <= 0.5
    assert strict.achieved["deteriorators"] <= pol.achieved["deteriorators"]
    with pytest.raises(ValueError, match="budget"):
        fit_policy(h, o, budget=1.5)


# ------------------------------------------------------------------------------------------
# Through the bundle: purity of the served flag, eligibility, wording, safety
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.service_fixtures import shared_bundle

    return shared_bundle()


def frame(rows, items=None):
    df = pd.DataFrame(rows, columns=["client_id", "session", "instrument", "score"])
    df["client_id"] = df["client_id"].astype("string")
    df["instrument"] = df["instrument"].astype("string")
    df["session"] = df["session"].astype("Int64")
    df["score"] = df["score"].astype(float)
    for name, values in (items or {}).items():
        df[name] = np.asarray(values, dtype=float)
    return df


def test_served_flag_does_not_change_when_later_sessions_arrive(bundle):
    """For 40 simulated clients and each of their sessions: the flag assessed from the
    history up to t equals the flag at t seen later, with more sessions appended."""
    from models.assess import policy_history
    from training.simulate import simulate_cohort

    sim = simulate_cohort(300, seed=4, oracle_clients=0).sessions
    ids = pd.unique(sim["client_id"])[:40]
    s = sim[sim["client_id"].isin(ids)].reset_index(drop=True)
    m = bundle.models["PHQ-9"]
    h, keys = policy_history(m, s, "PHQ-9")
    full = m.flag_policy.replay(h)
    seen = 0
    for i, (cid, t) in enumerate(zip(keys["client_id"], keys["session"], strict=True)):
        part = s[(s["client_id"] == cid) & (s["session"] <= t)]
        a = bundle.assess(part)[0]
        assert a.session == t
        assert a.flag.state == STATES[full.state[i]], (cid, t)
        seen += a.flag.flagged
    assert seen > 0


def test_no_model_flag_at_intake_and_intake_risk_is_context(bundle):
    a = bundle.assess(frame([("i", 1, "PHQ-9", 27)]))[0]
    assert a.risk is not None and a.flag.state == "none" and "at intake" in a.flag.reason


def test_below_cut_off_intake_gets_no_risk_and_no_model_flag(bundle):
    calm = bundle.assess(frame([("b", 1, "PHQ-9", 6), ("b", 2, "PHQ-9", 9),
                                ("b", 3, "PHQ-9", 9)]))[0]
    assert calm.risk is None and calm.explanation is None
    assert not calm.flag.eligible and calm.flag.state == "none"
    assert "monitored for reliable deterioration only" in calm.flag.reason
    assert calm.flag.reason in calm.notes
    worse = bundle.assess(frame([("w", 1, "PHQ-9", 6), ("w", 2, "PHQ-9", 9),
                                 ("w", 3, "PHQ-9", 13)]))[0]
    assert worse.flag.state == "new" and worse.flag.opened_by == ["reliable_deterioration"]
    assert any("monitored for reliable deterioration only" in n for n in worse.notes)


def test_the_clinic_budget_reaches_the_assessment(bundle):
    s = frame([("c", 1, "PHQ-9", 20), ("c", 2, "PHQ-9", 20), ("c", 3, "PHQ-9", 21)])
    default = bundle.assess(s)[0].flag
    strict = bundle.assess(s, budget=0.05)[0].flag
    assert strict.entry_threshold > default.entry_threshold and strict.budget == 0.05


def test_risk_items_and_checklist_are_not_model_inputs(bundle):
    for m in (bundle.models["PHQ-9"].failure, bundle.models["PHQ-9"].dropout):
        names = set(m.feature_names_)
        assert not {n for n in names if n.startswith(("risk_item", "checklist_"))}, names


def test_alliance_of_the_assessed_session_is_not_used_by_default(bundle):
    """Before the session (the default) the model ignores the latest session's SRS: the risk
    is the same with or without it. After the session it counts. The alliance block shows the
    latest rating either way."""
    base = [("a", 1, "PHQ-9", 18), ("a", 1, "SRS", 38.0), ("a", 2, "PHQ-9", 17),
            ("a", 2, "SRS", 37.5), ("a", 3, "PHQ-9", 16)]
    without = bundle.assess(frame(base))[0]
    with_srs = bundle.assess(frame(base + [("a", 3, "SRS", 20.0)]))[0]
    after = bundle.assess(frame(base + [("a", 3, "SRS", 20.0)]), alliance_after=True)[0]
    assert with_srs.risk.p_failure == without.risk.p_failure
    assert after.risk.p_failure != without.risk.p_failure
    assert with_srs.alliance.latest == 20.0 and with_srs.alliance.status != "ok"


def test_ors_wording_says_above_and_near_misses_are_named():
    from models.explain import change_words, range_words

    assert range_words(30, "ORS") == "outside the clinical range (at or above the cut-off of 25)"
    assert range_words(8, "PHQ-9") == "outside the clinical range (below the cut-off of 10)"
    assert range_words(20, "ORS") == "in the clinical range"
    assert change_words(13, 18, "PHQ-9") == "worse by 5, 1 point short of a reliable deterioration"
    assert change_words(20, 13, "PHQ-9") == "better by 7: a reliable improvement"
    assert change_words(12, 6, "PHQ-9").endswith("(recovered)")
    assert change_words(10, 16, "ORS") == "better by 6: a reliable improvement"
    assert change_words(20, 26, "ORS").endswith("(recovered)")  # 26 is above the cut-off 25
    assert change_words(20, 17, "ORS") == "worse by 3, 2 points short of a reliable deterioration"


def test_other_measure_in_the_clinical_range_holds_back_ending(bundle):
    """PHQ-9 9 is in the functional range, GAD-7 15 is not: no 'consider ending'."""
    s = frame([("g", 1, "PHQ-9", 16), ("g", 1, "GAD-7", 15), ("g", 2, "PHQ-9", 12),
               ("g", 2, "GAD-7", 15), ("g", 3, "PHQ-9", 9), ("g", 3, "GAD-7", 15)])
    a = bundle.assess(s)[0]
    assert a.signal.colour != "white" and "consider discussing ending" not in a.signal.reason
    assert "GAD-7 15 is still in the clinical range" in a.signal.reason
    alone = bundle.assess(s[s["instrument"] == "PHQ-9"])[0]
    assert alone.signal.colour == "white"


def test_core_om_risk_item_raises_the_safety_flag(bundle):
    """CORE-OM item 16 ('I made plans to end my life') and item 9 ('I have thought of hurting
    myself') are risk items (Evans et al. 2002): any answer above zero is a safety flag, even
    for an instrument no model covers."""
    s = frame([("o", 1, "CORE-OM", 18.5), ("o", 2, "CORE-OM", 17.0)],
              {"item_9": [0, 1], "item_16": [0, 0]})
    a = bundle.assess(s)[0]
    assert a.safety.status == "flag" and a.safety.items[0]["item"] == 9
    assert a.suggestions[0].adaptation == "safety" and a.risk is None


_ENDING = re.compile(r"consider discussing ending|spacing sessions", re.I)
_REASSURE = re.compile(r"(?<!not )\bon track\.", re.I)


def _texts(a) -> list[str]:
    out = [a.signal.reason, a.flag.reason, a.agreement or "", *a.notes]
    out += [s.prompt for s in a.suggestions] + [s.rationale for s in a.suggestions]
    return out


def test_safety_always_wins_over_reassurance_in_a_large_simulated_run(bundle):
    """10,000 simulated clients, with item 9 endorsed at the latest session of a fifth of them
    (so that many are also in the functional range): no assessment with a risk item endorsed
    is white, says 'consider ending' or reassures 'on track', and every safety flag lists the
    crisis prompts first."""
    from training.simulate import simulate_cohort

    s = simulate_cohort(10_000, seed=8, oracle_clients=0).sessions.copy()
    rng = np.random.default_rng(1)
    phq = s["instrument"] == "PHQ-9"
    last = phq & (s["session"] == s[phq].groupby("client_id")["session"].transform("max")
                  .reindex(s.index))
    pick = last & (rng.random(len(s)) < 0.2)
    s.loc[pick, "item_9"] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = bundle.assess(s)
    assert len(out) == 10_000
    flagged = [a for a in out if a.safety.status == "flag"]
    endorsed = [a for a in out if a.safety.last_endorsed is not None]
    assert len(flagged) > 1500
    functional = [a for a in flagged if a.change.latest_score < 10]
    assert len(functional) > 200, "the check must cover clients who would otherwise be white"
    for a in endorsed:
        assert a.signal.colour != "white"
        for text in _texts(a):
            assert not _ENDING.search(text), text
            assert not _REASSURE.search(text), text
    for a in flagged:
        assert a.suggestions[0].adaptation == "safety"
    # where the safety clause holds the colour, it names what was seen and when
    held = [a for a in endorsed if "risk item" in a.signal.reason]
    assert len(held) > 200
    for a in held:
        if a.safety.status == "flag":
            said = f"a risk item was answered above zero at session {a.safety.assessed_session}"
        else:
            said = f"a risk item was endorsed at session {a.safety.last_endorsed['session']}"
        assert said in a.signal.reason, a.signal.reason
    # and without a risk item the same clients may be white: the check is not vacuous
    assert any(a.signal.colour == "white" for a in out if a.safety.last_endorsed is None)
