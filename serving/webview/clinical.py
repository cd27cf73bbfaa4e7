"""What the web view shows about a client, in words and shapes: the signal, safety and flag
legends, the caseload's order and rows, the change from intake, the clinical-support checklist
and the charts' contents. Presentation only: every value comes from the assessment
(`models.assess.Assessment`, made by the bundle); nothing here scores or decides.

May import: pandas, `features.instruments` (the instrument registry), `serving.charts` (the SVG)
and, for wording, `models.explain` and `models.suggestions`; never training, never HTTP.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.instruments import REGISTRY, Role
from serving import charts

if TYPE_CHECKING:
    from serving.webview.store import _State

_ALLIANCE = frozenset(c for c, i in REGISTRY.items() if i.role is Role.ALLIANCE)
_SUPPORT = frozenset(c for c, i in REGISTRY.items() if i.role is Role.SUPPORT)

#: Signal colour -> (words, shape): the colour is never the only cue.
SIGNALS: dict[str, tuple[str, str]] = {
    "red": ("Not on track", "■"),
    "yellow": ("Less progress than expected", "▲"),
    "green": ("On track", "●"),
    "white": ("In the functional range", "○"),
    "grey": ("Too few scores to compare", "◌"),
}
SAFETY: dict[str, tuple[str, str]] = {
    "flag": ("Risk item above zero", "⚠"),
    "not_assessed": ("Risk not assessed", "?"),
    "not_endorsed": ("Not endorsed", "–"),
}
#: Flag state -> (words, shape).
FLAGS: dict[str, tuple[str, str]] = {
    "new": ("Not on track: new", "■"),
    "continuing": ("Not on track", "■"),
    "cleared": ("Flag cleared", "□"),
    "none": ("Not flagged", "·"),
}


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _trend(a: Any) -> dict[str, str]:
    inst = REGISTRY.get(a.instrument)
    first, last = a.change.intake_score, a.change.latest_score
    delta = last - first
    better = (delta > 0) == bool(inst and inst.higher_is_better) if delta else None
    arrow = "↑" if delta > 0 else "↓" if delta < 0 else "→"
    return {"arrow": arrow, "words": a.change.summary,
            "from_to": f"{_fmt(first)} → {_fmt(last)}", "better": "" if better is None else
            ("better" if better else "worse")}


def _row(i: int, a: Any, last_dates: dict[str, str]) -> dict[str, Any]:
    r = a.risk
    return {"n": i, "client_id": a.client_id, "instrument": a.instrument, "session": a.session,
            "date": last_dates.get(a.client_id, ""), "colour": a.signal.colour,
            "p_failure": None if r is None else r.p_failure,
            "risk_pct": "–" if r is None else f"{100 * r.p_failure:.0f}%",
            "flag": a.flag.state, "flagged": a.flag.flagged, "eligible": a.flag.eligible,
            "safety": a.safety.status, "safety_session": a.safety.assessed_session,
            "trend": _trend(a), "oop": a.population.out_of_population}


def _caseload_order(a: Any) -> tuple:
    """Safety flags first, then open flags (new before continuing), then by risk."""
    rank = {"new": 0, "continuing": 1, "cleared": 2, "none": 2}[a.flag.state]
    return (a.safety.status != "flag", rank, -(a.risk.p_failure if a.risk else -1.0))


def _checklist(a: Any, history: pd.DataFrame) -> dict[str, Any] | None:
    """The latest clinical-support checklist at or before the assessed session, one line per
    domain in words (a table, not a chart: the total of a checklist is not a course)."""
    from models.explain import TEMPLATES
    from models.suggestions import CHECKLIST_CUTOFF

    h = history[history["instrument"].isin(_SUPPORT) & (history["session"] <= a.session)]
    if h.empty:
        return None
    last = h.sort_values("session").iloc[-1]
    inst = REGISTRY[last["instrument"]]
    rows = []
    for k, domain in enumerate(inst.domains, start=1):
        v = last.get(f"item_{k}")
        v = float(v) if v is not None and pd.notna(v) else float("nan")
        text = TEMPLATES[f"checklist_{domain}"].template(v, REGISTRY[a.instrument], {})
        rows.append({"domain": domain, "rating": v, "text": text,
                     "flag": bool(v >= CHECKLIST_CUTOFF.get(domain, float("inf")))})
    return {"code": inst.code, "name": inst.name, "session": int(last["session"]),
            "rows": rows, "cutoff": inst.item_cutoff}


def _charts(st: _State, a: Any, history: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    order = [a.instrument] + sorted(set(history["instrument"]) - {a.instrument} - _SUPPORT,
                                    key=lambda c: (c in _ALLIANCE, c))
    for code in order:
        inst = REGISTRY.get(code)
        h = history[history["instrument"] == code].sort_values("session")
        observed = [(int(x), float(y)) for x, y in zip(h["session"], h["score"], strict=True)]
        if inst is None or not observed:
            continue
        uid = f"chart-{code.lower().replace('-', '')}"
        if code in _ALLIANCE:
            svg = charts.alliance_svg(uid, code, observed, y_min=inst.score_min,
                                      y_max=inst.score_max, cutoff=inst.cutoff)
            note = (f"Cut-off {_fmt(inst.cutoff)}: a rating below it signals a possible "
                    "alliance problem worth raising with the client." if inst.cutoff
                    is not None else "No published cut-off for this instrument.")
            out.append({"code": code, "name": inst.name, "kind": "alliance", "svg": svg,
                        "note": note, "observed": observed, "course": []})
            continue
        course: list[charts.CoursePoint] = []
        note = ""
        if code == a.instrument and a.course:
            course = [charts.CoursePoint(c.session, c.expected, c.lower, c.upper,
                                         c.failure_boundary, c.band_lower, c.band_upper)
                      for c in (*a.course_so_far, *a.course)]
            note = ("Past sessions: the band and boundary expected from the sessions before "
                    f"each one; sessions {a.course[0].session}–{a.course[-1].session}: the "
                    "expected course from today's assessment.")
        elif code == a.instrument:
            note = "No expected course is available for this client."
        else:
            note = (f"The assessment is based on {a.instrument}; {code} is shown as observed "
                    "scores only.")
        svg = charts.trajectory_svg(uid, code, observed, course, y_min=inst.score_min,
                                    y_max=inst.score_max, cutoff=inst.cutoff,
                                    higher_is_better=inst.higher_is_better)
        out.append({"code": code, "name": inst.name, "kind": "outcome", "svg": svg,
                    "note": note, "observed": observed, "course": course})
    return out
