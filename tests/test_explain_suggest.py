"""Clinical-language explanations and rule-based suggestions."""

import re

import numpy as np
import pandas as pd
import pytest

from features.pointintime import FEATURE_NAMES
from models.expected import DEVIATION_COLUMN
from models.explain import TEMPLATES, group_contributions, missing_templates
from models.suggestions import rule_suggestions

BANNED = re.compile(r"\b(fail(ed|ure|ing)?|you must|must|should have|non-?complian\w*)\b", re.I)


def test_every_feature_has_a_sentence_template():
    assert missing_templates([*FEATURE_NAMES, DEVIATION_COLUMN]) == []


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("value", [np.nan, 0.0, 1.0, -1.0, 3.0])
def test_templates_render_for_any_value(name, value):
    row = {n: value for n in TEMPLATES}
    text = TEMPLATES[name].template(value, __import__("features.instruments").instruments.get(
        "PHQ-9"), row)
    assert isinstance(text, str) and len(text) > 10
    assert not BANNED.search(text), text


def test_grouped_drivers_add_up_to_the_logit():
    names = ["latest_score", "change_rc", "alliance_latest", "sessions_missed"]
    values = np.array([18.0, -0.2, 0.6, 2.0])
    phi = np.array([0.8, 0.5, -0.3, 0.2, -1.0])
    intercept, drivers = group_contributions(names, values, phi, "PHQ-9")
    assert intercept == -1.0
    assert intercept + sum(d.log_odds for d in drivers) == pytest.approx(phi.sum())
    assert [d.concept for d in drivers][:2] == ["severity", "symptom change"]
    assert drivers[0].direction == "raises" and "18" in drivers[0].sentence


def _row(**kw):
    base = {n: np.nan for n in FEATURE_NAMES}
    base.update(session=6, change_rc=0.1, max_improvement_rc=0.2, latest_severity=0.8,
                sessions_missed=0, max_gap=1, alliance_below_cutoff=0, alliance_drop=0)
    base.update(kw)
    return base


def test_crisis_prompts_come_first_and_all_are_prompts():
    out = rule_suggestions(_row(alliance_below_cutoff=1), "PHQ-9", "red", 0.8, 0.5, "flag", True)
    assert out[0].adaptation == "safety" and out[1].adaptation == "safety"
    codes = [s.adaptation for s in out]
    assert {"alliance_repair", "motivation", "medication_review", "change_approach"} <= set(codes)
    for s in out:
        assert s.prompt.startswith(("Consider", "If there is")), s.prompt
        assert not BANNED.search(s.prompt + s.rationale), s.prompt + s.rationale


def test_on_track_client_gets_no_change_prompts():
    out = rule_suggestions(_row(change_rc=1.5, max_improvement_rc=1.5, latest_severity=0.3),
                           "PHQ-9", "green", 0.1, 0.1, "not_endorsed", False)
    assert out == []


def test_lost_gain_suggests_life_events():
    out = rule_suggestions(_row(change_rc=0.0, max_improvement_rc=1.5), "PHQ-9", "yellow", 0.6,
                           0.2, "not_endorsed", True)
    assert "life_events" in [s.adaptation for s in out]


def test_checklist_ratings_prompt_their_domains_highest_first():
    """Clinical-support checklist (registry item cut-off 2): every domain rated at or above it
    is suggested, the highest rating first; each adaptation appears once."""
    row = _row(checklist_social_support=4.0, checklist_motivation=2.0, checklist_life_events=1.0,
               checklist_alliance_repair=0.0, checklist_medication_review=np.nan,
               alliance_below_cutoff=1)
    out = rule_suggestions(row, "PHQ-9", "red", None, None, "not_endorsed", True)
    codes = [s.adaptation for s in out]
    assert codes[:2] == ["social_support", "motivation"]
    assert "life_events" not in codes[:3] and len(codes) == len(set(codes))
    assert "4 of 4" in out[0].rationale and "checklist" in out[0].rationale
    assert out[0].prompt.startswith("Consider")
    assert not BANNED.search(out[0].prompt + out[0].rationale)
    # no checklist: the same rules as before it
    plain = rule_suggestions(_row(alliance_below_cutoff=1), "PHQ-9", "red", None, None,
                             "not_endorsed", True)
    assert plain[0].adaptation == "alliance_repair"


def test_built_assessments_validate_against_their_schema(tmp_path):
    """models/assess.py builds response objects without re-validating them: every field must
    be present and of the declared type, for every kind of client."""
    from features.contract import validate_frames
    from models.assess import Assessment
    from training.pipeline import Settings, fit_instrument, instrument_rows, make_bundle
    from training.simulate import simulate_cohort

    sim = simulate_cohort(900, seed=2, oracle_clients=0)
    cohort, report = validate_frames(sim.sessions, sim.clients)
    rows = instrument_rows(cohort, ["PHQ-9"])["PHQ-9"]
    bundle = make_bundle({"PHQ-9": fit_instrument(cohort, rows, Settings(gbm={
        "n_estimators": 30, "min_training_cases": 50}), None)}, {}, {})
    s = cohort.sessions[cohort.sessions["client_id"].isin(
        cohort.sessions["client_id"].unique()[:60])]
    gad_only = s[s["instrument"] == "GAD-7"].assign(client_id=lambda d: "G" + d["client_id"])
    out = bundle.assess(pd.concat([s, gad_only], ignore_index=True))
    assert {a.instrument for a in out} == {"PHQ-9", "GAD-7"}
    for a in out:
        again = Assessment.model_validate(a.model_dump())
        assert again.model_dump() == a.model_dump()
        assert set(type(a).model_fields) == set(a.__dict__)


@pytest.mark.parametrize("score, fires", [(19, False), (20, True), (27, True)])
def test_medication_review_follows_the_published_severe_band(score, fires):
    """PHQ-9 severe is 20-27 (Kroenke et al. 2001): 19 is moderately severe, never "severe"."""
    out = rule_suggestions(_row(latest_severity=score / 27, latest_score=score), "PHQ-9",
                           "red", 0.8, 0.1, "not_endorsed", True)
    med = [s for s in out if s.adaptation == "medication_review"]
    assert bool(med) is fires
    if fires:
        assert "severe range (20-27)" in med[0].rationale


def test_without_a_published_severe_band_the_wording_says_so():
    out = rule_suggestions(_row(latest_severity=0.8), "ORS", "red", 0.8, 0.1, "not_assessed",
                           True)
    (med,) = [s for s in out if s.adaptation == "medication_review"]
    assert "severe" not in med.rationale.replace("no published severe band", "")
    assert "worst 30% of its range" in med.rationale
