"""Rule-based suggestions from the published clinical-support domains.

Lambert's Assessment for Signal Clients / clinical support tools (alliance, motivation, social
support, life events, plus a decision step on referral for medication; Harmon et al. 2007,
Whipple et al. 2003) and the Trier Treatment Navigator's domains (crisis/suicidality,
motivation/goals, alliance/interpersonal, social support/life events, emotion regulation;
Lutz et al. 2019). Each rule reads only what the service already computed (features, signal,
risk, safety), fires with a rationale naming the values behind it, and is worded as a prompt
for a conversation with the client, never an order or a verdict on the client or therapist.

These rules are the comparator and fallback for the learned recommender.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.instruments import REGISTRY, Instrument, Role, get
from features.thresholds import (
    CHANGE_APPROACH_FROM_SESSION,
    DROPOUT_PROMPT,
    GAP_PROMPT,
    HIGH_SEVERITY,
    LOST_GAIN_RC,
    MEDICATION_FROM_SESSION,
    MISSED_PROMPT,
    STALL_FROM_SESSION,
    STALL_RC,
)
from models.explain import TEMPLATES

SOURCE = "clinical-support rules (Lambert ASC; Trier Treatment Navigator)"


@dataclass
class Suggestion:
    adaptation: str  # contract code, or "safety" for crisis prompts
    prompt: str
    rationale: str
    source: str = SOURCE
    priority: int = 50  # lower comes first; crisis prompts are always 0
    evidence: dict = field(default_factory=dict)


CRISIS_PROMPTS = (
    "Consider reviewing risk with the client today, following your service's risk assessment "
    "and safety-planning procedure.",
    "If there is immediate danger, follow your local crisis pathway (emergency services or "
    "crisis team).",
)


#: Checklist domain -> the rating from which it counts as a problem (registry item_cutoff).
CHECKLIST_CUTOFF: dict[str, float] = {
    d: float(i.item_cutoff) for i in REGISTRY.values()
    if i.role is Role.SUPPORT and i.item_cutoff is not None for d in i.domains}
#: The conversation prompt of each adaptation (shared with the learned recommender).
PROMPTS = {
    "alliance_repair": "Consider asking the client how the sessions are working for them, and "
                       "what you could do differently.",
    "motivation": "Consider revisiting the client's goals for therapy and what might get in "
                  "the way of coming to sessions.",
    "social_support": "Consider exploring who the client can turn to for support between "
                      "sessions.",
    "life_events": "Consider asking whether anything has happened in the client's life "
                   "recently that could explain the setback.",
    "medication_review": "Consider discussing a medication review with the client and their "
                         "prescriber.",
    "change_approach": "Consider discussing with the client, and in supervision, whether a "
                       "different approach or focus might fit better.",
}


# When a rule fires: named, sourced thresholds in `features.thresholds` (docs/thresholds.md).


def _severe(inst: Instrument, severity: float) -> str | None:
    """How the latest score's severity is worded when it warrants a medication review, or
    None: the instrument's published severe band where it has one, else the heuristic."""
    if not np.isfinite(severity):
        return None
    if inst.severe_from is not None:
        lo = inst.severity(inst.severe_from)
        if severity >= lo - 1e-12:
            top = inst.score_min if inst.higher_is_better else inst.score_max
            return (f"{inst.code} is still in the severe range ({inst.severe_from:g}-{top:g})")
        return None
    if severity >= HIGH_SEVERITY:
        return (f"{inst.code} is still in the worst {100 * (1 - HIGH_SEVERITY):.0f}% of its "
                "range (the instrument has no published severe band)")
    return None


def _f(row: dict, name: str) -> float:
    v = row.get(name, np.nan)
    return float(v) if v is not None else np.nan


def rule_suggestions(row: dict, instrument: str | Instrument, signal: str,
                     p_failure: float | None, p_dropout: float | None,
                     safety: str, flagged: bool | None = None,
                     alliance_drop: bool | None = None,
                     alliance_below: bool | None = None) -> list[Suggestion]:
    """Ranked suggestions for one client (crisis prompts first). ``flagged``: the not-on-track
    flag is open. ``alliance_drop`` / ``alliance_below``: whether the latest alliance rating in
    the record fell by an amount worth raising (the alliance instrument's rule, e.g. SRS >= 1
    point) / is below its cut-off; when not given, the features' values are used."""
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    out: list[Suggestion] = []
    if safety == "flag":
        out.extend(Suggestion("safety", text, "A risk item was answered above zero; this is "
                              "raised whatever any model says.", priority=0)
                   for text in CRISIS_PROMPTS)
    not_on_track = signal in {"red", "yellow"} or bool(flagged)
    session = _f(row, "session")

    # Clinical-support checklist (as in Lambert's clinical support tools): every domain the
    # client rated a problem, the highest rating first.
    for domain, cut in CHECKLIST_CUTOFF.items():
        v = _f(row, f"checklist_{domain}")
        if np.isfinite(v) and v >= cut:
            said = TEMPLATES[f"checklist_{domain}"].template(v, inst, row)
            out.append(Suggestion(
                domain, PROMPTS[domain],
                f"{said}, at or above the checklist's cut-off of {cut:.0f}.",
                priority=int(9 - min(v, 4)), evidence={f"checklist_{domain}": v}))

    below = (_f(row, "alliance_below_cutoff") == 1 if alliance_below is None
             else bool(alliance_below))
    drop = _f(row, "alliance_drop") > 0 if alliance_drop is None else bool(alliance_drop)
    if below or drop:
        why = []
        if below:
            why.append("the latest alliance rating is below the cut-off")
        if drop:
            why.append("the alliance rating dropped since the previous session")
        out.append(Suggestion(
            "alliance_repair",
            PROMPTS["alliance_repair"],
            "; ".join(why).capitalize() + ". A lower or falling alliance is linked to worse "
            "outcomes and dropout (Flückiger et al. 2018).",
            priority=10 if not_on_track else 20,
            evidence={"alliance_below_cutoff": below, "alliance_drop": drop}))

    missed = _f(row, "sessions_missed")
    gap = _f(row, "max_gap")
    likely_end = p_dropout is not None and p_dropout >= DROPOUT_PROMPT
    if missed >= MISSED_PROMPT or gap >= GAP_PROMPT or likely_end:
        bits = []
        if missed >= 1:
            bits.append(f"{int(missed)} missed session{'s' if missed != 1 else ''}")
        if likely_end:
            bits.append(f"an estimated {100 * p_dropout:.0f}% chance of ending early")
        out.append(Suggestion(
            "motivation",
            PROMPTS["motivation"],
            ("Signs of lower engagement: " + ", ".join(bits) + ".") if bits else
            "Signs of lower engagement.",
            priority=15 if not_on_track else 30,
            evidence={"sessions_missed": missed, "p_dropout": p_dropout}))

    lost = _f(row, "max_improvement_rc") - _f(row, "change_rc")
    if lost >= LOST_GAIN_RC:
        out.append(Suggestion(
            "life_events",
            PROMPTS["life_events"],
            f"{inst.code} had improved earlier and has since lost a reliable amount of that "
            "gain, a pattern often seen after a life event.",
            priority=12 if not_on_track else 25,
            evidence={"lost_gain_rc": lost}))

    stalled = _f(row, "change_rc") < STALL_RC and session >= STALL_FROM_SESSION
    if not_on_track and stalled and not (below or drop):
        out.append(Suggestion(
            "social_support",
            PROMPTS["social_support"],
            f"Little change on {inst.code} by session {int(session)} while the alliance looks "
            "adequate; low social support is one of the domains that often explains a stall.",
            priority=35, evidence={"change_rc": _f(row, "change_rc")}))

    severe = _severe(inst, _f(row, "latest_severity"))
    if not_on_track and severe and session >= MEDICATION_FROM_SESSION:
        out.append(Suggestion(
            "medication_review",
            PROMPTS["medication_review"],
            f"{severe} at session {int(session)} and progress is behind the expected course.",
            priority=30, evidence={"latest_severity": _f(row, "latest_severity")}))

    if signal == "red" and session >= CHANGE_APPROACH_FROM_SESSION:
        out.append(Suggestion(
            "change_approach",
            PROMPTS["change_approach"],
            f"Progress on {inst.code} has been beyond the expected-course boundary at "
            f"session {int(session)}.",
            priority=40, evidence={"signal": signal}))

    out.sort(key=lambda s: s.priority)
    seen: set[str] = set()  # one suggestion per adaptation: the highest-priority reason
    return [s for s in out if s.adaptation == "safety"
            or not (s.adaptation in seen or seen.add(s.adaptation))]
