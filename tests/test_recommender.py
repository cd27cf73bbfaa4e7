"""Learned adaptation suggestions: the minimum of similar cases, determinism,
the fallback to the rules with a stated reason, the decision dataset, the policy evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.recommender import (
    ADAPTATIONS,
    MIN_SIMILAR,
    OPTIONS,
    NeighbourAdvantage,
    PropensityModel,
    RLearnerUplift,
    UpliftGBM,
    wilson,
)
from training.recommendation.decisions import build_decision_data, decision_sessions


@pytest.fixture(scope="module")
def cohort():
    from training.simulate import simulate_cohort

    return simulate_cohort(5000, seed=21, oracle_clients=0)


@pytest.fixture(scope="module")
def data(cohort):
    return build_decision_data(cohort.sessions, cohort.clients, cohort.adaptations,
                               truth=cohort.truth)


def _fit(cls, data, **kw):
    return cls(**kw).fit(data.X, data.treatment, data.outcome, data.propensity,
                         improvement=data.improvement)


def test_decision_sessions_equal_the_simulated_therapists(cohort, data):
    obs = cohort.observed
    sim = pd.Series(obs.option_slot, index=cohort.layout.client_id)[obs.option >= 0]
    got = data.keys.set_index("client_id")["session"]
    assert len(got) == len(sim)
    assert (got.reindex(sim.index).to_numpy() == sim.to_numpy()).all()
    received = pd.Series(np.array(OPTIONS, dtype=object)[obs.option[obs.option >= 0]],
                         index=sim.index)
    assert (pd.Series(data.treatment, index=data.client_id).reindex(sim.index)
            == received).all()
    assert np.allclose(data.propensity.sum(axis=1), 1.0, atol=1e-5)


def test_features_are_as_of_the_decision_session(cohort, data):
    """Nothing after the decision session enters a row: dropping later sessions changes
    nothing."""
    dec = decision_sessions(cohort.sessions, cohort.adaptations)
    upto = cohort.sessions["client_id"].map(dec["session"])
    early = cohort.sessions[cohort.sessions["session"] <= upto.fillna(0)]
    again = build_decision_data(early, None, cohort.adaptations, truth=cohort.truth)
    pd.testing.assert_frame_equal(again.X, data.X)


@pytest.mark.parametrize("cls", [NeighbourAdvantage, UpliftGBM, RLearnerUplift])
def test_never_suggests_from_fewer_similar_cases_than_the_minimum(cls, data):
    model = _fit(cls, data, n_neighbors=60, min_similar=12)
    recs = model.recommend(data.X.iloc[:300], top=None)
    ev = model.evidence(data.X.iloc[:300])
    shown = 0
    for i, rec in enumerate(recs):
        for s in rec.suggestions:
            j = ADAPTATIONS.index(s.adaptation)
            assert s.n_similar >= 12 and s.n_without >= 12
            assert s.n_similar == ev["n_with"][i, j]
            shown += 1
        too_few = {ADAPTATIONS[j] for j in range(len(ADAPTATIONS))
                   if ev["n_with"][i, j] < 12 or ev["n_without"][i, j] < 12}
        assert not too_few & {s.adaptation for s in rec.suggestions}
    assert shown > 0
    top = model.top_adaptation(data.X.iloc[:300])
    for i, t in enumerate(top):
        if t is not None:
            assert ev["n_with"][i, ADAPTATIONS.index(t)] >= 12


def test_minimum_cannot_be_set_below_ten(data):
    with pytest.raises(ValueError, match=r"min_similar.*\[10, inf\)"):
        _fit(NeighbourAdvantage, data, min_similar=MIN_SIMILAR - 1)


@pytest.mark.parametrize("cls", [NeighbourAdvantage, UpliftGBM, RLearnerUplift])
def test_falls_back_to_the_rules_with_a_stated_reason(cls, data):
    """Too few similar clients received any adaptation: no learned suggestion, a reason."""
    model = _fit(cls, data, n_neighbors=25, min_similar=MIN_SIMILAR)
    recs = model.recommend(data.X.iloc[:200])
    fallbacks = [r for r in recs if not r.suggestions]
    assert fallbacks, "with 25 neighbours some clients must lack 10 cases for every option"
    for r in fallbacks:
        assert r.top is None
        assert r.fallback_reason.startswith("not enough similar cases")
        assert "rule-based suggestions are shown instead" in r.fallback_reason
    top = model.top_adaptation(data.X.iloc[:200])
    assert sum(t is None for t in top) == len(fallbacks)


@pytest.mark.parametrize("cls", [NeighbourAdvantage, UpliftGBM, RLearnerUplift])
def test_deterministic_for_a_seed(cls, data):
    kw = {"random_state": 3} if cls is not NeighbourAdvantage else {}
    a, b = _fit(cls, data, **kw), _fit(cls, data, **kw)
    X = data.X.iloc[:200]
    np.testing.assert_array_equal(a.gains(X), b.gains(X))
    ra, rb = a.recommend(X), b.recommend(X)
    assert [[s.adaptation for s in r.suggestions] for r in ra] == \
        [[s.adaptation for s in r.suggestions] for r in rb]
    assert [r.suggestions[0].rationale for r in ra if r.suggestions] == \
        [r.suggestions[0].rationale for r in rb if r.suggestions]


@pytest.mark.parametrize("cls", [UpliftGBM, RLearnerUplift])
def test_suggestion_carries_interval_counts_and_wording(cls, data):
    model = _fit(cls, data)
    rec = next(r for r in model.recommend(data.X.iloc[:50]) if r.suggestions)
    s = rec.suggestions[0]
    assert s.lower <= s.rate_with - s.rate_without <= s.upper
    assert s.rate_with_ci[0] <= s.rate_with <= s.rate_with_ci[1]
    assert s.prompt.startswith("Consider")
    text = s.rationale
    assert "Observational comparison" in text and f"{s.n_similar} who received" in text
    assert "failure" not in text.lower()
    assert s.drivers and all(isinstance(d, str) for d in s.drivers)
    gains = [x.gain for x in rec.suggestions]
    assert gains == sorted(gains, reverse=True)


@pytest.mark.xfail(strict=True, reason="simulator 2.0 (regression to the mean, therapist and "
                   "alliance effects) is harder: the R-learner finds 3 of the 5 checklist "
                   "domains on this cohort (fresh clone, 2026-12-02), not the 4 it found on 1.x")
def test_r_learner_finds_the_checklist_domains(data):
    """The simulator's adaptations help most where the client has the domain; the checklist
    rates the domains. The R-learner's estimated effect of each checklist domain's adaptation
    must be larger where the client rated that domain a problem (>= 2) than where not (0),
    for at least four of the five domains, and never smaller: the cross-validated L1 penalty
    may zero the weakest domain's checklist term on 5,000 clients (social support: 0.0003
    apart even before the alliance features were lagged)."""
    model = _fit(RLearnerUplift, data)
    tau = model.effects(data.X)
    larger = 0
    for j, domain in enumerate(ADAPTATIONS[:5]):
        rating = data.X[f"checklist_{domain}"].to_numpy()
        hi, lo = tau[rating >= 2, j].mean(), tau[rating == 0, j].mean()
        assert hi >= lo - 1e-12, domain
        larger += hi > lo
    assert larger >= 4
    # drivers: in words, acronyms kept, and the checklist named where it moved the estimate
    light = _fit(RLearnerUplift, data, alpha=0.002)  # 5,000 clients: CV penalises hard
    rows = data.X[data.X["checklist_social_support"] >= 3].iloc[:100]
    drivers = [r[ADAPTATIONS.index("social_support")] for r in light._drivers(rows)]
    assert all(isinstance(d, str) and d.endswith("the estimated gain)") for r in drivers
               for d in r)
    assert not any(d.startswith("pHQ") for r in drivers for d in r)
    named = [any("checklist the client rated social support" in d for d in r) for r in drivers]
    assert np.mean(named) > 0.2


def test_wilson_interval_matches_a_worked_example():
    """Wilson (1927) score interval, 95 %: 62 successes of 100 -> 0.5220 to 0.7090
    (Newcombe 1998, method 3, computed the same way)."""
    lo, hi = wilson(np.array([0.62]), np.array([100.0]))
    assert lo[0] == pytest.approx(0.5220, abs=1e-3) and hi[0] == pytest.approx(0.7090, abs=1e-3)


def test_propensity_model_for_real_data(cohort, data):
    pm = PropensityModel().fit(data.X, data.treatment)
    p = pm.predict_proba(data.X.iloc[:20])
    assert p.shape == (20, len(OPTIONS)) and np.allclose(p.sum(axis=1), 1) and (p > 0).all()
    real = build_decision_data(cohort.sessions, cohort.clients, cohort.adaptations)
    assert real.propensity_source == "fitted" and np.isfinite(real.propensity).all()


def test_information_limit_model_learns_the_true_effects(cohort, data):
    """The information-limit policy is supervised on the simulator's true effects: their
    argmax is truth.csv's best adaptation, and a model of them picks it far more often than
    chance (an out-of-fold half of the cohort)."""
    from training.recommendation.policy import info_limit_top, true_effects

    eff = true_effects(cohort, data)
    best = cohort.truth.set_index("client_id")["best_adaptation"].reindex(
        pd.Index(data.client_id)).astype(object).to_numpy()
    known = best != "any"
    assert known.mean() > 0.5
    assert (np.array(ADAPTATIONS, dtype=object)[eff.argmax(axis=1)][known]
            == best[known]).all()
    half = np.arange(len(data)) % 2 == 0
    top = info_limit_top(data.X[half], eff[half], data.X[~half], seed=0)
    hit = (np.array(OPTIONS, dtype=object)[top] == best[~half])[known[~half]].mean()
    assert hit > 2 / len(ADAPTATIONS)


@pytest.fixture(scope="module")
def small_report():
    from training.recommendation.policy import evaluate_policies

    return evaluate_policies(4000, seed=5, n_folds=2)


def test_policy_evaluation_small_cohort(small_report):
    from training.recommendation.policy import evaluate_policies

    rep = small_report
    v = {r.policy: r.value for r in rep.results}
    assert v["oracle_best_counterfactual"] >= max(v[k] for k in v)
    assert v["oracle"] >= v["random"] and v["oracle"] >= v["rules"]
    # the rules read the checklist: better than the same rules without it
    assert v["rules"] > v["rules_without_checklist"]
    assert {"info_limit", "r_learner", "uplift_gbm", "neighbours"} <= set(v)
    # recovery is reliable improvement that also leaves the clinical range: never more common
    rec = {r.policy: r.recovery for r in rep.results}
    assert all(0 < rec[k] < v[k] for k in v)
    assert rec["oracle"] > rec["random"]
    assert rep.result("oracle").top_is_best == 1.0
    again = evaluate_policies(4000, seed=5, n_folds=2)
    assert [r.value for r in again.results] == [r.value for r in rep.results]


def test_policy_evaluation_without_the_checklist_blanks_it_for_everyone():
    """--no-checklist: no policy or model sees the checklist, so the rules are the rules
    without it and the models' rows carry no rating."""
    from training.recommendation.policy import evaluate_policies

    rep = evaluate_policies(2500, seed=6, n_folds=2, checklist=False)
    assert rep.params["checklist"] is False
    assert rep.result("rules").value == rep.result("rules_without_checklist").value
    assert rep.result("oracle").value > rep.result("rules").value


def test_policy_values_are_logged_to_mlflow_beside_the_risk_models(small_report, tmp_path,
                                                                   monkeypatch):
    """One run in the OnTrack experiment: policy_value_<policy> for every policy, the gap
    closed per learned recommender, the table and the plot as artifacts."""
    from mlflow.tracking import MlflowClient

    from training.recommendation.picks import LEARNED
    from training.recommendation.tracking import log_to_mlflow
    from training.tracking import EXPERIMENT, configure

    monkeypatch.setenv("ONTRACK_MLFLOW_DIR", str(tmp_path / "mlflow"))
    run_id = log_to_mlflow(small_report)
    configure()
    client = MlflowClient()
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.tags["kind"] == "recommender-evaluation"
    m = run.data.metrics
    for r in small_report.results:
        assert m[f"policy_value_{r.policy}"] == pytest.approx(r.value)
        assert m[f"policy_value_recovery_{r.policy}"] == pytest.approx(r.recovery)
    for name in (*LEARNED, "info_limit"):
        assert m[f"policy_gap_closed_{name}"] == pytest.approx(small_report.gap_closed(name))
        assert m[f"policy_gap_closed_recovery_{name}"] == pytest.approx(
            small_report.gap_closed(name, outcome="recovery"))
    arts = {a.path for a in client.list_artifacts(run_id, "plots")} | {
        a.path for a in client.list_artifacts(run_id, "tables")}
    assert {"plots/policy_values.png", "tables/policy_values.json"} <= arts


def test_assessment_order_crisis_first_then_learned_then_rules(data):
    """The service's list: crisis prompts always first, learned next, rules after; with a
    fallback, the rules carry the reason (models/assess.py)."""
    from models.assess import SOURCE_LEARNED, _with_learned
    from models.recommender import Recommendation
    from models.suggestions import rule_suggestions

    row = data.X.iloc[0].to_dict() | {"alliance_below_cutoff": 1.0}
    rules = rule_suggestions(row, "PHQ-9", "red", None, None, "flag", True)
    model = _fit(NeighbourAdvantage, data)
    rec = next(r for r in model.recommend(data.X.iloc[:50]) if r.suggestions)
    out = _with_learned(rules, rec, [])
    kinds = ["safety" if s.adaptation == "safety" else
             "learned" if s.source == SOURCE_LEARNED else "rule" for s in out]
    assert kinds == sorted(kinds, key=["safety", "learned", "rule"].index)
    assert kinds[0] == "safety" and "learned" in kinds
    codes = [s.adaptation for s in out if s.adaptation != "safety"]
    assert len(codes) == len(set(codes)), "one entry per adaptation"
    both = {s.adaptation for s in rules} & {s.adaptation for s in rec.suggestions}
    for s in out:
        if s.adaptation in both:  # the rules' reason joins the learned suggestion
            assert s.source == SOURCE_LEARNED and "rules point here too" in s.rationale
    notes: list[str] = []
    fb = _with_learned(rules, Recommendation([], "not enough similar cases: test"), notes)
    assert [s.source for s in fb if s.source == SOURCE_LEARNED] == []
    first_rule = next(s for s in fb if s.adaptation != "safety")
    assert "not enough similar cases" in first_rule.rationale and notes


def test_bundle_serves_learned_suggestions_with_their_comparison(tmp_path):
    """Training fits the R-learner into the bundle when the cohort has adaptations and enough
    decision rows; the assessment then shows learned suggestions (observational comparison,
    interval, at least the minimum of similar cases) after any crisis prompts, one per
    adaptation, and the rules' suggestions after them."""
    import re

    from features.contract import load_cohort
    from models.assess import SOURCE_LEARNED
    from tests.service_fixtures import fit_bundle
    from training.simulate import simulate_cohort

    simulate_cohort(3000, seed=8, oracle_clients=0).write(tmp_path / "c", "csv")
    bundle = fit_bundle(tmp_path / "c")
    assert isinstance(bundle.models["PHQ-9"].recommender, RLearnerUplift)
    sessions = load_cohort(tmp_path / "c").sessions
    out = bundle.assess(sessions[sessions["client_id"].isin(
        sessions["client_id"].drop_duplicates().iloc[:400])])
    learned = unclaimed = 0
    for a in out:
        kinds = [s.source == SOURCE_LEARNED for s in a.suggestions if s.adaptation != "safety"]
        assert kinds == sorted(kinds, reverse=True), "learned before rules"
        codes = [s.adaptation for s in a.suggestions if s.adaptation != "safety"]
        assert len(codes) == len(set(codes))
        said = " ".join(a.notes)
        if "cannot support it" in said or "agrees with the rule-based suggestion" in said:
            unclaimed += 1
            assert not any(kinds), "nothing shown as learned when nothing is claimed"
        for s in a.suggestions:
            if s.source != SOURCE_LEARNED:
                continue
            learned += 1
            assert s.rationale.startswith("Observational comparison: of 400 similar clients")
            n_with = int(re.search(r"of the (\d+) who received", s.rationale).group(1))
            assert n_with >= MIN_SIMILAR
            assert re.search(r"\[\d+%–\d+%\]", s.rationale)
            # shown as learned only with a claim: the gain's interval above zero
            lo = int(re.search(r"percentage points \[([+-]\d+) to [+-]\d+\] \(simultaneous",
                               s.rationale).group(1))
            assert lo >= 0 and "the archive supports it" in s.rationale
    assert learned + unclaimed > 0
    rec = bundle.models["PHQ-9"].recommender
    assert "learned suggestion is shown only where" in rec.support_words()
    assert set(rec.support_["adaptations"]) == set(ADAPTATIONS)


# ------------------------------------------------------------------------------------------
# Off-policy evaluation on a cohort's own records (no counterfactuals)
# ------------------------------------------------------------------------------------------
def test_doubly_robust_score_by_hand():
    """With no outcome model the score is inverse-propensity weighting; with an outcome model
    that is right for every option the weights only add mean-zero noise."""
    from training.recommendation.offpolicy import dr_scores

    y = np.array([1.0, 0.0, 1.0, 1.0])
    received = np.array([0, 1, 1, 2])
    P = np.full((4, 3), 1 / 3)
    P[3] = [0.25, 0.25, 0.5]
    pick = np.array([0, 1, 2, 2])
    ipw = dr_scores(y, received, P, np.zeros((4, 3)), pick)
    assert ipw.tolist() == pytest.approx([3.0, 0.0, 0.0, 2.0])
    mu = np.array([[1.0, 0.2, 0.5], [0.3, 0.0, 0.1], [0.4, 1.0, 0.6], [0.0, 0.0, 1.0]])
    assert dr_scores(y, received, P, mu, pick).tolist() == pytest.approx(
        [1.0, 0.0, 0.6, 1.0])


@pytest.fixture(scope="module")
def observational(cohort):
    from training.recommendation.offpolicy import evaluate_cohort

    return evaluate_cohort(cohort.sessions, cohort.clients, cohort.adaptations, n_folds=3,
                           seed=2)


def test_doubly_robust_values_agree_with_the_counterfactuals(cohort, observational):
    """A clinic's data has no counterfactuals; on a simulated cohort they exist, so the
    doubly robust estimates (fitted propensities, cross-fitted outcome model) can be checked
    against the exact values of the same choices for the same clients."""
    from training.recommendation.policy import counterfactual_matrices

    rep = observational
    assert rep.params["propensities"] == "fitted"
    known = np.isfinite(rep.data.outcome)
    Y = counterfactual_matrices(cohort, rep.data)["reliable_improvement"][known]
    rows = np.arange(int(known.sum()))
    exact = {name: Y[rows, rep.picks[name][known]].mean() for name in rep.picks}
    for name in ("rules", "random", "none", "r_learner"):
        r = rep.result(name)
        assert abs(r.value - exact[name]) < 4 * r.se, name
        assert abs(r.diff_vs_rules - (exact[name] - exact["rules"])) < 4 * max(r.diff_se, 1e-3)
    # the factual outcomes are the counterfactuals of the option received; on-policy mean
    assert rep.result("observed").value == pytest.approx(rep.data.outcome[known].mean())
    assert rep.result("observed").value == pytest.approx(exact["observed"])
    # no adaptation for anyone is clearly worse than the rules, and the estimate says so
    none = rep.result("none")
    assert none.diff_vs_rules + 2 * none.diff_se < 0


def test_recommend_eval_on_a_cohorts_own_files(cohort, tmp_path, monkeypatch):
    """`ontrack recommend-eval --data DIR` validates the files, evaluates without
    counterfactuals, prints the table and logs the run."""
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from training.cli import app
    from training.tracking import configure

    cohort.write(tmp_path / "cohort", "csv")
    monkeypatch.setenv("ONTRACK_MLFLOW_DIR", str(tmp_path / "mlflow"))
    res = CliRunner().invoke(app, ["recommend-eval", "--data", str(tmp_path / "cohort"),
                                   "--folds", "2"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "doubly robust" in res.output and "no adaptation" in res.output
    run_id = res.output.strip().split("MLflow run: ")[-1].split()[0]
    configure()
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["kind"] == "recommender-evaluation-observational"
    assert {"policy_value_dr_rules", "policy_value_dr_r_learner",
            "policy_value_dr_se_none"} <= set(run.data.metrics)
    bad = CliRunner().invoke(app, ["recommend-eval", "--data", str(tmp_path / "missing")])
    assert bad.exit_code == 2
