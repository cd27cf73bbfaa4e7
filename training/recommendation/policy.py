"""Policy values on a simulated cohort, exact against the simulator's counterfactuals.

`evaluate_policies`: on a simulated cohort, cross-fitted by client (each fold's recommenders
are fitted on the other folds), every flagged client's top suggestion is looked up in the
simulator's counterfactual outcomes (`training.simulate.counterfactual_outcomes`: the same
random numbers under each option), so each policy's value is exact on this cohort. Values on
two outcomes (`OUTCOMES`, as `features.targets` defines them): reliable improvement, which the
recommenders rank by, and reliable recovery (the "recovery rate"). Beside them, the
information limit (`info_limit_top`) and, when asked, the records-only doubly robust values
(`training.recommendation.offpolicy`) with their bias against the exact ones.

Imports features, models and other training modules (the simulator, the other modules of
this package).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from features.targets import recovered, reliably_improved
from models.recommender import OPTIONS, PropensityModel
from training.recommendation.decisions import DecisionData, build_decision_data
from training.recommendation.offpolicy import OffPolicyResult, off_policy_values, outcome_model
from training.recommendation.picks import (
    CLAIMED,
    LEARNED,
    _without_checklist,
    baseline_picks,
    learned_picks,
)

SLOW_NOTE = "the simulator's counterfactuals need the in-memory cohort (its layout and keys)"

#: The outcomes a policy is valued on: reliable improvement (what the recommenders rank by)
#: and reliable recovery (the "recovery rate": reliable improvement that also leaves
#: the clinical range, Jacobson & Truax 1991; `features.targets.recovered`).
OUTCOMES = ("reliable_improvement", "recovery")


def counterfactual_matrices(cohort, data: DecisionData) -> dict[str, np.ndarray]:
    """Per outcome in `OUTCOMES`, an (n, len(OPTIONS)) array: 1 where the client reached it
    (intake to the last observed score) under each option, from
    `training.simulate.counterfactual_outcomes`."""
    from training.simulate import counterfactual_outcomes

    cf = counterfactual_outcomes(cohort, OPTIONS)
    s = cohort.sessions
    first = s.loc[s["instrument"] == data.instrument].sort_values(
        ["client_id", "session"], kind="stable").groupby("client_id")["score"].first()
    pre, post = cf["client_id"].map(first).to_numpy(float), cf["last_phq"].to_numpy(float)
    cf["reliable_improvement"] = reliably_improved(pre, post, data.instrument)
    cf["recovery"] = recovered(pre, post, data.instrument)
    out = {}
    for name in OUTCOMES:
        wide = cf.pivot(index="client_id", columns="option", values=name)
        out[name] = wide.reindex(index=pd.Index(data.client_id),
                                 columns=list(OPTIONS)).to_numpy(float)
    return out


def true_effects(cohort, data: DecisionData) -> np.ndarray:
    """(n, len(ADAPTATIONS)): each adaptation's true effect on the symptom logit for the
    client's latent domains and trajectory class (`training.simulate.generative.
    option_effects`, which also defines the oracle's truly best adaptation)."""
    from training.simulate.generative import option_effects

    at = pd.Index(cohort.layout.client_id).get_indexer(pd.Index(data.client_id))
    return option_effects(cohort.params.pack(), cohort.courses.traj[at],
                          cohort.courses.domains[at])


@dataclass
class PolicyResult:
    policy: str
    value: float  # share reliably improved if every flagged client got the policy's choice
    top_is_best: float  # share whose choice is the truly best adaptation ("any" counts)
    diff_vs_rules: float
    diff_se: float
    n: int
    recovery: float = float("nan")  # share reliably recovered under the policy's choice


@dataclass
class EvaluationReport:
    results: list[PolicyResult]
    n_clients: int
    n_flagged: int
    design: str
    fallback_share: dict[str, float]
    seconds: float
    params: dict = field(default_factory=dict)
    claim_share: float = float("nan")  # share of flagged clients with a claimed suggestion
    dr: list[OffPolicyResult] = field(default_factory=list)  # from the records only, if asked

    def result(self, policy: str) -> PolicyResult:
        return next(r for r in self.results if r.policy == policy)

    def limit_share(self, policy: str) -> float:
        """(value - rules) / (information limit - rules): the share of the information
        limit's gain over the rules that a policy reaches."""
        base, lim, mine = (self.result(p).value for p in ("rules", "info_limit", policy))
        return _share(mine - base, lim - base)

    def dr_bias(self) -> dict[str, float]:
        """Per policy: doubly robust value from the records minus the exact value on the same
        clients (empty unless the evaluation was asked for it)."""
        exact = self.params.get("exact_on_known", {})
        return {r.policy: r.value - exact[r.policy] for r in self.dr if r.policy in exact}

    def gap_closed(self, policy: str, baseline: str = "rules",
                   outcome: str = "reliable_improvement") -> float:
        """(value - baseline) / (oracle - baseline) on an outcome of `OUTCOMES`; the baseline
        is the rules by default."""
        key = "value" if outcome == "reliable_improvement" else outcome
        base, oracle, mine = (getattr(self.result(p), key) for p in (baseline, "oracle", policy))
        return _share(mine - base, oracle - base)


def _share(part: float, whole: float) -> float:
    """part / whole; NaN when there is nothing to share (a world where every option gives the
    same outcome, e.g. the null-effects scenario)."""
    return part / whole if whole != 0 else float("nan")


def evaluate_policies(n_clients: int = 20_000, seed: int = 1, n_folds: int = 5,
                      archive_clients: int = 0, instrument: str = "PHQ-9",
                      checklist: bool = True, scenario: str = "default",
                      off_policy: bool = False,
                      progress: Callable[[str], None] | None = None) -> EvaluationReport:
    """Policy values on a simulated cohort of ``n_clients`` (see the module docstring).

    ``archive_clients = 0``: the recommenders are cross-fitted by client on the cohort itself
    (``n_folds`` folds). ``archive_clients > 0``: they are fitted once on a separate archive
    cohort of that size (seed ``seed + 1000``) and evaluated on every flagged client.
    ``checklist=False``: a service without the clinical-support checklist; its columns are
    blanked for every policy and model (the same information for all). ``scenario``: the
    simulated world of cohort and archive (`training.simulate.scenarios`). ``off_policy``: also
    value every policy as a clinic would, from the records only (fitted propensities, a
    cross-fitted outcome model, doubly robust), so that its bias against the exact values shows.
    """
    from training.simulate import simulate_cohort

    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    say(f"simulating {n_clients:,} clients (seed {seed})")
    cohort = simulate_cohort(n_clients, seed=seed, oracle_clients=0, scenario=scenario)
    data = _without_checklist(build_decision_data(
        cohort.sessions, cohort.clients, cohort.adaptations, instrument, truth=cohort.truth,
        seed=seed), not checklist)
    n = len(data)
    say(f"{n:,} flagged clients; counterfactual outcomes under {len(OPTIONS)} options")
    Ys = counterfactual_matrices(cohort, data)
    Y = Ys["reliable_improvement"]
    picks = baseline_picks(data, seed)
    random_pick, rules = picks["random"], picks["rules"]
    # the recommenders' folds (within the cohort); the records-only outcome model uses them too,
    # so that it is never fitted on the rows that chose a client's pick
    fold = np.random.default_rng([seed, 11]).integers(0, n_folds, size=n)
    if archive_clients > 0:
        say(f"simulating the archive: {archive_clients:,} clients (seed {seed + 1000})")
        arch = simulate_cohort(archive_clients, seed=seed + 1000, oracle_clients=0,
                               scenario=scenario)
        train = _without_checklist(build_decision_data(
            arch.sessions, arch.clients, arch.adaptations, instrument, truth=arch.truth,
            seed=seed), not checklist)
        splits = [(train, np.ones(n, dtype=bool), true_effects(arch, train))]
        design = (f"fitted on a separate archive of {archive_clients:,} simulated clients "
                  f"({len(train):,} decision rows), evaluated on all {n:,} flagged clients")
    else:
        effects = true_effects(cohort, data)
        splits = [(data.subset(fold != f), fold == f, effects[fold != f])
                  for f in range(n_folds)]
        design = f"{n_folds}-fold cross-fitting by client within the cohort"
    picks["info_limit"] = np.zeros(n, dtype=np.int64)
    for f, (train, test, e_train) in enumerate(splits):
        say(f"information limit: fit {f + 1}/{len(splits)}")
        picks["info_limit"][test] = info_limit_top(train.X, e_train, data.X[test], seed)
    learned, fallback_share = learned_picks(data, [(t, m) for t, m, _ in splits], rules, seed,
                                            say, versus=picks["rules_or_none"])
    claim_share = float(fallback_share.pop("claimed"))
    picks.update(learned)
    best = cohort.truth.set_index("client_id")["best_adaptation"].reindex(
        pd.Index(data.client_id)).astype(object).to_numpy()
    best_idx = np.array([OPTIONS.index(b) if b in OPTIONS else -1 for b in best])
    any_best = best == "any"
    picks["oracle"] = np.where(any_best, random_pick, best_idx)
    Ya = Y[:, 1:]
    picks["oracle_best_counterfactual"] = 1 + Ya.argmax(axis=1)
    rows = np.arange(n)
    base = Y[rows, picks["rules"]]
    results = []
    for name in ("oracle_best_counterfactual", "oracle", "info_limit", *LEARNED, CLAIMED,
                 "rules", "rules_or_none", "rules_without_checklist", "random", "observed",
                 "none"):
        v = Y[rows, picks[name]]
        d = v - base
        hit = (picks[name] == best_idx) | (any_best & (picks[name] >= 1))
        results.append(PolicyResult(name, float(v.mean()), float(hit.mean()), float(d.mean()),
                                    float(d.std(ddof=1) / np.sqrt(n)), n,
                                    float(Ys["recovery"][rows, picks[name]].mean())))
    params = {"clients": n_clients, "seed": seed, "folds": n_folds,
              "archive_clients": archive_clients, "instrument": instrument,
              "checklist": checklist, "scenario": scenario,
              "outcome": "reliably improved (and reliably recovered), "
                         "intake to last observed score",
              "propensities": data.propensity_source}
    dr: list[OffPolicyResult] = []
    if off_policy:
        say("doubly robust values from the records only")
        dr, params["exact_on_known"] = _records_only_values(data, picks, Y, seed, fold)
    return EvaluationReport(results, n_clients, n, design, fallback_share,
                            time.perf_counter() - t0, params, claim_share, dr)


def _records_only_values(data: DecisionData, picks: dict[str, np.ndarray], Y: np.ndarray,
                         seed: int, fold: np.ndarray) -> tuple[list[OffPolicyResult],
                                                           dict[str, float]]:
    """Each policy valued as `evaluate_cohort` values a clinic's data: propensities fitted on
    the records (`models.recommender.PropensityModel`), an outcome model cross-fitted on
    ``fold`` (the recommenders' folds), doubly robust scores; beside it the exact value
    (counterfactual outcomes) on the same clients."""
    fitted = PropensityModel(random_state=seed).fit(data.X, data.treatment)
    obs = replace(data, propensity=fitted.predict_proba(data.X), propensity_source="fitted")
    mu = outcome_model(obs, fold, seed)
    policies = (*LEARNED, CLAIMED, "rules", "rules_or_none", "random", "observed", "none")
    known = np.isfinite(obs.outcome)
    rows = np.flatnonzero(known)
    exact = {p: float(Y[rows, picks[p][known]].mean()) for p in policies}
    return off_policy_values(obs, picks, mu, policies), exact


def info_limit_top(X_train: pd.DataFrame, effects_train: np.ndarray, X: pd.DataFrame,
                   seed: int = 0) -> np.ndarray:
    """Index into OPTIONS of the adaptation a model of the *true effects* picks: per
    adaptation, a LightGBM of its effect on the symptom logit (`true_effects`) on the same
    decision-row features, then the largest prediction.

    No recommender can see the true effects; this model is shown them without outcome noise,
    so what it misses is what the decision row does not reveal about the latent domains and
    trajectory class (the information limit, up to the fit on finite data).
    """
    from lightgbm import LGBMRegressor

    M, Mx = X_train.to_numpy(float), X.to_numpy(float)
    pred = [LGBMRegressor(n_estimators=400, num_leaves=31, learning_rate=0.05,
                          min_child_samples=50, random_state=seed, n_jobs=1, verbose=-1,
                          deterministic=True, force_row_wise=True)
            .fit(M, effects_train[:, a]).predict(Mx)
            for a in range(effects_train.shape[1])]
    return 1 + np.argmax(np.column_stack(pred), axis=1)
