"""One assessment per client: risk, signal, expected course, drivers in words, suggestions,
safety and population checks. The prediction service and the web view both call `assess`;
there is no second implementation.

Input is a contract-typed sessions frame that already passed `features.contract.check_sessions`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from features.change import classify, rc_units
from features.instruments import REGISTRY, Role, get
from features.pointintime import point_in_time
from models.explain import group_contributions
from models.signal import signal as signal_rule
from models.suggestions import rule_suggestions


# ------------------------------------------------------------------------------------------
# Output schema (the service's response schema reuses these)
# ------------------------------------------------------------------------------------------
class SafetyItem(BaseModel):
    instrument: str
    item: int
    value: float
    session: int
    loinc: str | None = None


class Safety(BaseModel):
    status: Literal["flag", "not_assessed", "clear"] = Field(
        description="flag: a risk item answered above zero at the latest session where one was "
        "answered; not_assessed: no risk item given; clear otherwise. Model-independent.")
    items: list[SafetyItem] = []
    message: str


class Risk(BaseModel):
    p_failure: float = Field(description="Probability of not reliably improving by the end "
                             "of care (calibrated).")
    p_dropout: float | None = Field(None, description="Probability of ending care early.")
    at_risk: bool = Field(description="p_failure at or above the stored threshold.")
    threshold: float
    model: str
    model_version: str
    feature_version: str


class Signal(BaseModel):
    colour: Literal["grey", "white", "green", "yellow", "red"]
    reason: str
    boundary_source: Literal["neighbours", "expected_response", "none"]


class CoursePoint(BaseModel):
    session: int
    expected: float
    lower: float
    upper: float
    failure_boundary: float


class ChangeStatus(BaseModel):
    category: str | None = Field(description="Jacobson-Truax category, intake vs latest.")
    improvement_points: float | None
    rc_units: float | None
    intake_score: float
    latest_score: float


class AllianceStatus(BaseModel):
    status: Literal["ok", "below_cutoff", "drop", "below_cutoff_and_drop", "not_assessed"]
    latest: float | None = None
    cutoff: float | None = None
    message: str


class DriverFeature(BaseModel):
    name: str
    value: float | None
    log_odds: float


class Driver(BaseModel):
    concept: str
    direction: Literal["raises", "lowers"]
    log_odds: float
    percentage_points: float = Field(description="Approximate change in risk (percentage "
                                     "points) if this concept's contributions were removed.")
    sentence: str
    features: list[DriverFeature]


class Explanation(BaseModel):
    target: str = "failed"
    intercept: float
    logit: float
    drivers: list[Driver]


class SuggestionOut(BaseModel):
    adaptation: str
    prompt: str
    rationale: str
    source: str


class Population(BaseModel):
    out_of_population: bool
    reasons: list[str] = []


class Assessment(BaseModel):
    client_id: str
    instrument: str
    session: int = Field(description="Latest session with a score on the instrument.")
    n_scores: int
    safety: Safety
    risk: Risk | None
    signal: Signal
    agreement: str | None = Field(None, description="Set when signal and risk disagree.")
    course: list[CoursePoint] = []
    change: ChangeStatus
    alliance: AllianceStatus
    explanation: Explanation | None = None
    suggestions: list[SuggestionOut] = []
    population: Population
    notes: list[str] = []


# ------------------------------------------------------------------------------------------
def safety_by_client(sessions: pd.DataFrame) -> dict[str, Safety]:
    """Risk-item status per client, independent of any model."""
    frames = []
    for code, inst in REGISTRY.items():
        for k in inst.risk_items:
            col = f"item_{k}"
            if col not in sessions.columns:
                continue
            sel = sessions.loc[(sessions["instrument"] == code) & sessions[col].notna(),
                               ["client_id", "session", col]]
            if len(sel):
                frames.append(sel.rename(columns={col: "value"}).assign(instrument=code, item=k))
    out: dict[str, Safety] = {}
    if frames:
        items = pd.concat(frames, ignore_index=True)
        last = items.groupby("client_id")["session"].transform("max")
        latest = items[items["session"] == last]
        for cid, d in latest.groupby("client_id", sort=False):
            flagged = d[d["value"] > 0]
            if len(flagged):
                lst = [SafetyItem(instrument=r.instrument, item=int(r.item), value=float(r.value),
                                  session=int(r.session),
                                  loinc=REGISTRY[r.instrument].loinc_items.get(int(r.item)))
                       for r in flagged.itertuples()]
                names = ", ".join(f"{i.instrument} item {i.item} = {i.value:g}" for i in lst)
                out[str(cid)] = Safety(status="flag", items=lst, message=(
                    f"Risk item answered above zero ({names}) at session {lst[0].session}. "
                    "Review risk with the client today, whatever the model says."))
            else:
                s = int(d["session"].iloc[0])
                out[str(cid)] = Safety(status="clear", message=(
                    f"Risk items answered zero at session {s}."))
    return out


NOT_ASSESSED = Safety(status="not_assessed", message=(
    "No risk item (e.g. PHQ-9 item 9) was given: risk has not been assessed by this service."))


def _primary(sessions: pd.DataFrame, covered: list[str]) -> pd.Series:
    """Per client: the first covered outcome instrument it has, else its first outcome one."""
    order = covered + [c for c, i in REGISTRY.items() if i.role is Role.OUTCOME
                       and c not in covered]
    rank = {c: k for k, c in enumerate(order)}
    s = sessions[sessions["instrument"].isin(rank)]
    r = s["instrument"].map(rank)
    best = r.groupby(s["client_id"]).min()
    return best.map(dict(enumerate(order)))


def _alliance(row: dict) -> AllianceStatus:
    latest = row.get("alliance_latest", np.nan)
    if not np.isfinite(latest):
        return AllianceStatus(status="not_assessed", message="No alliance rating was given.")
    below = row.get("alliance_below_cutoff") == 1
    drop = row.get("alliance_drop", np.nan)
    drop = bool(np.isfinite(drop) and drop > 0)
    status = {(True, True): "below_cutoff_and_drop", (True, False): "below_cutoff",
              (False, True): "drop", (False, False): "ok"}[(below, drop)]
    msg = {"ok": "The alliance rating is above its cut-off and did not drop.",
           "below_cutoff": "The latest alliance rating is below the cut-off that signals a "
                           "possible alliance problem.",
           "drop": "The alliance rating dropped since the previous session: worth raising "
                   "with the client.",
           "below_cutoff_and_drop": "The alliance rating is below its cut-off and dropped since "
                                    "the previous session: worth raising with the client."}[status]
    return AllianceStatus(status=status, latest=float(latest), message=msg)


def _agreement(colour: str, at_risk: bool | None) -> str | None:
    if at_risk is None or colour in {"grey"}:
        return None
    if at_risk and colour in {"green", "white"}:
        return ("The expected-course signal looks fine, but the risk model flags this client: "
                "other parts of the record (see the drivers) point to a risk of not improving.")
    if not at_risk and colour == "red":
        return ("The score is beyond the expected-course boundary, but the risk model does not "
                "flag this client: the drivers show what offsets the current score.")
    return None


def assess(bundle, sessions: pd.DataFrame, covariates: pd.DataFrame | None = None,
           horizon: int = 4) -> list[Assessment]:
    """Assess every client in ``sessions`` (one `Assessment` each, in first-seen order)."""
    order = pd.unique(sessions["client_id"])
    safety = safety_by_client(sessions)
    primary = _primary(sessions, bundle.instruments)
    results: dict[str, Assessment] = {}
    for instrument, ids in primary.groupby(primary, sort=False):
        sub = sessions[sessions["client_id"].isin(ids.index)]
        results.update(_assess_instrument(bundle, instrument, sub, safety, covariates, horizon))
    for cid in order:
        if cid not in results:  # no outcome instrument at all (e.g. alliance ratings only)
            raise ValueError("every client needs at least one outcome-instrument score")
    return [results[c] for c in order]


def _assess_instrument(bundle, instrument, sessions, safety, covariates, horizon):
    inst = get(instrument)
    m = bundle.models.get(instrument)
    ff = point_in_time(sessions, instrument=instrument, at=None)
    X, keys = ff.X, ff.keys
    n = len(X)
    rows = X.to_dict("records")
    intake, latest = X["intake_score"].to_numpy(), X["latest_score"].to_numpy()
    session = X["session"].to_numpy()
    n_scores = X["n_scores"].to_numpy()
    notes = [[] for _ in range(n)]
    risk = [None] * n
    explanation = [None] * n
    courses = [[] for _ in range(n)]
    source = np.array(["none"] * n, dtype=object)
    pop = [Population(out_of_population=False) for _ in range(n)]

    if m is None:
        med = bnd = np.full(n, np.nan)
        for k in range(n):
            notes[k].append(f"No model covers {instrument}: risk, expected course and signal "
                            "are not available. Reliable change, alliance and safety checks "
                            "still apply.")
            pop[k] = Population(out_of_population=True, reasons=[
                f"no model was trained on {instrument}"])
    else:
        med, _, _, bnd = m.expected.expected(intake, session)
        source = np.where(np.isfinite(bnd), "expected_response", "none").astype(object)
        nav_course = None
        if m.navigator is not None:
            nav_course = m.navigator.expected_course(X)  # (n, max_session) arrays
            s_idx = np.clip(session.astype(int), 1, m.navigator.max_session) - 1
            r_idx = np.arange(n)
            nav = tuple(nav_course[key][r_idx, s_idx]
                        for key in ("median", "lower", "upper", "boundary"))
            has = np.isfinite(nav[3])
            med = np.where(has, nav[0], med)
            bnd = np.where(has, nav[3], bnd)
            source = np.where(has, "neighbours", source).astype(object)
        p_fail = m.failure.predict_proba(X)[:, 1]
        p_drop = m.dropout.predict_proba(X)[:, 1] if m.dropout is not None else None
        phi = m.failure.contributions(X)
        matrix = m.failure.transform_features(X)
        names = list(m.failure.feature_names_)
        for k in range(n):
            at = bool(p_fail[k] >= m.failure.threshold_)
            risk[k] = Risk(p_failure=float(p_fail[k]),
                           p_dropout=None if p_drop is None else float(p_drop[k]),
                           at_risk=at, threshold=float(m.failure.threshold_),
                           model=type(m.failure).__name__, model_version=bundle.version,
                           feature_version=bundle.feature_version)
            intercept, drivers = group_contributions(names, matrix[k], phi[k], instrument)
            explanation[k] = Explanation(intercept=intercept, logit=float(phi[k].sum()),
                                         drivers=[d.__dict__ for d in drivers])
            ahead = np.arange(int(session[k]) + 1, int(session[k]) + 1 + horizon)
            cm, cl, cu, cb = m.expected.expected(np.full(horizon, intake[k]), ahead)
            if nav_course is not None:  # the neighbours' course replaces it where it exists
                j = np.clip(ahead, 1, m.navigator.max_session) - 1
                nm, nl, nu, nb = (nav_course[key][k, j]
                                  for key in ("median", "lower", "upper", "boundary"))
                ok = np.isfinite(nb) & (ahead <= m.navigator.max_session)
                cm, cl, cu, cb = (np.where(ok, a, b) for a, b in
                                  ((nm, cm), (nl, cl), (nu, cu), (nb, cb)))
            courses[k] = [CoursePoint(session=int(s), expected=float(a), lower=float(b),
                                      upper=float(c), failure_boundary=float(d))
                          for s, a, b, c, d in zip(ahead, cm, cl, cu, cb, strict=True)]
            pop[k] = _population_check(m.population, intake[k], session[k], instrument,
                                       covariates, keys["client_id"].iloc[k])

    sig = signal_rule(latest, n_scores, med, bnd, session, inst)
    cats = classify(intake, latest, inst) if inst.rci is not None else [None] * n
    rcu = rc_units(intake, latest, inst) if inst.rci is not None else np.full(n, np.nan)
    out = {}
    for k in range(n):
        cid = str(keys["client_id"].iloc[k])
        saf = safety.get(cid, NOT_ASSESSED)
        colour = str(sig["colour"].iloc[k])
        r = risk[k]
        sugg = rule_suggestions(rows[k], inst, colour, None if r is None else r.p_failure,
                                None if r is None else r.p_dropout, saf.status,
                                None if r is None else r.at_risk)
        imp = None if not np.isfinite(rcu[k]) else float(rcu[k] * inst.rci)
        out[cid] = Assessment(
            client_id=cid, instrument=instrument, session=int(session[k]),
            n_scores=int(n_scores[k]), safety=saf, risk=r,
            signal=Signal(colour=colour, reason=str(sig["reason"].iloc[k]),
                          boundary_source=str(source[k]) if colour != "grey" else "none"),
            agreement=_agreement(colour, None if r is None else r.at_risk),
            course=courses[k],
            change=ChangeStatus(category=None if cats[k] is None else str(cats[k]),
                                improvement_points=imp,
                                rc_units=None if imp is None else float(rcu[k]),
                                intake_score=float(intake[k]), latest_score=float(latest[k])),
            alliance=_alliance(rows[k]),
            explanation=explanation[k],
            suggestions=[SuggestionOut(adaptation=s.adaptation, prompt=s.prompt,
                                       rationale=s.rationale, source=s.source) for s in sugg],
            population=pop[k], notes=notes[k])
    return out


def _population_check(pop, intake: float, session: float, instrument: str,
                      covariates: pd.DataFrame | None, client_id) -> Population:
    reasons = []
    lo, hi = pop.intake_range
    if intake < lo or intake > hi:
        reasons.append(f"intake {instrument} {intake:g} is outside the training range "
                       f"{lo:g}–{hi:g}")
    s_lo, s_hi = pop.sessions
    if session > s_hi:
        reasons.append(f"session {int(session)} is later than the sessions the model was "
                       f"trained on ({s_lo}–{s_hi}); the risk is extrapolated")
    if covariates is not None and client_id in covariates.index:
        for col, levels in pop.covariate_levels.items():
            if col in covariates.columns:
                v = covariates.at[client_id, col]
                if pd.notna(v) and str(v) not in levels:
                    reasons.append(f"{col} = {v} did not occur in the training data")
    return Population(out_of_population=bool(reasons), reasons=reasons)
