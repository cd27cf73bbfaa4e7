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
from typing_extensions import TypedDict

from features.change import classify, rc_units
from features.instruments import REGISTRY, Role, get
from features.pointintime import point_in_time
from models.explain import group_contributions
from models.signal import signal as signal_rule
from models.suggestions import rule_suggestions

SOURCE_LEARNED = "learned: similar clients (observational comparison)"


# ------------------------------------------------------------------------------------------
# Output schema (the service's response schema reuses these)
# ------------------------------------------------------------------------------------------
class SafetyItem(TypedDict):
    instrument: str
    item: int
    value: float
    session: int
    loinc: str | None


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
    """Expected score at a coming session, its 90% band and the failure boundary."""

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
    latest: float | None = Field(None, description="Latest alliance score on its own scale.")
    cutoff: float | None = None
    message: str


class DriverFeature(TypedDict):
    """A model input behind a driver: its name, its value and its log-odds contribution."""

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
_set = object.__setattr__


def _build(cls, **values):
    """A response object from values this module computed and typed itself: what pydantic's
    ``model_construct`` does, without its per-call field loop (about 15 us, paid ~20 times per
    client). Every field must be given; `tests/test_service.py` checks that the built objects
    validate against the schema."""
    obj = cls.__new__(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def safety_by_client(sessions: pd.DataFrame) -> dict[str, Safety]:
    """Risk-item status per client, independent of any model: the risk items answered at the
    latest session where any was answered (vectorised; one object per client)."""
    ids, sess, vals, codes, items = [], [], [], [], []
    inst_col = sessions["instrument"].to_numpy(dtype=object)
    for code, inst in REGISTRY.items():
        if not inst.risk_items:
            continue
        of_inst = inst_col == code
        if not of_inst.any():
            continue
        for k in inst.risk_items:
            col = f"item_{k}"
            if col not in sessions.columns:
                continue
            v = sessions[col].to_numpy(dtype=float, na_value=np.nan)
            m = of_inst & np.isfinite(v)
            if m.any():
                ids.append(sessions["client_id"].to_numpy(dtype=object)[m])
                sess.append(sessions["session"].to_numpy(dtype=np.int64)[m])
                vals.append(v[m])
                codes.append(np.full(int(m.sum()), code, dtype=object))
                items.append(np.full(int(m.sum()), k))
    if not ids:
        return {}
    ids, sess, vals = np.concatenate(ids), np.concatenate(sess), np.concatenate(vals)
    codes, items = np.concatenate(codes), np.concatenate(items)
    client, uniq = pd.factorize(ids)
    last = np.full(len(uniq), -1, dtype=np.int64)
    np.maximum.at(last, client, sess)
    at_last = sess == last[client]
    flagged = at_last & (vals > 0)
    out: dict[str, Safety] = {}
    flagged_rows: dict[int, list[int]] = {}
    for i in np.flatnonzero(flagged):
        flagged_rows.setdefault(int(client[i]), []).append(int(i))
    for c, cid in enumerate(uniq):
        rows = flagged_rows.get(c)
        if rows:
            lst = [SafetyItem(
                instrument=str(codes[i]), item=int(items[i]), value=float(vals[i]),
                session=int(sess[i]), loinc=REGISTRY[codes[i]].loinc_items.get(int(items[i])))
                for i in rows]
            names = ", ".join(f"{i['instrument']} item {i['item']} = {i['value']:g}"
                              for i in lst)
            out[str(cid)] = _build(Safety, status="flag", items=lst, message=(
                f"Risk item answered above zero ({names}) at session {lst[0]['session']}: "
                "consider reviewing risk with the client today, following your service's "
                "procedure. This flag is raised whatever any model says."))
        else:
            out[str(cid)] = _build(Safety, status="clear", items=[], message=(
                f"Risk items answered zero at session {int(last[c])}."))
    return out


NOT_ASSESSED = Safety(status="not_assessed", message=(
    "No risk item (e.g. PHQ-9 item 9) was given: risk has not been assessed by this service."))


def _primary(sessions: pd.DataFrame, covered: list[str]) -> pd.Series:
    """Per client: the first covered outcome instrument it has, else its first outcome one."""
    order = covered + [c for c, i in REGISTRY.items() if i.role is Role.OUTCOME
                       and c not in covered]
    rank = {c: k for k, c in enumerate(order)}
    client, ids = pd.factorize(sessions["client_id"])
    icode, iuniq = pd.factorize(sessions["instrument"])
    r = np.array([rank.get(str(u), len(order)) for u in iuniq] + [len(order)])[icode]
    best = np.full(len(ids), len(order))
    np.minimum.at(best, client, r)
    has = best < len(order)
    return pd.Series(np.array(order + [""], dtype=object)[best[has]], index=ids[has])


def _alliance(row: dict, raw: tuple[str, float] | None = None) -> AllianceStatus:
    latest = row.get("alliance_latest", np.nan)
    if not np.isfinite(latest) or raw is None:
        return _build(AllianceStatus, status="not_assessed", latest=None, cutoff=None,
                                              message="No alliance rating was given.")
    below = row.get("alliance_below_cutoff") == 1
    code, score = raw
    drop = REGISTRY[code].dropped(row.get("alliance_drop", np.nan))
    status = {(True, True): "below_cutoff_and_drop", (True, False): "below_cutoff",
              (False, True): "drop", (False, False): "ok"}[(below, drop)]
    cutoff = REGISTRY[code].cutoff
    msg = {"ok": "The alliance rating is above its cut-off and did not drop.",
           "below_cutoff": "The latest alliance rating is below the cut-off that signals a "
                           "possible alliance problem.",
           "drop": "The alliance rating dropped since the previous session: worth raising "
                   "with the client.",
           "below_cutoff_and_drop": "The alliance rating is below its cut-off and dropped since "
                                    "the previous session: worth raising with the client."}[status]
    return _build(AllianceStatus,
        status=status, latest=score, cutoff=cutoff,
        message=f"{code} {score:g}" + (f" (cut-off {cutoff:g})" if cutoff else "") + ": " + msg)


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
    for instrument in pd.unique(primary.to_numpy()):
        members = primary.index[primary.to_numpy() == instrument]
        sub = sessions if len(members) == len(primary) else sessions[
            sessions["client_id"].isin(members)]
        results.update(_assess_instrument(bundle, instrument, sub, safety, covariates, horizon))
    for cid in order:
        if cid not in results:  # no outcome instrument at all (e.g. alliance ratings only)
            raise ValueError("every client needs at least one outcome-instrument score")
    return [results[c] for c in order]


def _assess_instrument(bundle, instrument, sessions, safety, covariates, horizon):
    inst = get(instrument)
    m = bundle.models.get(instrument)
    ff = point_in_time(sessions, instrument=instrument, at=None)
    X = ff.X
    ids = ff.keys["client_id"].to_numpy(dtype=object)
    names_x = list(X.columns)
    values = X.to_numpy(dtype=float)
    n = len(X)
    col = {c: values[:, j] for j, c in enumerate(names_x)}
    intake, latest = col["intake_score"], col["latest_score"]
    session, n_scores = col["session"], col["n_scores"]
    risk = [None] * n
    explanation = [None] * n
    courses = [[] for _ in range(n)]
    source = np.full(n, "none", dtype=object)
    notes = [[] for _ in range(n)]
    pop = [None] * n

    if m is None:
        med = bnd = np.full(n, np.nan)
        note = (f"No model covers {instrument}: risk, expected course and signal are not "
                "available. Reliable change, alliance and safety checks still apply.")
        for k in range(n):
            notes[k].append(note)
            pop[k] = _build(Population, out_of_population=True, reasons=[
                f"no model was trained on {instrument}"])
    else:
        med, _, _, bnd = m.expected.expected(intake, session)
        source[np.isfinite(bnd)] = "expected_response"
        # the expected course for the next sessions, all clients at once
        ahead = session[:, None] + np.arange(1, horizon + 1)[None, :]
        cm, cl, cu, cb = m.expected.expected(np.repeat(intake[:, None], horizon, axis=1),
                                             ahead)
        if m.navigator is not None:  # the neighbours' course replaces it where it exists
            nav = _intake_course(m.navigator, sessions, instrument, ids)
            S = m.navigator.max_session
            r = np.arange(n)
            s_idx = np.clip(session.astype(int), 1, S) - 1
            has = np.isfinite(nav["boundary"][r, s_idx])
            med = np.where(has, nav["median"][r, s_idx], med)
            bnd = np.where(has, nav["boundary"][r, s_idx], bnd)
            source[has] = "neighbours"
            j = np.clip(ahead.astype(int), 1, S) - 1
            ok = np.isfinite(nav["boundary"][r[:, None], j]) & (ahead <= S)
            cm, cl, cu, cb = (np.where(ok, nav[key][r[:, None], j], old) for key, old in
                              (("median", cm), ("lower", cl), ("upper", cu), ("boundary", cb)))
        M = m.failure.transform_features(X)
        phi = m.failure.contributions_from_matrix(M)
        logit = phi.sum(axis=1)
        p_fail = 1.0 / (1.0 + np.exp(-logit))
        p_drop = m.dropout.predict_proba(X)[:, 1] if m.dropout is not None else None
        names = list(m.failure.feature_names_)
        thr = float(m.failure.threshold_)
        model_name = type(m.failure).__name__
        for k in range(n):
            risk[k] = _build(Risk,
                p_failure=float(p_fail[k]),
                p_dropout=None if p_drop is None else float(p_drop[k]),
                at_risk=bool(p_fail[k] >= thr), threshold=thr, model=model_name,
                model_version=bundle.version, feature_version=bundle.feature_version)
            intercept, drivers = group_contributions(names, M[k], phi[k], inst)
            explanation[k] = _build(Explanation,
                target="failed", intercept=intercept, logit=float(logit[k]),
                drivers=[_build(Driver,
                    concept=d.concept, direction=d.direction, log_odds=d.log_odds,
                    percentage_points=d.percentage_points, sentence=d.sentence,
                    features=d.features)
                    for d in drivers])
            courses[k] = [_build(CoursePoint,
                session=int(ahead[k, h]), expected=float(cm[k, h]), lower=float(cl[k, h]),
                upper=float(cu[k, h]), failure_boundary=float(cb[k, h]))
                for h in range(horizon)]
            pop[k] = _population_check(m.population, intake[k], session[k], instrument,
                                       covariates, ids[k], notes[k])

    sig = signal_rule(latest, n_scores, med, bnd, session, inst)
    colours, reasons = sig["colour"].to_numpy(), sig["reason"].to_numpy()
    has_rci = inst.rci is not None
    cats = classify(intake, latest, inst) if has_rci else [None] * n
    rcu = rc_units(intake, latest, inst) if has_rci else np.full(n, np.nan)
    alliance_raw = _latest_alliance(sessions)
    learned = _learned(m, X, colours, risk)
    out = {}
    for k in range(n):
        cid = str(ids[k])
        saf = safety.get(cid, NOT_ASSESSED)
        colour = str(colours[k])
        r = risk[k]
        row = dict(zip(names_x, values[k], strict=True))
        alliance = _alliance(row, alliance_raw.get(cid))
        sugg = rule_suggestions(row, inst, colour, None if r is None else r.p_failure,
                                None if r is None else r.p_dropout, saf.status,
                                None if r is None else r.at_risk,
                                alliance_drop=alliance.status in {"drop",
                                                                  "below_cutoff_and_drop"})
        imp = None if not np.isfinite(rcu[k]) else float(rcu[k] * inst.rci)
        out[cid] = _build(Assessment,
            client_id=cid, instrument=instrument, session=int(session[k]),
            n_scores=int(n_scores[k]), safety=saf, risk=r,
            signal=_build(Signal,
                colour=colour, reason=str(reasons[k]),
                boundary_source=str(source[k]) if colour != "grey" else "none"),
            agreement=_agreement(colour, None if r is None else r.at_risk),
            course=courses[k],
            change=_build(ChangeStatus,
                category=None if cats[k] is None else str(cats[k]), improvement_points=imp,
                rc_units=None if imp is None else float(rcu[k]),
                intake_score=float(intake[k]), latest_score=float(latest[k])),
            alliance=alliance,
            explanation=explanation[k],
            suggestions=_with_learned(sugg, learned.get(k), notes[k]),
            population=pop[k], notes=notes[k])
    return out


def _learned(m, X: pd.DataFrame, colours: np.ndarray, risk: list) -> dict:
    """Learned suggestions for the clients who are not on track (red/yellow or at risk), in
    ONE batched call to the recommender; {} when the bundle has none."""
    rec = getattr(m, "recommender", None) if m is not None else None
    if rec is None:
        return {}
    at_risk = np.array([r is not None and bool(r.at_risk) for r in risk], dtype=bool)
    idx = np.flatnonzero(np.isin(colours.astype(str), ("red", "yellow")) | at_risk)
    if not len(idx):
        return {}
    return dict(zip(idx.tolist(), rec.recommend(X.iloc[idx]), strict=True))


def _with_learned(sugg: list, rec, notes: list[str]) -> list[SuggestionOut]:
    """Crisis prompts always first, then the learned suggestions (observational comparison),
    then the rule-based ones; when the recommender must fall back, the rules with its reason."""
    fallback = rec.fallback_reason if rec is not None and not rec.suggestions else None
    out = [SuggestionOut.model_construct(adaptation=g.adaptation, prompt=g.prompt,
                                         rationale=g.rationale, source=g.source)
           for g in sugg if g.adaptation == "safety"]
    learned: dict[str, SuggestionOut] = {}
    if rec is not None:
        for s in rec.suggestions:
            learned[s.adaptation] = SuggestionOut.model_construct(
                adaptation=s.adaptation, prompt=s.prompt, rationale=s.rationale,
                source=SOURCE_LEARNED)
        out += list(learned.values())
    if fallback:
        notes.append(f"Learned suggestions: {fallback}.")
    rules = []
    for g in sugg:
        if g.adaptation == "safety":
            continue
        if g.adaptation in learned:  # one entry per adaptation: the rules' reason joins it
            item = learned[g.adaptation]
            item.rationale += f" The clinical-support rules point here too: {g.rationale}"
            continue
        rules.append(g)
    for i, g in enumerate(rules):
        why = g.rationale + (f" (Learned suggestions: {fallback}.)" if fallback and i == 0
                             else "")
        out.append(SuggestionOut.model_construct(adaptation=g.adaptation, prompt=g.prompt,
                                                 rationale=why, source=g.source))
    return out

def _intake_course(navigator, sessions: pd.DataFrame, instrument: str, ids: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """The neighbours' expected course for each client, matched on what was known at intake
    (Lutz et al. 2005: similar clients at the START of treatment), so that a client who has
    not improved is compared with clients who started like them, not with clients who also
    did not improve. NaN rows for clients without an intake score."""
    at1 = point_in_time(sessions, instrument=instrument, at=(1,))
    course = navigator.expected_course(at1.X)
    pos = pd.Index(at1.keys["client_id"]).get_indexer(pd.Index(ids))
    out = {}
    for key, val in course.items():
        full = np.full((len(ids), val.shape[1]), np.nan)
        full[pos >= 0] = val[pos[pos >= 0]]
        out[key] = full
    return out


def _latest_alliance(sessions: pd.DataFrame) -> dict[str, tuple[str, float]]:
    """Per client: (alliance instrument, its latest raw score), for display."""
    codes = [c for c, i in REGISTRY.items() if i.role is Role.ALLIANCE]
    inst = sessions["instrument"].to_numpy(dtype=object)
    m = np.isin(inst, codes)
    if not m.any():
        return {}
    ids = sessions["client_id"].to_numpy(dtype=object)[m]
    sess = sessions["session"].to_numpy(dtype=np.int64)[m]
    score = sessions["score"].to_numpy(dtype=float)[m]
    order = np.lexsort((sess, ids.astype(str)))
    ids, inst_m, score = ids[order], inst[m][order], score[order]
    last = np.r_[ids[1:] != ids[:-1], True]
    return {str(c): (str(i), float(v)) for c, i, v in zip(ids[last], inst_m[last],
                                                          score[last], strict=True)}


def _population_check(pop, intake: float, session: float, instrument: str,
                      covariates: pd.DataFrame | None, client_id,
                      notes: list[str] | None = None) -> Population:
    """Outside the training population: instrument (handled by the caller), intake severity,
    covariate levels. A session later than the training rows is a note, not a population
    problem: it is where most ongoing clients are, and the course so far is in range."""
    reasons = []
    lo, hi = pop.intake_range
    if intake < lo or intake > hi:
        reasons.append(f"intake {instrument} {intake:g} is outside the training range "
                       f"{lo:g}–{hi:g}")
    s_lo, s_hi = pop.sessions
    if session > s_hi and notes is not None:
        notes.append(f"The risk model was trained on predictions made at sessions {s_lo}–{s_hi};"
                     f" at session {int(session)} its risk is an extrapolation. The expected "
                     "course and the signal cover the later sessions.")
    if covariates is not None and client_id in covariates.index:
        for col, levels in pop.covariate_levels.items():
            if col in covariates.columns:
                v = covariates.at[client_id, col]
                if pd.notna(v) and str(v) not in levels:
                    reasons.append(f"{col} = {v} did not occur in the training data")
    return Population(out_of_population=bool(reasons), reasons=reasons)
