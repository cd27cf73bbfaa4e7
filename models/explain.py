"""Explanations in clinical language: SHAP contributions grouped into clinical concepts, each
with a sentence a therapist can check against the client's record.

Every feature a model can use has a concept and a sentence template (`TEMPLATES`); a test fails
if one is missing. Contributions are log-odds on the model's calibrated logit, so
``intercept + sum(contributions) == logit`` exactly; the percentage-point figure per concept is
the change in probability if that concept's contributions were removed (an approximation, and
labelled so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from features.instruments import Instrument, get


def _n(x: float, digits: int = 0) -> str:
    if x is None or not np.isfinite(x):
        return "unknown"
    return f"{x:.{digits}f}" if digits else f"{round(x):d}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


Template = Callable[[float, Instrument, dict[str, float]], str]


def _pts(x: float) -> str:
    x = abs(float(x))
    return f"{x:.0f}" if x.is_integer() else f"{x:.1f}"


def change_words(intake: float, latest: float, instrument: str | Instrument) -> str:
    """Change since intake in words a therapist can check, honouring the direction and the
    reliable-change threshold: "worse by 5, 1 point short of a reliable deterioration",
    "better by 7: a reliable improvement", "no change since intake"."""
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    if not (np.isfinite(intake) and np.isfinite(latest)):
        return "change not known"
    imp = inst.sign * (float(intake) - float(latest))
    if imp == 0:
        return "no change since intake"
    way = "better" if imp > 0 else "worse"
    text = f"{way} by {_pts(imp)}"
    if inst.rci is None:
        return text + " (no reliable-change threshold is published)"
    if imp >= inst.rci:
        crossed = (inst.cutoff is not None and inst.in_clinical_range(intake)
                   and not inst.in_clinical_range(latest))
        return text + (": a reliable improvement, out of the clinical range (recovered)"
                       if crossed else ": a reliable improvement")
    if imp <= -inst.rci:
        return text + ": a reliable deterioration"
    short = inst.rci - abs(imp)
    unit = "point" if short == 1 else "points"
    what = "a reliable improvement" if imp > 0 else "a reliable deterioration"
    return text + f", {_pts(short)} {unit} short of {what}"


def range_words(score: float, instrument: str | Instrument) -> str:
    """Where a score lies against the clinical cut-off, direction-aware ("below the cut-off
    of 10" for PHQ-9, "above the cut-off of 25" for ORS); "" without a cut-off."""
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    if inst.cutoff is None or not np.isfinite(score):
        return ""
    if inst.in_clinical_range(score):
        return "in the clinical range"
    side = "at or above" if inst.higher_is_better else "below"
    return f"outside the clinical range ({side} the cut-off of {_pts(inst.cutoff)})"


def _change(v: float, inst: Instrument, row: dict[str, float]) -> str:
    pts = row.get("change_raw", np.nan)
    if not np.isfinite(pts):
        return f"Only the intake {inst.code} score is known so far."
    intake = row.get("intake_score", np.nan)
    latest = row.get("latest_score", np.nan)
    if not (np.isfinite(intake) and np.isfinite(latest)):  # a matrix without the raw scores
        intake, latest = 0.0, -inst.sign * pts
    return f"{inst.code} since intake: {change_words(intake, latest, inst)}"


def _change_frac(v, inst, row):
    if not np.isfinite(v):
        return f"{inst.code} change as a share of room to improve is not defined yet."
    return f"{inst.code} has moved {_pct(max(v, -9))} of the way from intake to the best score"


def _slope(v, inst, row):
    if not np.isfinite(v):
        return f"Too few {inst.code} scores to see a trend yet."
    if v < -0.02:
        return f"The {inst.code} trend so far is improving"
    if v > 0.02:
        return f"The {inst.code} trend so far is getting worse"
    return f"The {inst.code} trend so far is flat"


def _early(v, inst, row):
    if not np.isfinite(v):
        return "Early change (by session 3) is not known yet."
    if v >= 1:
        return f"A reliable early improvement on {inst.code} by session 3"
    if v <= -1:
        return f"A reliable early worsening on {inst.code} by session 3"
    return f"Little early change on {inst.code} by session 3"


def _best(v, inst, row):
    if not np.isfinite(v):
        return "No improvement recorded yet."
    lost = v - row.get("change_rc", v)
    if lost >= 1:
        return (f"{inst.code} had improved more earlier in treatment and has since lost "
                "a reliable amount of that gain")
    return f"The best {inst.code} improvement so far is {_n(v * (inst.rci or 1), 1)} points"


def _deviation(v, inst, row):
    if not np.isfinite(v):
        return "The expected course is not available for this score."
    if v > 0.25:
        return (f"{inst.code} is {_n(v * (inst.rci or 1), 1)} points worse than expected for "
                "clients who started at this level")
    if v < -0.25:
        return (f"{inst.code} is {_n(-v * (inst.rci or 1), 1)} points better than expected for "
                "clients who started at this level")
    return f"{inst.code} is close to the expected course"


def _latest(v, inst, row):
    s = row.get("latest_score", np.nan)
    if not np.isfinite(s):
        return f"No {inst.code} score yet."
    band = range_words(s, inst)
    return (f"Latest {inst.code} score is {_n(s, 1 if not inst.integer_scores else 0)}"
            + (f" ({band})" if band else ""))


def _intake(v, inst, row):
    s = row.get("intake_score", np.nan)
    return f"{inst.code} at intake was {_n(s, 1 if not inst.integer_scores else 0)}"


def _other(v, inst, row):
    if not np.isfinite(v):
        return "No other outcome measure at the latest session."
    return f"Other outcome measures at the latest session sit at {_pct(v)} of their worst score"


def _other_clinical(v, inst, row):
    if not np.isfinite(v):
        return "No other outcome measure with a clinical cut-off so far."
    return ("Another outcome measure is still in its clinical range" if v == 1
            else "Other outcome measures are outside their clinical range")


def _variability(v, inst, row):
    if not np.isfinite(v):
        return "Too few scores to judge how much they fluctuate."
    return ("Scores fluctuate a lot from session to session" if v > 0.12
            else "Scores are fairly steady from session to session")


def _attended(v, inst, row):
    return f"{_n(v)} sessions attended so far"


def _missed(v, inst, row):
    if not np.isfinite(v) or v == 0:
        return "No missed sessions so far"
    return f"{_n(v)} missed session{'s' if v != 1 else ''} so far"


def _gap(v, inst, row):
    if not np.isfinite(v) or v <= 1:
        return "No gaps between sessions"
    return f"The longest gap between attended sessions is {_n(v)} sessions"


def _days(v, inst, row):
    if not np.isfinite(v):
        return "Session dates were not given."
    return f"{_n(v)} days since intake"


def _session(v, inst, row):
    return f"Assessed as of session {_n(v)}"


def _n_scores(v, inst, row):
    return f"{_n(v)} {inst.code} score{'s' if v != 1 else ''} so far"


def _alliance_latest(v, inst, row):
    if not np.isfinite(v):
        return "No alliance rating was given."
    return (f"Latest alliance rating is {_pct(v)} of the scale's maximum"
            + (" (below the alliance cut-off)" if row.get("alliance_below_cutoff") == 1 else ""))


def _alliance_min(v, inst, row):
    if not np.isfinite(v):
        return "No alliance rating was given."
    return f"Lowest alliance rating so far is {_pct(v)} of the scale's maximum"


def _alliance_drop(v, inst, row):
    if not np.isfinite(v):
        return "Fewer than two alliance ratings, so no trend."
    if v > 0:
        return "The alliance rating dropped since the previous session"
    return "The alliance rating did not drop since the previous session"


def _alliance_below(v, inst, row):
    if not np.isfinite(v):
        return "No alliance rating was given."
    return ("The latest alliance rating is below the cut-off that signals a possible problem"
            if v == 1 else "The latest alliance rating is above the alliance cut-off")


def _alliance_n(v, inst, row):
    if not np.isfinite(v) or v == 0:
        return "No alliance ratings so far"
    return f"{_n(v)} alliance rating{'s' if v != 1 else ''} so far"


def _risk_latest(v, inst, row):
    if not np.isfinite(v):
        return "The risk item was not answered at the latest session."
    return ("The risk item was answered above zero at the latest session" if v > 0
            else "The risk item was answered zero at the latest session")


def _risk_ever(v, inst, row):
    if not np.isfinite(v):
        return "No risk item answers were given."
    return ("The risk item has been answered above zero at some session" if v > 0
            else "The risk item has always been answered zero")


_RATING_WORDS = ("not a problem", "a little of a problem", "somewhat of a problem",
                 "a lot of a problem", "very much a problem")
_DOMAIN_WORDS = {"alliance_repair": "how therapy is going (the alliance)",
                 "motivation": "motivation and goals", "social_support": "social support",
                 "life_events": "recent life events",
                 "medication_review": "whether medication needs reviewing"}


def _checklist(domain: str) -> Template:
    def text(v, inst, row):
        what = _DOMAIN_WORDS.get(domain, domain.replace("_", " "))
        if not np.isfinite(v):
            return f"No clinical-support checklist rating of {what} yet"
        k = int(min(max(round(v), 0), len(_RATING_WORDS) - 1))
        return f"On the clinical-support checklist the client rated {what} {_RATING_WORDS[k]} " \
               f"({_n(v)} of 4)"
    return text


@dataclass(frozen=True)
class FeatureText:
    concept: str
    template: Template


SYMPTOM_CHANGE, SEVERITY, PROGRESS = "symptom change", "severity", "progress vs expected"
ALLIANCE, ATTENDANCE, STABILITY, RISK, TIME = ("alliance", "attendance", "score stability",
                                               "risk items", "time in treatment")
SUPPORT = "clinical-support checklist"

TEMPLATES: dict[str, FeatureText] = {
    "session": FeatureText(TIME, _session),
    "n_scores": FeatureText(TIME, _n_scores),
    "intake_score": FeatureText(SEVERITY, _intake),
    "latest_score": FeatureText(SEVERITY, _latest),
    "intake_severity": FeatureText(SEVERITY, _intake),
    "latest_severity": FeatureText(SEVERITY, _latest),
    "other_severity_latest": FeatureText(SEVERITY, _other),
    "other_clinical_latest": FeatureText(SEVERITY, _other_clinical),
    "change_raw": FeatureText(SYMPTOM_CHANGE, _change),
    "change_rc": FeatureText(SYMPTOM_CHANGE, _change),
    "change_frac": FeatureText(SYMPTOM_CHANGE, _change_frac),
    "slope_log": FeatureText(SYMPTOM_CHANGE, _slope),
    "early_change_rc": FeatureText(SYMPTOM_CHANGE, _early),
    "max_improvement_rc": FeatureText(SYMPTOM_CHANGE, _best),
    "expected_deviation": FeatureText(PROGRESS, _deviation),
    "variability": FeatureText(STABILITY, _variability),
    "sessions_attended": FeatureText(ATTENDANCE, _attended),
    "sessions_missed": FeatureText(ATTENDANCE, _missed),
    "max_gap": FeatureText(ATTENDANCE, _gap),
    "days_since_intake": FeatureText(ATTENDANCE, _days),
    "alliance_latest": FeatureText(ALLIANCE, _alliance_latest),
    "alliance_min": FeatureText(ALLIANCE, _alliance_min),
    "alliance_drop": FeatureText(ALLIANCE, _alliance_drop),
    "alliance_below_cutoff": FeatureText(ALLIANCE, _alliance_below),
    "alliance_n": FeatureText(ALLIANCE, _alliance_n),
    "risk_item_latest": FeatureText(RISK, _risk_latest),
    "risk_item_ever": FeatureText(RISK, _risk_ever),
    **{f"checklist_{d}": FeatureText(SUPPORT, _checklist(d)) for d in _DOMAIN_WORDS},
}


def missing_templates(feature_names) -> list[str]:
    return [n for n in feature_names if n not in TEMPLATES]


@dataclass
class ConceptDriver:
    concept: str
    log_odds: float
    percentage_points: float
    direction: str  # "raises" | "lowers"
    sentence: str
    features: list[dict]


@lru_cache(maxsize=32)
def _concept_groups(names: tuple[str, ...]) -> tuple[tuple[str, np.ndarray], ...]:
    """(concept, feature positions) for a model's feature names, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for j, n in enumerate(names):
        groups.setdefault(TEMPLATES[n].concept, []).append(j)
    return tuple((c, np.array(js)) for c, js in groups.items())


def group_contributions(names, values: np.ndarray, phi: np.ndarray,
                        instrument: str | Instrument, top: int | None = None
                        ) -> tuple[float, list[ConceptDriver]]:
    """Group one row's contributions by concept, largest absolute first.

    ``values`` are the model-matrix values (same order as ``names``); ``phi`` has one more
    entry than ``names`` (the intercept, last). Returns (intercept, drivers).
    """
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    names = tuple(names)
    row = dict(zip(names, values.tolist(), strict=True))
    contrib = phi[:-1]
    logit = float(phi.sum())
    p = 1.0 / (1.0 + math.exp(-logit))
    drivers = []
    for concept, js in _concept_groups(names):
        c = contrib[js]
        total = float(c.sum())
        order = js[np.argsort(-np.abs(c), kind="stable")]
        lead = names[order[0]]
        sentence = TEMPLATES[lead].template(row[lead], inst, row)
        drivers.append(ConceptDriver(
            concept=concept,
            log_odds=total,
            percentage_points=100 * (p - 1.0 / (1.0 + math.exp(-(logit - total)))),
            direction="raises" if total > 0 else "lowers",
            sentence=sentence,
            features=[{"name": names[j], "value": row[names[j]]
                       if math.isfinite(row[names[j]]) else None,
                       "log_odds": float(contrib[j])} for j in order],
        ))
    drivers.sort(key=lambda d: -abs(d.log_odds))
    return float(phi[-1]), drivers[:top] if top else drivers
