"""The policies both evaluations compare, and each policy's choice per decision row.

The policy names (`LEARNED`, `CLAIMED`) and their labels; the choices that need no fitting
(`baseline_picks`: the rules, random, what was received, none) and those of the learned
recommenders cross-fitted on training rows (`learned_picks`, with the rules as the fallback).
A choice is an index into `models.recommender.OPTIONS`.

Imports features, models and `training.recommendation.decisions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from features.instruments import get
from features.pointintime import CHECKLIST_FEATURES
from models.recommender import OPTIONS
from training.recommendation.decisions import DecisionData, fit_recommender

#: The learned recommenders (the names `decisions.make_recommender` knows).
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


def _codes_of(treatment: np.ndarray) -> np.ndarray:
    return pd.Categorical(treatment, categories=OPTIONS).codes.astype(np.int64)
