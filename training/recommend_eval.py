"""The recommender's decision dataset and its policy-value evaluation.

Decision dataset (the same code for simulated and real cohorts): for each client who went off
track, the *decision session*, the features as of it (`features.pointintime.point_in_time` on
the sessions up to and including it: the ONE feature implementation, so nothing after the
decision enters a row), the option received (an `adaptations.csv` row, or ``"none"``), its
propensity and the outcome *reliably improved by the end* (intake to last score, at least the
instrument's reliable-change threshold: PHQ-9 a fall of 6 or more; `features.change`).

* Decision session: the session of the client's first adaptation row; for a client without one,
  the first session >= 2 at which the client was off track by `OffTrackRule` (the score above
  an expected course that reaches one reliable change by session 8, plus a tolerance of a third
  of it, or an alliance rating below a floor). This is the simulated therapist's rule
  (docs/simulator.md), stated here as the assumption used on real data too.
* Propensities: the simulator's known ones (``truth.csv``) when given; otherwise a fitted
  multinomial logistic model on the same features (`models.recommender.PropensityModel`).

Evaluation (`evaluate_policies`): on a simulated cohort, cross-fitted by client (each fold's
recommenders are fitted on the other folds), every flagged client's top suggestion is looked up
in the simulator's counterfactual outcomes (`training.simulate.counterfactual_outcomes`: the
same random numbers under each option), so each policy's value is exact on this cohort. Values
on two outcomes (`OUTCOMES`): reliable improvement, which the recommenders rank by, and reliable
recovery (the "recovery rate").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from features.change import rc_units, reliable_change
from features.instruments import REGISTRY, Role, get
from features.pointintime import CHECKLIST_FEATURES, point_in_time
from models.recommender import OPTIONS, PropensityModel


@dataclass(frozen=True)
class OffTrackRule:
    """When an archived client without an adaptation row counts as off track (the decision).

    Score worse than ``intake - rci * log(s) / log(rc_session)`` by more than
    ``tolerance_rc * rci`` (PHQ-9: 2 points), or an alliance rating below ``alliance_floor``
    on the same session (SRS 30), at sessions s >= 2.
    """

    rc_session: float = 8.0
    tolerance_rc: float = 1.0 / 3.0
    alliance_floor: dict = field(default_factory=lambda: {"SRS": 30.0})


@dataclass
class DecisionData:
    instrument: str
    X: pd.DataFrame  # features as of the decision session (FEATURE_NAMES)
    keys: pd.DataFrame  # client_id, session (= the decision session)
    treatment: np.ndarray  # option names (OPTIONS)
    propensity: np.ndarray  # (n, len(OPTIONS)), rows sum to 1
    outcome: np.ndarray  # 1 reliably improved by the end, 0 not, NaN unknown (ongoing)
    improvement: np.ndarray  # intake to last score in reliable-change units, NaN unknown
    propensity_source: str = "known"

    def __len__(self) -> int:
        return len(self.X)

    @property
    def client_id(self) -> np.ndarray:
        return self.keys["client_id"].to_numpy(dtype=object)

    def subset(self, mask: np.ndarray) -> DecisionData:
        m = np.asarray(mask)
        return DecisionData(self.instrument, self.X[m].reset_index(drop=True),
                            self.keys[m].reset_index(drop=True), self.treatment[m],
                            self.propensity[m], self.outcome[m], self.improvement[m],
                            self.propensity_source)


def decision_sessions(sessions: pd.DataFrame, adaptations: pd.DataFrame | None,
                      instrument: str = "PHQ-9", rule: OffTrackRule | None = None
                      ) -> pd.DataFrame:
    """client_id -> decision session and option received ("none" when no adaptation row)."""
    rule = rule or OffTrackRule()
    inst = get(instrument)
    s = sessions.loc[sessions["instrument"] == instrument, ["client_id", "session", "score"]]
    s = s.sort_values(["client_id", "session"], kind="stable")
    intake = s.groupby("client_id", sort=False)["score"].transform("first").to_numpy(float)
    sess = s["session"].to_numpy(dtype=float)
    expected = intake - inst.sign * inst.rci * np.log(sess) / np.log(rule.rc_session)
    off = inst.sign * (s["score"].to_numpy(float) - expected) > rule.tolerance_rc * inst.rci
    al = [c for c in rule.alliance_floor if c in REGISTRY and REGISTRY[c].role is Role.ALLIANCE]
    if al:
        a = sessions.loc[sessions["instrument"].isin(al), ["client_id", "session", "instrument",
                                                           "score"]].copy()
        a["low"] = a["score"].to_numpy(float) < a["instrument"].map(rule.alliance_floor).to_numpy(
            float)
        low = a.groupby(["client_id", "session"])["low"].any()
        idx = pd.MultiIndex.from_arrays([s["client_id"], s["session"]])
        off |= low.reindex(idx).fillna(False).to_numpy(dtype=bool)
    off &= sess >= 2
    first_off = s.loc[off].groupby("client_id", sort=False)["session"].min()
    out = pd.DataFrame({"session": first_off, "adaptation": "none"})
    if adaptations is not None and len(adaptations):
        ad = adaptations.sort_values(["client_id", "session"], kind="stable").drop_duplicates(
            "client_id")
        ad = ad.set_index("client_id")[["session", "adaptation"]].astype(
            {"session": "int64", "adaptation": object})
        out = pd.concat([out.drop(index=ad.index, errors="ignore"), ad])
    out.index.name = "client_id"
    out["session"] = out["session"].astype("int64")
    return out.sort_index()


def _parse_propensities(truth: pd.DataFrame, ids) -> np.ndarray:
    tr = truth.set_index(truth["client_id"].astype(str))["propensities"].reindex(
        pd.Index(ids).astype(str))
    out = np.full((len(ids), len(OPTIONS)), np.nan)
    pos = {o: j for j, o in enumerate(OPTIONS)}
    for i, txt in enumerate(tr.to_numpy(dtype=object)):
        if isinstance(txt, str) and txt:
            for part in txt.split(";"):
                name, p = part.split(":")
                out[i, pos[name]] = float(p)
    return out


def build_decision_data(sessions: pd.DataFrame, clients: pd.DataFrame | None,
                        adaptations: pd.DataFrame | None, instrument: str = "PHQ-9",
                        truth: pd.DataFrame | None = None, rule: OffTrackRule | None = None,
                        seed: int = 0) -> DecisionData:
    """One row per client with a decision session (see the module docstring)."""
    dec = decision_sessions(sessions, adaptations, instrument, rule)
    ids = dec.index.to_numpy(dtype=object)
    upto = sessions["client_id"].map(dec["session"])
    s = sessions.loc[upto.notna().to_numpy() & (sessions["session"].to_numpy()
                                               <= upto.fillna(0).to_numpy())]
    ff = point_in_time(s, instrument=instrument, at=None)
    order = pd.Index(ff.keys["client_id"].astype(object)).get_indexer(pd.Index(ids))
    X = ff.X.iloc[order].reset_index(drop=True)
    keys = pd.DataFrame({"client_id": ids, "session": dec["session"].to_numpy()})
    treatment = dec["adaptation"].to_numpy(dtype=object)
    prim = sessions.loc[sessions["instrument"] == instrument].sort_values(
        ["client_id", "session"], kind="stable").groupby("client_id")["score"]
    first, last = prim.first().reindex(ids), prim.last().reindex(ids)
    y = (reliable_change(first.to_numpy(float), last.to_numpy(float), instrument) == 1
         ).astype(float)
    imp = rc_units(first.to_numpy(float), last.to_numpy(float), instrument)
    if clients is not None and len(clients):
        status = clients.set_index("client_id")["end_status"].reindex(ids).astype(object)
        y[(status == "ongoing").to_numpy()] = np.nan
        imp[(status == "ongoing").to_numpy()] = np.nan
    if truth is not None and "propensities" in truth.columns:
        prop, source = _parse_propensities(truth, ids), "known (simulation truth)"
    else:
        prop, source = np.full((len(ids), len(OPTIONS)), np.nan), "fitted"
    missing = ~np.isfinite(prop).all(axis=1)
    if missing.any():
        pm = PropensityModel(random_state=seed).fit(X, treatment)
        prop[missing] = pm.predict_proba(X[missing])
        if not missing.all():
            source += f"; fitted for {int(missing.sum())} clients"
    return DecisionData(instrument, X, keys, treatment, prop, y, imp, source)


# ------------------------------------------------------------------------------------------
# Policy-value evaluation against the simulator's counterfactuals
# ------------------------------------------------------------------------------------------
LEARNED = ("neighbours", "uplift_gbm", "r_learner")
#: What the service shows: the R-learner's suggestion where the archive supports its gain over
#: the rules (`models.recommender.RLearnerUplift.claims`), the rules otherwise.
CLAIMED = "r_learner_claimed"
POLICY_LABELS = {
    CLAIMED: "R-learner where its gain over the rules is claimed (simultaneous lower bound "
             "above zero), the rules otherwise (what the service shows)",
    "neighbours": "Nearest-neighbour personalised advantage (learned)",
    "uplift_gbm": "Gradient-boosted uplift (learned)",
    "r_learner": "R-learner, penalised linear effects (learned)",
    "rules": "Clinical-support rules (top rule; a random adaptation when no rule fires)",
    "rules_or_none": "Clinical-support rules (no adaptation when no rule fires)",
    "rules_without_checklist": "Clinical-support rules without the checklist (the rules "
                               "before it; a random adaptation when no rule fires)",
    "info_limit": "Information limit: a model of the true effects on the same features "
                  "(not a recommender)",
    "random": "Random adaptation (seeded)",
    "observed": "What the clients received (the simulated therapists' choices in simulation)",
    "none": "No adaptation for anyone",
    "oracle": "Oracle: the truly best adaptation (truth.csv best_adaptation)",
    "oracle_best_counterfactual": "Oracle: the best counterfactual outcome per client",
}
#: Short names for plots.
POLICY_SHORT = {
    "neighbours": "nearest-neighbour advantage", "uplift_gbm": "gradient-boosted uplift",
    "r_learner": "R-learner", CLAIMED: "R-learner where claimed, else rules",
    "rules": "rules (with the checklist)",
    "rules_or_none": "rules, none when silent", "rules_without_checklist":
    "rules without the checklist", "info_limit": "information limit (not a recommender)",
    "random": "random", "observed": "what clients received", "none": "no adaptation",
    "oracle": "oracle: truly best adaptation", "oracle_best_counterfactual":
    "oracle: best counterfactual outcome",
}
SLOW_NOTE = "the simulator's counterfactuals need the in-memory cohort (its layout and keys)"


def make_recommender(name: str, instrument: str = "PHQ-9", seed: int = 0):
    from models.recommender import NeighbourAdvantage, RLearnerUplift, UpliftGBM

    if name == "neighbours":
        return NeighbourAdvantage(instrument=instrument)
    if name == "uplift_gbm":
        return UpliftGBM(instrument=instrument, random_state=seed)
    if name == "r_learner":
        return RLearnerUplift(instrument=instrument, random_state=seed)
    raise ValueError(name)


def fit_recommender(name: str, data: DecisionData, seed: int = 0):
    model = make_recommender(name, data.instrument, seed)
    return model.fit(data.X, data.treatment, data.outcome, data.propensity,
                     improvement=data.improvement)


def rule_top(X: pd.DataFrame, instrument: str, fallback: np.ndarray | None = None
             ) -> np.ndarray:
    """Index into OPTIONS of the top rule-based suggestion at the decision session.

    The rules see the decision row with signal "red" and the flag open (every decision row
    is off track) and no risk probabilities (the evaluation fits no risk model); where no rule
    fires the option is ``fallback`` (or "none" when not given).
    """
    from models.suggestions import rule_suggestions

    inst = get(instrument)
    out = np.zeros(len(X), dtype=np.int64) if fallback is None else fallback.copy()
    for i, row in enumerate(X.to_dict("records")):
        sg = [s for s in rule_suggestions(row, inst, "red", None, None, "not_endorsed", True)
              if s.adaptation in OPTIONS]
        if sg:
            out[i] = OPTIONS.index(sg[0].adaptation)
    return out


#: The outcomes a policy is valued on: reliable improvement (what the recommenders rank by)
#: and reliable recovery (the "recovery rate": reliable improvement that also leaves
#: the clinical range, Jacobson & Truax 1991; `features.change.classify`).
OUTCOMES = ("reliable_improvement", "recovery")


def counterfactual_matrices(cohort, data: DecisionData) -> dict[str, np.ndarray]:
    """Per outcome in `OUTCOMES`, an (n, len(OPTIONS)) array: 1 where the client reached it
    (intake to the last observed score) under each option, from
    `training.simulate.counterfactual_outcomes`."""
    from features.change import Change, classify
    from training.simulate import counterfactual_outcomes

    cf = counterfactual_outcomes(cohort, OPTIONS)
    s = cohort.sessions
    first = s.loc[s["instrument"] == data.instrument].sort_values(
        ["client_id", "session"], kind="stable").groupby("client_id")["score"].first()
    pre, post = cf["client_id"].map(first).to_numpy(float), cf["last_phq"].to_numpy(float)
    cf["reliable_improvement"] = reliable_change(pre, post, data.instrument) == 1
    cf["recovery"] = classify(pre, post, data.instrument) == Change.RECOVERED
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


def baseline_picks(data: DecisionData, seed: int) -> dict[str, np.ndarray]:
    """Indexes into OPTIONS of the policies that need no fitting: ``rules`` (a seeded random
    adaptation where no rule fires), ``rules_or_none``, ``rules_without_checklist``,
    ``random``, ``observed`` (what the client received) and ``none`` (no adaptation)."""
    n = len(data)
    random_pick = np.random.default_rng([seed, 7]).integers(1, len(OPTIONS), size=n)
    blank = _without_checklist(data, True).X
    return {"rules": rule_top(data.X, data.instrument, fallback=random_pick),
            "rules_or_none": rule_top(data.X, data.instrument),
            "rules_without_checklist": rule_top(blank, data.instrument, fallback=random_pick),
            "random": random_pick, "observed": _codes_of(data.treatment),
            "none": np.zeros(n, dtype=np.int64)}


def learned_picks(data: DecisionData, splits: list[tuple[DecisionData, np.ndarray]],
                  rules: np.ndarray, seed: int, say: Callable[[str], None],
                  versus: np.ndarray | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each learned recommender's top adaptation for every row of ``data``, fitted per split
    ``(training rows, mask of the rows of data it chooses for)``; where a recommender falls
    back, the rules' choice. Also the share of rows that fell back, and (``"claimed"``) the
    share where the R-learner's gain over ``versus`` (indexes into OPTIONS of the rules' top,
    0 where no rule fires; default ``rules``) is claimed: the `CLAIMED` policy."""
    n = len(data)
    picks = {name: np.zeros(n, dtype=np.int64) for name in (*LEARNED, CLAIMED)}
    fallback = dict.fromkeys(LEARNED, 0.0)
    fallback["claimed"] = 0.0
    vs = rules if versus is None else versus
    names = np.array([None, *OPTIONS[1:]], dtype=object)
    for name in LEARNED:
        for f, (train, test) in enumerate(splits):
            say(f"{name}: fit {f + 1}/{len(splits)}")
            model = fit_recommender(name, train, seed)
            top = model.top_adaptation(data.X[test])
            picks[name][test] = _or_rules(top, rules[test])
            fallback[name] += float(sum(t is None for t in top)) / n
            if name == "r_learner":
                claimed = model.claimed_top(data.X[test], versus=names[vs[test]].tolist())
                picks[CLAIMED][test] = _or_rules(claimed, rules[test])
                fallback["claimed"] += float(sum(t is not None for t in claimed)) / n
    return picks, fallback


def _or_rules(top: np.ndarray, rules: np.ndarray) -> np.ndarray:
    """Indexes into OPTIONS of ``top`` (adaptation names), the rules' choice where None."""
    return np.array([r if t is None else OPTIONS.index(t) for t, r in zip(top, rules,
                                                                         strict=True)],
                    dtype=np.int64)


def _without_checklist(data: DecisionData, blank: bool) -> DecisionData:
    """``data`` with the checklist columns set to missing (as if never given) when ``blank``."""
    if not blank:
        return data
    X = data.X.copy()
    X[[c for c in CHECKLIST_FEATURES if c in X.columns]] = np.nan
    return replace(data, X=X)


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


def _codes_of(treatment: np.ndarray) -> np.ndarray:
    return pd.Categorical(treatment, categories=OPTIONS).codes.astype(np.int64)


def log_to_mlflow(report: EvaluationReport) -> str:
    """One MLflow run in the OnTrack experiment: ``policy_value_<policy>`` (reliable
    improvement), ``policy_value_recovery_<policy>``, ``top_is_best_<policy>``,
    ``policy_gap_closed[_recovery]_<learned or info_limit>``. Returns the run id."""
    import mlflow

    from training.tracking import configure, git_commit

    configure()
    with mlflow.start_run(run_name="recommend-eval") as run:
        mlflow.set_tags({"kind": "recommender-evaluation", "git_commit": git_commit(),
                         "design": report.design})
        mlflow.log_params({k: v for k, v in report.params.items() if k != "exact_on_known"})
        for r in report.results:
            mlflow.log_metric(f"policy_value_{r.policy}", r.value)
            mlflow.log_metric(f"policy_value_recovery_{r.policy}", r.recovery)
            mlflow.log_metric(f"top_is_best_{r.policy}", r.top_is_best)
            mlflow.log_metric(f"policy_value_diff_vs_rules_{r.policy}", r.diff_vs_rules)
        for name in (*LEARNED, "info_limit"):
            mlflow.log_metric(f"policy_gap_closed_{name}", report.gap_closed(name))
            mlflow.log_metric(f"policy_gap_closed_recovery_{name}",
                              report.gap_closed(name, outcome="recovery"))
            mlflow.log_metric(f"policy_gap_closed_vs_rules_without_checklist_{name}",
                              report.gap_closed(name, "rules_without_checklist"))
        for name in LEARNED:
            mlflow.log_metric(f"fallback_share_{name}", report.fallback_share[name])
        for name in (*LEARNED, CLAIMED):
            mlflow.log_metric(f"information_limit_share_{name}", report.limit_share(name))
        mlflow.log_metric("claim_share_r_learner", report.claim_share)
        for name, bias in report.dr_bias().items():
            mlflow.log_metric(f"dr_bias_{name}", bias)
        mlflow.log_metric("n_flagged", report.n_flagged)
        mlflow.log_table(pd.DataFrame([{
            "policy": r.policy, "label": POLICY_LABELS.get(r.policy, r.policy),
            "policy_value": r.value, "policy_value_recovery": r.recovery,
            "diff_vs_rules": r.diff_vs_rules,
            "diff_se": r.diff_se, "top_is_best": r.top_is_best, "n": r.n}
            for r in report.results]), artifact_file="tables/policy_values.json")
        from training.plots import close, policy_value_plot

        fig = policy_value_plot(report.results, POLICY_SHORT,
                                f"Policy values, {report.design}"[:110])
        mlflow.log_figure(fig, "plots/policy_values.png")
        close(fig)
        return run.info.run_id


# ------------------------------------------------------------------------------------------
# Off-policy evaluation on a cohort without counterfactuals (a clinic's own data)
# ------------------------------------------------------------------------------------------
#: Policies valued on real data (no oracle there).
REAL_POLICIES = (*LEARNED, CLAIMED, "rules", "rules_or_none", "random", "observed", "none")


@dataclass
class OffPolicyResult:
    policy: str
    value: float  # doubly robust estimate of the share reliably improved under the policy
    se: float
    ipw: float  # Hajek inverse-propensity estimate, a check on the outcome model
    diff_vs_rules: float  # paired, doubly robust
    diff_se: float
    matched: int  # clients whose received option is the policy's choice
    n: int  # clients with a known outcome


@dataclass
class OffPolicyReport:
    results: list[OffPolicyResult]
    n_flagged: int
    n_known: int
    design: str
    fallback_share: dict[str, float]
    seconds: float
    params: dict = field(default_factory=dict)
    picks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    data: DecisionData | None = field(default=None, repr=False)

    def result(self, policy: str) -> OffPolicyResult:
        return next(r for r in self.results if r.policy == policy)


def dr_scores(y: np.ndarray, received: np.ndarray, propensity: np.ndarray, mu: np.ndarray,
              pick: np.ndarray) -> np.ndarray:
    """Per client, the doubly robust (augmented inverse-propensity) score of a policy that
    chooses ``pick`` (Dudik, Langford & Li 2011; Athey & Wager 2021):
    ``mu[pick] + 1[received = pick] / e(pick) * (y - mu[received])``. Its mean estimates the
    policy's value; it is unbiased when either the propensities ``e`` or the outcome model
    ``mu`` (n, options) is right."""
    r = np.arange(len(y))
    w = (received == pick) / propensity[r, pick]
    return mu[r, pick] + w * (y - mu[r, received])


def outcome_model(data: DecisionData, fold: np.ndarray, seed: int = 0) -> np.ndarray:
    """Cross-fitted P(reliably improved | decision row, option) for every option, (n, options):
    per fold, a LightGBM classifier on the other folds' rows with a known outcome (the features
    and the option received, one-hot)."""
    from lightgbm import LGBMClassifier

    M = data.X.to_numpy(float)
    A = _codes_of(data.treatment)
    onehot = np.eye(len(OPTIONS))
    known = np.isfinite(data.outcome)
    mu = np.full((len(data), len(OPTIONS)), np.nan)
    for f in np.unique(fold):
        train, test = known & (fold != f), fold == f
        clf = LGBMClassifier(n_estimators=300, num_leaves=15, learning_rate=0.05,
                             min_child_samples=50, random_state=seed, n_jobs=1, verbose=-1,
                             deterministic=True, force_row_wise=True)
        clf.fit(np.column_stack([M[train], onehot[A[train]]]), data.outcome[train])
        for a in range(len(OPTIONS)):
            mu[test, a] = clf.predict_proba(
                np.column_stack([M[test], np.tile(onehot[a], (int(test.sum()), 1))]))[:, 1]
    return mu


def off_policy_values(data: DecisionData, picks: dict[str, np.ndarray], mu: np.ndarray,
                      policies: tuple[str, ...] = REAL_POLICIES) -> list[OffPolicyResult]:
    """Doubly robust and IPW values of each policy on the clients with a known outcome, with
    paired differences from the rules. ``observed`` is on-policy: its value is the plain mean
    of the outcomes."""
    known = np.isfinite(data.outcome)
    y, A, P, M = (data.outcome[known], _codes_of(data.treatment)[known],
                  data.propensity[known], mu[known])
    m = int(known.sum())
    scores = {name: (y if name == "observed" else dr_scores(y, A, P, M, picks[name][known]))
              for name in policies}
    base = scores["rules"]
    out = []
    for name in policies:
        pk = picks[name][known]
        w = (A == pk) / P[np.arange(m), pk]
        ipw = float((w * y).sum() / w.sum()) if w.sum() > 0 else float("nan")
        d = scores[name] - base
        out.append(OffPolicyResult(name, float(scores[name].mean()),
                                   float(scores[name].std(ddof=1) / np.sqrt(m)), ipw,
                                   float(d.mean()), float(d.std(ddof=1) / np.sqrt(m)),
                                   int((A == pk).sum()), m))
    return out


def evaluate_cohort(sessions: pd.DataFrame, clients: pd.DataFrame | None,
                    adaptations: pd.DataFrame | None, instrument: str = "PHQ-9",
                    n_folds: int = 5, seed: int = 1,
                    progress: Callable[[str], None] | None = None) -> OffPolicyReport:
    """Policy values on a cohort's own records, without counterfactuals (a clinic's data).

    The decision rows and fitted propensities of `build_decision_data`; the recommenders and
    an outcome model cross-fitted by client (``n_folds``); each policy valued by its doubly
    robust score on the clients with a known outcome (`off_policy_values`). Observational:
    valid only when who received what depended on what the rows record (no unmeasured
    confounding) and every option had a chance (the propensities are floored at 0.02).
    """
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    say("decision rows and propensities")
    data = build_decision_data(sessions, clients, adaptations, instrument, seed=seed)
    n = len(data)
    if n < 10 * n_folds or not np.isfinite(data.outcome).any():
        raise ValueError(f"only {n} off-track clients with a decision row: too few to evaluate")
    fold = np.random.default_rng([seed, 11]).integers(0, n_folds, size=n)
    picks = baseline_picks(data, seed)
    splits = [(data.subset(fold != f), fold == f) for f in range(n_folds)]
    learned, fallback = learned_picks(data, splits, picks["rules"], seed, say,
                                      versus=picks["rules_or_none"])
    fallback.pop("claimed")
    picks.update(learned)
    say("outcome model (cross-fitted)")
    mu = outcome_model(data, fold, seed)
    results = off_policy_values(data, picks, mu)
    known = int(np.isfinite(data.outcome).sum())
    design = (f"{n_folds}-fold cross-fitting by client; doubly robust values on the {known:,} "
              f"of {n:,} off-track clients with a known outcome")
    return OffPolicyReport(results, n, known, design, fallback, time.perf_counter() - t0,
                           {"folds": n_folds, "seed": seed, "instrument": instrument,
                            "outcome": "reliably improved, intake to last observed score",
                            "propensities": data.propensity_source,
                            "estimator": "doubly robust (AIPW), cross-fitted LightGBM "
                                         "outcome model"},
                           picks, data)


def log_off_policy_to_mlflow(report: OffPolicyReport, source: str) -> str:
    """One MLflow run in the OnTrack experiment (tag ``kind=recommender-evaluation-
    observational``): ``policy_value_dr_<policy>``, ``policy_value_dr_se_<policy>``,
    ``policy_value_dr_diff_vs_rules_<policy>`` and the table ``tables/policy_values_dr.json``.
    Returns the run id."""
    import mlflow

    from training.tracking import configure, git_commit

    configure()
    with mlflow.start_run(run_name="recommend-eval-observational") as run:
        mlflow.set_tags({"kind": "recommender-evaluation-observational",
                         "git_commit": git_commit(), "design": report.design,
                         "data": source})
        mlflow.log_params(report.params)
        for r in report.results:
            mlflow.log_metric(f"policy_value_dr_{r.policy}", r.value)
            mlflow.log_metric(f"policy_value_dr_se_{r.policy}", r.se)
            mlflow.log_metric(f"policy_value_dr_diff_vs_rules_{r.policy}", r.diff_vs_rules)
        mlflow.log_metric("n_flagged", report.n_flagged)
        mlflow.log_metric("n_known_outcome", report.n_known)
        mlflow.log_table(pd.DataFrame([{
            "policy": r.policy, "label": POLICY_LABELS.get(r.policy, r.policy),
            "policy_value_dr": r.value, "se": r.se, "ipw": r.ipw,
            "diff_vs_rules": r.diff_vs_rules, "diff_se": r.diff_se, "matched": r.matched,
            "n": r.n} for r in report.results]), artifact_file="tables/policy_values_dr.json")
        return run.info.run_id
