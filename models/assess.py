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
from features.instruments import ADAPTATIONS, REGISTRY, Role, get
from features.pointintime import SessionColumns, point_in_time
from features.targets import eligible_at_intake
from models.explain import change_words, group_contributions
from models.flag import STATES, FlagPolicy, History, trigger_names, trigger_words
from models.signal import colours as signal_colours
from models.signal import signal_arrays
from models.suggestions import rule_suggestions

#: No fitted policy (no model for the instrument): only a reliable deterioration opens a flag.
RULES_ONLY = FlagPolicy(entry=float("inf"), exit=float("-inf"))

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
    status: Literal["flag", "not_endorsed", "not_assessed"] = Field(
        description="flag: a risk item was answered above zero at the latest session with "
        "risk-item answers; not_endorsed: every risk item answered at that session was zero "
        "(never a promise of safety: see last_endorsed and the message); not_assessed: no risk "
        "item was ever answered. Model-independent.")
    assessed_session: int | None = Field(None, description="Latest session with a risk-item "
                                         "answer.")
    latest_session: int | None = Field(None, description="Latest session in the record; when "
                                       "it is later than assessed_session, it had no "
                                       "risk-item answers.")
    items: list[SafetyItem] = Field([], description="Answers above zero at assessed_session.")
    last_endorsed: SafetyItem | None = Field(None, description="The latest answer above zero "
                                             "at any session (the highest at that session).")
    message: str


class Risk(BaseModel):
    p_failure: float = Field(description="Calibrated probability of not reliably improving by "
                             "the end of care (see definition).")
    p_dropout: float | None = Field(None, description="Probability of ending care early.")
    definition: str = Field(description="What p_failure predicts, in words.")
    model: str
    model_version: str
    feature_version: str


class Flag(BaseModel):
    """The not-on-track flag (`models.flag`): a policy over the client's history, not a
    per-session threshold. Replaces ``risk.at_risk``."""

    state: Literal["new", "continuing", "cleared", "none"] = Field(
        description="new: opened at this session; continuing: open since an earlier session; "
        "cleared: was open and has cleared; none: never opened.")
    flagged: bool = Field(description="state is new or continuing.")
    reason: str = Field(description="Why the flag is in this state, in words.")
    opened_by: list[Literal["risk", "red_twice", "reliable_deterioration"]] = Field(
        [], description="What opened the current (or last) flag.")
    opened_session: int | None = None
    cleared_session: int | None = None
    eligible: bool = Field(description="The model's outcome is defined for this client (intake "
                           "in the clinical range); otherwise only a reliable deterioration "
                           "opens a flag.")
    entry_threshold: float | None = Field(None, description="Risk at which a flag opens.")
    exit_threshold: float | None = Field(None, description="Risk below which it may clear.")
    exit_sessions: int | None = Field(None, description="Calm sessions needed to clear.")
    budget: float | None = Field(None, description="Share of eventual reliable improvers the "
                                 "thresholds allow to be flagged by session 3.")
    context: str = Field(description="What a flag means at these thresholds (validation "
                         "figures: share of improvers and deteriorators flagged, PPV, AUROC).")


class Signal(BaseModel):
    colour: Literal["grey", "white", "green", "yellow", "red"]
    reason: str
    boundary_source: Literal["neighbours", "expected_response", "none"]


class CoursePoint(BaseModel):
    """Expected score at a session, its 90% bands and the failure boundary."""

    session: int
    expected: float
    lower: float = Field(description="Lower end of the empirical 90% band (the similar "
                         "clients' or the expected-response curve's 5th percentile).")
    upper: float = Field(description="Upper end of the empirical 90% band (95th percentile).")
    failure_boundary: float
    band_lower: float | None = Field(None, description=(
        "Lower end of the conformal 90% band: the empirical band widened (or narrowed) by a "
        "per-session margin in band widths, calibrated on held-out scores (training clients, "
        "each kept out of its own neighbour reference) so that about 90% of new clients' "
        "scores at that session fall inside it; coverage measured on new simulated clients in "
        "docs/training.md. Null when the model has no calibrated band."))
    band_upper: float | None = Field(None, description="Upper end of the conformal 90% band "
                                     "(see band_lower).")


class ChangeStatus(BaseModel):
    category: str | None = Field(description="Jacobson-Truax category, intake vs latest.")
    summary: str = Field(description="The change in words, e.g. 'worse by 5, 1 point short of "
                         "a reliable deterioration'.")
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
    risk: Risk | None = Field(description="None when no model covers the instrument or the "
                              "client started below the clinical cut-off (outcome undefined).")
    flag: Flag
    signal: Signal
    agreement: str | None = Field(None, description="Set when the latest signal and the flag "
                                  "disagree.")
    course: list[CoursePoint] = []
    course_so_far: list[CoursePoint] = Field(
        [], description="The expected course at each earlier score after the first, the "
        "latest included (what was expected there; it depends on what was known at intake "
        "only, so it is also what was shown at the time): for charts of the course so far.")
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


def _item(code, k, v, session) -> SafetyItem:
    return SafetyItem(instrument=str(code), item=int(k), value=float(v), session=int(session),
                      loinc=REGISTRY[code].loinc_items.get(int(k)))


def _named(items: list[SafetyItem]) -> str:
    return ", ".join(f"{i['instrument']} item {i['item']} = {i['value']:g}" for i in items)


def safety_by_client(sessions: pd.DataFrame) -> dict[str, Safety]:
    """Risk-item status per client from the whole record, independent of any model: the
    answers at the latest session with any risk-item answer, the latest answer above zero at
    any session, and whether the latest session had item answers at all."""
    sessions = SessionColumns.of(sessions)
    ids, sess, vals, codes, items = [], [], [], [], []
    inst_col = sessions["instrument"]
    id_col = sessions["client_id"]
    ses_col = sessions["session"].astype(np.int64)
    for code, inst in REGISTRY.items():
        if not inst.risk_items:
            continue
        of_inst = inst_col == code
        if not of_inst.any():
            continue
        for k in inst.risk_items:
            col = f"item_{k}"
            if col not in sessions:
                continue
            v = sessions[col]
            m = of_inst & np.isfinite(v)
            if m.any():
                ids.append(id_col[m])
                sess.append(ses_col[m])
                vals.append(v[m])
                codes.append(np.full(int(m.sum()), code, dtype=object))
                items.append(np.full(int(m.sum()), k))
    if not ids:
        return {}
    ids, sess, vals = np.concatenate(ids), np.concatenate(sess), np.concatenate(vals)
    codes, items = np.concatenate(codes), np.concatenate(items)
    client, uniq = pd.factorize(ids)
    all_codes, all_ids = pd.factorize(id_col)
    latest_all = np.full(len(all_ids), -1, dtype=np.int64)
    np.maximum.at(latest_all, all_codes, ses_col)
    latest = latest_all[pd.Index(all_ids).get_indexer(uniq)]
    last = np.full(len(uniq), -1, dtype=np.int64)
    np.maximum.at(last, client, sess)
    endorsed = vals > 0
    last_pos = np.full(len(uniq), -1, dtype=np.int64)
    np.maximum.at(last_pos, client[endorsed], sess[endorsed])
    at_last = sess == last[client]
    rows_of: dict[int, list[int]] = {}
    for i in np.flatnonzero(at_last | (endorsed & (sess == last_pos[client]))):
        rows_of.setdefault(int(client[i]), []).append(int(i))
    out: dict[str, Safety] = {}
    for c, cid in enumerate(uniq):
        rows = rows_of.get(c, [])
        a, lat = int(last[c]), int(latest[c])
        now = [i for i in rows if sess[i] == a]
        flagged = [_item(codes[i], items[i], vals[i], sess[i]) for i in now if vals[i] > 0]
        before = [i for i in rows if sess[i] == last_pos[c] and vals[i] > 0]
        top = max(before, key=lambda i: vals[i]) if before else None
        last_endorsed = None if top is None else _item(codes[top], items[top], vals[top],
                                                        sess[top])
        gap = (f" Session {lat} had no risk-item answers, so risk has not been re-assessed "
               "since." if lat > a else "")
        if flagged:
            msg = (f"Risk item answered above zero at session {a} ({_named(flagged)}): consider "
                   "reviewing risk with the client today, following your service's procedure. "
                   "This flag is raised whatever any model says." + gap)
            out[str(cid)] = _build(Safety, status="flag", assessed_session=a,
                                   latest_session=lat, items=flagged,
                                   last_endorsed=last_endorsed, message=msg)
        else:
            zero = [_item(codes[i], items[i], vals[i], sess[i]) for i in now]
            msg = f"Risk items not endorsed at session {a} ({_named(zero)})."
            if last_endorsed is not None:
                msg += (f" Last endorsed at session {last_endorsed['session']} "
                        f"({_named([last_endorsed])}): keep it in mind when reviewing risk.")
            out[str(cid)] = _build(Safety, status="not_endorsed", assessed_session=a,
                                   latest_session=lat, items=[], last_endorsed=last_endorsed,
                                   message=msg + gap)
    return out


NOT_ASSESSED = Safety(status="not_assessed", message=(
    "No risk item (e.g. PHQ-9 item 9) was answered: risk has not been assessed by this service."))


def _safety_phrase(saf: Safety) -> str | None:
    """The safety clause that overrides reassurance and ending wording, or None."""
    if saf.status == "flag":
        return f"a risk item was answered above zero at session {saf.assessed_session}"
    if saf.last_endorsed is not None:
        return f"a risk item was endorsed at session {saf.last_endorsed['session']}"
    return None


def _primary(sessions: pd.DataFrame, covered: list[str]) -> pd.Series:
    """Per client: the first covered outcome instrument it has, else its first outcome one."""
    order = covered + [c for c, i in REGISTRY.items() if i.role is Role.OUTCOME
                       and c not in covered]
    rank = {c: k for k, c in enumerate(order)}
    sessions = SessionColumns.of(sessions)
    client, ids = pd.factorize(sessions["client_id"])
    icode, iuniq = pd.factorize(sessions["instrument"])
    r = np.array([rank.get(str(u), len(order)) for u in iuniq] + [len(order)])[icode]
    best = np.full(len(ids), len(order))
    np.minimum.at(best, client, r)
    has = best < len(order)
    return pd.Series(np.array(order + [""], dtype=object)[best[has]], index=ids[has])


def _alliance(raw: tuple[str, float, float | None] | None) -> AllianceStatus:
    """The latest alliance rating in the record (whatever the assessment's timing: this is
    what to raise with the client next), its cut-off and the drop since the one before."""
    if raw is None:
        return _build(AllianceStatus, status="not_assessed", latest=None, cutoff=None,
                      message="No alliance rating was given.")
    code, score, prev = raw
    inst = REGISTRY[code]
    below = inst.cutoff is not None and score < inst.cutoff
    drop = prev is not None and inst.dropped((prev - score) / (inst.score_max - inst.score_min)
                                             if inst.higher_is_better
                                             else (score - prev) / (inst.score_max
                                                                    - inst.score_min))
    status = {(True, True): "below_cutoff_and_drop", (True, False): "below_cutoff",
              (False, True): "drop", (False, False): "ok"}[(below, drop)]
    cutoff = inst.cutoff
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


def _agreement(colour: str, flag: Flag) -> str | None:
    if colour == "grey" or not flag.eligible:
        return None
    if flag.flagged and colour in {"green", "white"}:
        return ("The latest score is on the expected course, but the client is flagged: "
                f"{flag.reason}")
    if not flag.flagged and colour == "red":
        return ("The latest score is beyond the not-on-track boundary, but the flag is not "
                "raised: one red score is not enough (two in a row are), and the risk is below "
                "the entry level.")
    return None


def assess(bundle, sessions: pd.DataFrame, covariates: pd.DataFrame | None = None,
           horizon: int = 4, budget: float | None = None,
           alliance_after: bool = False) -> list[Assessment]:
    """Assess every client in ``sessions`` (one `Assessment` each, in first-seen order).

    ``budget``: a clinic's own flag budget (share of eventual improvers flagged by session 3;
    None = the bundle's). ``alliance_after``: the assessment is made after the latest
    session's alliance rating, so the model may use it (by default it does not: a rating is
    given at the end of its session)."""
    sessions = SessionColumns.of(sessions)  # every column converted once
    order = pd.unique(sessions["client_id"])
    safety = safety_by_client(sessions)
    primary = _primary(sessions, bundle.instruments)
    results: dict[str, Assessment] = {}
    for instrument in pd.unique(primary.to_numpy()):
        members = primary.index[primary.to_numpy() == instrument]
        sub = sessions if len(members) == len(primary) else sessions.take(
            sessions.isin("client_id", members))
        results.update(_assess_instrument(bundle, instrument, sub, safety, covariates, horizon,
                                          budget, alliance_after))
    if any(cid not in results for cid in order):  # alliance ratings only, say
        from features.contract import InvalidDataError, ValidationReport, check_assessable

        raise InvalidDataError(ValidationReport(check_assessable(pd.DataFrame(sessions))))
    return [results[c] for c in order]


def _first_scores(sessions: pd.DataFrame, instrument: str, ids: np.ndarray) -> np.ndarray:
    """First score on ``instrument`` per client of ``ids`` (NaN when none)."""
    sessions = SessionColumns.of(sessions)
    rows = np.flatnonzero(sessions["instrument"] == instrument)
    out = np.full(len(ids), np.nan)
    if not len(rows):
        return out
    rows = rows[np.argsort(sessions["session"][rows], kind="stable")]
    first: dict = {}
    for cid, score in zip(sessions["client_id"][rows].tolist(),
                          sessions["score"][rows].tolist(), strict=True):
        first.setdefault(cid, score)
    for k, cid in enumerate(np.asarray(ids, dtype=object).tolist()):
        out[k] = first.get(cid, np.nan)
    return out


def _others_in_range(sessions: pd.DataFrame, instrument: str, ids: np.ndarray,
                     upto: np.ndarray, which: np.ndarray) -> list[str | None]:
    """Per client: the other outcome measures in their clinical range at the latest session
    at or before ``upto`` that had one (e.g. "GAD-7 15"), for the clients in ``which``."""
    out: list[str | None] = [None] * len(ids)
    if not which.any():
        return out
    codes = [c for c, i in REGISTRY.items() if i.role is Role.OUTCOME and c != instrument
             and i.cutoff is not None]
    sessions = SessionColumns.of(sessions)
    rows = np.flatnonzero(sessions.isin("instrument", codes)
                          & sessions.isin("client_id", ids[which].tolist()))
    limit = dict(zip(ids.tolist(), upto.tolist(), strict=True))
    pos = {c: k for k, c in enumerate(ids.tolist())}
    by: dict[str, list[tuple[int, str, float]]] = {}
    for cid, ses, code, score in zip(sessions["client_id"][rows].tolist(),
                                     sessions["session"][rows].tolist(),
                                     sessions["instrument"][rows].tolist(),
                                     sessions["score"][rows].tolist(), strict=True):
        if ses <= limit[cid]:
            by.setdefault(cid, []).append((int(ses), str(code), float(score)))
    for cid, rows in by.items():
        top = max(r[0] for r in rows)
        hits = [f"{c} {v:g}" for t, c, v in rows if t == top and REGISTRY[c].in_clinical_range(v)]
        if hits:
            out[pos[cid]] = ", ".join(hits)
    return out


def _assess_instrument(bundle, instrument, sessions, safety, covariates, horizon,
                       budget=None, alliance_after=False):
    """Every client of one primary instrument: the whole history as of each assessed session
    (what the flag policy replays), then the latest session in full."""
    inst = get(instrument)
    m = bundle.models.get(instrument)
    hist, code, _, last, ids = _rows_by_client(sessions, instrument)
    nh = len(code)
    Xh = hist.X
    if alliance_after and nh:  # the latest rows with the latest session's alliance rating
        now = point_in_time(sessions, instrument=instrument, at=None, alliance_lag=False)
        Xh = Xh.copy()
        Xh.iloc[last] = now.X.to_numpy()
    H = Xh.to_numpy(dtype=float)
    names_x = list(Xh.columns)
    colh = {c: H[:, j] for j, c in enumerate(names_x)}
    n = len(ids)
    values = H[last]
    col = {c: v[last] for c, v in colh.items()}
    intake, latest = col["intake_score"], col["latest_score"]
    session, n_scores = col["session"], col["n_scores"]

    target = getattr(m, "target", "failed") if m is not None else "failed"
    eligible = _eligible(sessions, inst, target, intake, ids)
    risk = [None] * n
    explanation = [None] * n
    courses = [[] for _ in range(n)]
    so_far = [[] for _ in range(n)]
    source = np.full(n, "none", dtype=object)
    notes = [[] for _ in range(n)]
    pop = [None] * n
    p_hist = np.full(nh, np.nan)
    med_h = bnd_h = np.full(nh, np.nan)
    policy = RULES_ONLY

    if m is None:
        note = (f"No model covers {instrument}: risk, expected course and signal are not "
                "available. Reliable change, alliance and safety checks still apply.")
        for k in range(n):
            notes[k].append(note)
            pop[k] = _build(Population, out_of_population=True, reasons=[
                f"no model was trained on {instrument}"])
    else:
        policy = getattr(m, "flag_policy", None) or RULES_ONLY
        if budget is not None:
            policy = policy.for_budget(budget)
        med_h, bnd_h, src_h, nav = _expected_rows(m, _session_one(hist), ids, code,
                                                  colh["intake_score"], colh["session"])
        ahead = session[:, None] + np.arange(1, horizon + 1)[None, :]
        cm, cl, cu, cb = _course_at(m, nav, np.arange(n), intake, ahead)
        # the course so far: at each earlier score after the first (what was expected there)
        past = _after_first(code)
        pm, pl, pu, pb = _course_at(m, nav, code[past], colh["intake_score"][past],
                                    colh["session"][past, None])
        band = getattr(m, "band", None)
        cbl, cbu = _band_at(band, inst, ahead, cl, cu)
        pbl, pbu = _band_at(band, inst, colh["session"][past, None], pl, pu)
        for i, row in enumerate(past.tolist()):
            if np.isfinite(pm[i, 0]) and np.isfinite(pb[i, 0]):
                so_far[code[row]].append(_build(CoursePoint,
                    session=int(colh["session"][row]), expected=float(pm[i, 0]),
                    lower=float(pl[i, 0]), upper=float(pu[i, 0]),
                    failure_boundary=float(pb[i, 0]), band_lower=pbl[i][0],
                    band_upper=pbu[i][0]))
        source = src_h[last]
        Mh = m.failure.transform_features(Xh)
        M = Mh[last]
        phi = m.failure.contributions_from_matrix(M)
        logit = phi.sum(axis=1)
        p_fail = 1.0 / (1.0 + np.exp(-logit))
        p_hist = 1.0 / (1.0 + np.exp(-m.failure.logit_from_matrix(Mh)))
        p_hist[last] = p_fail  # the same value the explanation adds up to
        p_drop = m.dropout.predict_proba(Xh.iloc[last])[:, 1] if m.dropout is not None else None
        names = list(m.failure.feature_names_)
        model_name = type(m.failure).__name__
        definition = _definition(inst, target)
        for k in range(n):
            courses[k] = [_build(CoursePoint,
                session=int(ahead[k, h]), expected=float(cm[k, h]), lower=float(cl[k, h]),
                upper=float(cu[k, h]), failure_boundary=float(cb[k, h]),
                band_lower=cbl[k][h], band_upper=cbu[k][h])
                for h in range(horizon)]
            if not eligible[k]:
                continue
            risk[k] = _build(Risk,
                p_failure=float(p_fail[k]),
                p_dropout=None if p_drop is None else float(p_drop[k]),
                definition=definition, model=model_name,
                model_version=bundle.version, feature_version=bundle.feature_version)
            intercept, drivers = group_contributions(names, M[k], phi[k], inst)
            explanation[k] = _build(Explanation,
                target=target, intercept=intercept, logit=float(logit[k]),
                drivers=[_build(Driver,
                    concept=d.concept, direction=d.direction, log_odds=d.log_odds,
                    percentage_points=d.percentage_points, sentence=d.sentence,
                    features=d.features)
                    for d in drivers])
            pop[k] = _population_check(m.population, intake[k], session[k], instrument,
                                       covariates, ids[k], notes[k])
        for k in np.flatnonzero(~eligible):
            pop[k] = _build(Population, out_of_population=False, reasons=[])

    # ---- the flag: the policy over every assessed session --------------------------------
    rep = policy.replay(_history(colh, code, med_h, bnd_h, p_hist, eligible, inst))

    # ---- the latest session in words -----------------------------------------------------
    saf_list = [safety.get(str(c), NOT_ASSESSED) for c in ids]
    safety_words = [_safety_phrase(x) for x in saf_list]
    others = _others_in_range(sessions, instrument, ids, session,
                              col["other_clinical_latest"] == 1)
    colours, reasons = signal_arrays(latest, n_scores, med_h[last], bnd_h[last], session,
                                     inst, others=others, safety=safety_words)
    has_rci = inst.rci is not None
    cats = classify(intake, latest, inst) if has_rci else [None] * n
    rcu = rc_units(intake, latest, inst) if has_rci else np.full(n, np.nan)
    alliance_raw = _latest_alliance(sessions)
    flags = [_flag(policy, rep, int(last[k]), bool(eligible[k]), inst, intake[k],
                   n_scores[k], risk[k], m is not None) for k in range(n)]
    alliances, rules = [], []
    for k in range(n):
        r, alliance = risk[k], _alliance(alliance_raw.get(str(ids[k])))
        alliances.append(alliance)
        rules.append(rule_suggestions(
            dict(zip(names_x, values[k], strict=True)), inst, str(colours[k]),
            None if r is None else r.p_failure, None if r is None else r.p_dropout,
            saf_list[k].status, flags[k].flagged,
            alliance_drop=alliance.status in {"drop", "below_cutoff_and_drop"},
            alliance_below=alliance.status in {"below_cutoff", "below_cutoff_and_drop"}))
    learned = _learned(m, Xh.iloc[last], colours, flags, eligible, rules)
    out = {}
    for k in range(n):
        cid = str(ids[k])
        saf = saf_list[k]
        colour = str(colours[k])
        r = risk[k]
        fl = flags[k]
        alliance, sugg = alliances[k], rules[k]
        if not eligible[k] and inst.cutoff is not None:
            notes[k].append(_below_cutoff(inst, intake[k]))
        imp = None if not np.isfinite(rcu[k]) else float(rcu[k] * inst.rci)
        out[cid] = _build(Assessment,
            client_id=cid, instrument=instrument, session=int(session[k]),
            n_scores=int(n_scores[k]), safety=saf, risk=r, flag=fl,
            signal=_build(Signal,
                colour=colour, reason=str(reasons[k]),
                boundary_source=str(source[k]) if colour != "grey" else "none"),
            agreement=_agreement(colour, fl),
            course=courses[k], course_so_far=so_far[k],
            change=_build(ChangeStatus,
                category=None if cats[k] is None else str(cats[k]),
                summary=change_words(intake[k], latest[k], inst), improvement_points=imp,
                rc_units=None if imp is None else float(rcu[k]),
                intake_score=float(intake[k]), latest_score=float(latest[k])),
            alliance=alliance,
            explanation=explanation[k],
            suggestions=_with_learned(sugg, learned.get(k), notes[k]),
            population=pop[k], notes=notes[k])
    return out


def _rows_by_client(sessions: pd.DataFrame, instrument: str, at=None):
    """The feature rows as of every assessed session (``at``: the sessions to include; None:
    all), with each row's client code and, per client, its first and last row and its id."""
    if at is None:
        smax = int(np.nanmax(SessionColumns.of(sessions)["session"]))
        at = range(1, smax + 1)
    hist = point_in_time(sessions, instrument=instrument, at=at)
    row_ids = hist.keys["client_id"].to_numpy(dtype=object)
    n = len(row_ids)
    new_client = np.r_[True, row_ids[1:] != row_ids[:-1]] if n else np.empty(0, bool)
    code = np.cumsum(new_client) - 1
    first = np.flatnonzero(new_client)
    last = np.r_[first[1:] - 1, n - 1] if n else np.empty(0, int)
    return hist, code, first, last, row_ids[first]


def _eligible(sessions: pd.DataFrame, inst, target: str, intake: np.ndarray,
              ids: np.ndarray) -> np.ndarray:
    """Per client: the target's outcome is defined (`features.targets.eligible_at_intake`)."""
    if inst.cutoff is None:
        return np.zeros(len(ids), dtype=bool)
    other = "GAD-7" if inst.code == "PHQ-9" else "PHQ-9"
    return eligible_at_intake(intake, inst.code, target,
                              _first_scores(sessions, other, ids)
                              if target == "failed_nhs" else None)


def _course_at(m, nav, client: np.ndarray, intake: np.ndarray, at: np.ndarray):
    """The expected course (median, lower, upper, boundary), each shaped like ``at``, at the
    sessions ``at`` (rows x k) of rows with ``intake`` (per row) of the clients ``client``
    (indices into ``nav``, the navigator's course per client, or None): the neighbours'
    course where it exists, the expected-response curve elsewhere."""
    at = np.asarray(at, dtype=float)
    out = m.expected.expected(np.repeat(np.asarray(intake, float)[:, None], at.shape[1],
                                        axis=1), at)
    if nav is None:
        return out
    S = m.navigator.max_session
    r = np.asarray(client)[:, None]
    j = np.clip(at.astype(int), 1, S) - 1
    ok = np.isfinite(nav["boundary"][r, j]) & (at <= S)
    return tuple(np.where(ok, nav[key][r, j], old) for key, old in
                 zip(("median", "lower", "upper", "boundary"), out, strict=True))


def _band_at(band, inst, at: np.ndarray, lower: np.ndarray, upper: np.ndarray
             ) -> tuple[list, list]:
    """The conformal band (`models.conformal.ConformalBand`) around the served band at the
    sessions ``at``, as nested lists of floats shaped like ``at`` (None where the bundle has
    no band or the served band is missing): one vectorised lookup of the margin by session."""
    if band is None:
        none = np.full(np.shape(at), None, dtype=object).tolist()
        return none, none
    lo, hi = band.apply(at, lower, upper, inst.score_min, inst.score_max)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.all():
        return lo.tolist(), hi.tolist()
    return np.where(ok, lo, None).tolist(), np.where(ok, hi, None).tolist()


def _after_first(code: np.ndarray) -> np.ndarray:
    """The history rows after each client's first (the scores the course so far covers)."""
    return (np.flatnonzero(np.r_[False, code[1:] == code[:-1]]) if len(code)
            else np.empty(0, int))


def served_course(m, sessions: pd.DataFrame, instrument: str,
                  exclude: pd.Index | None = None) -> pd.DataFrame:
    """The served course at every observed score after the first: one row per client and
    session with the observed ``score`` and the course shown for that session (``expected``,
    ``lower``, ``upper``, ``failure_boundary``), as the assessment's ``course_so_far`` shows
    it: it depends on what was known at intake only, so it is also what was shown for that
    session beforehand. ``exclude``: the navigator's reference ids (sorted), so that a
    training client is never its own neighbour (calibration of `models.conformal`); None for
    new clients. Columns client_id, session, score, expected, lower, upper,
    failure_boundary."""
    sessions = SessionColumns.of(sessions)
    hist, code, _, _, ids = _rows_by_client(sessions, instrument)
    nav = (None if m.navigator is None
           else _intake_course(m.navigator, _session_one(hist), ids, exclude))
    intake = hist.X["intake_score"].to_numpy(dtype=float)
    session = hist.X["session"].to_numpy(dtype=float)
    past = _after_first(code)
    pm, pl, pu, pb = _course_at(m, nav, code[past], intake[past], session[past, None])
    return pd.DataFrame({
        "client_id": hist.keys["client_id"].to_numpy()[past],
        "session": session[past].astype(np.int64),
        "score": hist.X["latest_score"].to_numpy(dtype=float)[past],
        "expected": pm[:, 0], "lower": pl[:, 0], "upper": pu[:, 0],
        "failure_boundary": pb[:, 0]})


def _session_one(hist):
    """The intake rows (session 1) of feature rows as of every assessed session: the same
    rows `point_in_time` makes with ``at=(1,)``."""
    from features.pointintime import FeatureFrame

    one = np.flatnonzero(hist.keys["session"].to_numpy(dtype=np.int64) == 1)
    return FeatureFrame(X=hist.X.iloc[one], keys=hist.keys.iloc[one])


def _expected_rows(m, at1, ids, code, intake_h, session_h, exclude=None):
    """The expected course at each history row's own session: the neighbours' course matched
    at intake where it exists, the expected-response curve elsewhere. ``at1``: the feature
    rows as of session 1 (`_session_one`). Returns (median, boundary, source
    per row, the navigator's course per client or None). ``exclude``: the navigator's
    reference ids (sorted), so that a training client is never its own neighbour."""
    med_h, _, _, bnd_h = m.expected.expected(intake_h, session_h)
    src_h = np.where(np.isfinite(bnd_h), "expected_response", "none").astype(object)
    nav = None
    if m.navigator is not None:
        nav = _intake_course(m.navigator, at1, ids, exclude)
        S = m.navigator.max_session
        s_idx = np.clip(np.nan_to_num(session_h, nan=1).astype(int), 1, S) - 1
        has = np.isfinite(nav["boundary"][code, s_idx])
        med_h = np.where(has, nav["median"][code, s_idx], med_h)
        bnd_h = np.where(has, nav["boundary"][code, s_idx], bnd_h)
        src_h[has] = "neighbours"
    return med_h, bnd_h, src_h, nav


def _history(colh: dict, code: np.ndarray, med_h, bnd_h, p_h, eligible: np.ndarray,
             inst) -> History:
    """The flag policy's input (`models.flag.History`) from the feature rows of every
    assessed session: the signal's colour there (never white while another measure is in the
    clinical range or after a risk item was endorsed), reliable deterioration since intake,
    and the risk (clients below the cut-off at intake have none)."""
    hold = (colh["other_clinical_latest"] == 1) | (colh["risk_item_ever"] == 1)
    colour = signal_colours(colh["latest_score"], colh["n_scores"], med_h, bnd_h, inst, hold)
    with np.errstate(invalid="ignore"):
        det = (colh["change_rc"] <= -1.0 if inst.rci is not None
               else np.zeros(len(code), dtype=bool))
    elig = np.asarray(eligible, dtype=bool)[code]
    return History(client=code, session=colh["session"].astype(np.int64),
                   p=np.where(elig, p_h, np.nan), red=colour == "red", deteriorated=det,
                   eligible=elig)


def policy_history(m, sessions: pd.DataFrame, instrument: str, at=None,
                   exclude: pd.Index | None = None) -> tuple[History, pd.DataFrame]:
    """The flag policy's input for every assessed session of every client, with the bundle's
    risk model (training replaces ``p`` with out-of-fold risks before fitting the policy).
    ``at``: the sessions to include (None: all). Returns the history and its keys
    (client_id, session), aligned."""
    inst = get(instrument)
    sessions = SessionColumns.of(sessions)
    hist, code, first, _, ids = _rows_by_client(sessions, instrument, at)
    at1 = (_session_one(hist) if at is None or 1 in set(at)
           else point_in_time(sessions, instrument=instrument, at=(1,)))
    colh = {c: hist.X[c].to_numpy(dtype=float) for c in hist.X.columns}
    eligible = _eligible(sessions, inst, getattr(m, "target", "failed"),
                         colh["intake_score"][first], ids)
    med_h, bnd_h, _, _ = _expected_rows(m, at1, ids, code,
                                        colh["intake_score"], colh["session"], exclude)
    p_h = 1.0 / (1.0 + np.exp(-m.failure.logit_from_matrix(
        m.failure.transform_features(hist.X))))
    return _history(colh, code, med_h, bnd_h, p_h, eligible, inst), hist.keys


def _below_cutoff(inst, intake: float) -> str:
    return (f"Started below the clinical cut-off ({inst.code} {intake:g} at intake; cut-off "
            f"{inst.cutoff:g}): reliable improvement is not defined for this client, so no risk "
            "is shown; monitored for reliable deterioration only.")


def _definition(inst, target: str) -> str:
    """What ``p_failure`` predicts, in words."""
    if target == "failed_nhs":
        how = ("by the NHS Talking Therapies paired rule: PHQ-9 down by at least 6 or GAD-7 "
               "down by at least 4, and neither reliably worse")
    else:
        way = "rise" if inst.higher_is_better else "fall"
        how = f"on {inst.code}: a {way} of at least {inst.rci:g} points from intake"
    return (f"Calibrated probability that the client will not reliably improve by the end of "
            f"care ({how}), as estimated at the latest session.")


def _flag(policy: FlagPolicy, rep, i: int, eligible: bool, inst, intake: float,
          n_scores: float, risk: Risk | None, has_model: bool) -> Flag:
    """The flag of one client at its latest session (entry ``i`` of the replay), in words."""
    state = STATES[int(rep.state[i])]
    bits = int(rep.opened_by[i])
    opened = int(rep.opened_session[i])
    cleared = int(rep.cleared_session[i])
    why = trigger_words(bits)
    finite = np.isfinite(policy.entry) and policy.entry <= 1.0
    if state == "new":
        reason = f"Flagged at this session: {why}."
    elif state == "continuing":
        reason = (f"Flagged since session {opened}: {why}. It clears after "
                  f"{policy.exit_sessions} sessions"
                  + (f" with the risk below {100 * policy.exit:.0f}%" if finite and eligible
                     else "") + " and no red signal or reliable deterioration.")
    elif state == "cleared":
        reason = (f"The flag opened at session {opened} ({why}) cleared at session {cleared} "
                  f"after {policy.exit_sessions} calm sessions; keep monitoring.")
    elif not eligible and inst.cutoff is not None:
        reason = _below_cutoff(inst, intake)
    elif not has_model:
        reason = "No model covers this instrument: only a reliable deterioration opens a flag."
    elif n_scores <= 1:
        reason = ("No flag at intake: the risk at intake is context only; a flag can open "
                  "from the next score.")
    else:
        reason = ("Not flagged: "
                  + (f"the risk ({100 * risk.p_failure:.0f}%) is below the entry level of "
                     f"{100 * policy.entry:.0f}%, " if risk is not None and finite else "")
                  + "the signal has not been red twice in a row and there is no reliable "
                  "deterioration.")
    return _build(Flag,
        state=state, flagged=bool(rep.flagged[i]), reason=reason,
        opened_by=trigger_names(bits), opened_session=opened if opened >= 0 else None,
        cleared_session=cleared if cleared >= 0 else None, eligible=eligible,
        entry_threshold=float(policy.entry) if finite else None,
        exit_threshold=float(policy.exit) if finite else None,
        exit_sessions=int(policy.exit_sessions), budget=policy.budget if finite else None,
        context=policy.describe() if has_model else
        "Only a reliable deterioration opens a flag for this instrument.")


def _learned(m, X: pd.DataFrame, colours: np.ndarray, flags: list[Flag],
             eligible: np.ndarray, rules: list[list]) -> dict:
    """Learned suggestions for the clients who are not on track (flagged, or red/yellow), in
    ONE batched call to the recommender, each claimed against the rules' top adaptation
    (``rules``: the rule-based suggestions per client); {} when the bundle has none."""
    rec = getattr(m, "recommender", None) if m is not None else None
    if rec is None:
        return {}
    flagged = np.array([f.flagged for f in flags], dtype=bool)
    idx = np.flatnonzero((np.isin(colours.astype(str), ("red", "yellow")) | flagged)
                         & eligible)
    if not len(idx):
        return {}
    if not hasattr(rec, "honest_coef_"):  # a recommender fitted before claims existed
        return dict(zip(idx.tolist(), rec.recommend(X.iloc[idx]), strict=True))
    versus = [next((g.adaptation for g in rules[i] if g.adaptation in ADAPTATIONS), None)
              for i in idx.tolist()]
    return dict(zip(idx.tolist(), rec.recommend(X.iloc[idx], versus=versus), strict=True))


def _with_learned(sugg: list, rec, notes: list[str]) -> list[SuggestionOut]:
    """Crisis prompts always first, then the learned suggestions whose gain the archive
    supports (``claimed``; observational comparison), then the rule-based ones; when the
    recommender falls back or claims nothing, the rules with its reason."""
    shown = [] if rec is None else [s for s in rec.suggestions
                                    if s.claimed or not np.isfinite(s.claim_gain)]
    fallback = rec.unclaimed_reason if rec is not None and not shown else None
    out = [SuggestionOut.model_construct(adaptation=g.adaptation, prompt=g.prompt,
                                         rationale=g.rationale, source=g.source)
           for g in sugg if g.adaptation == "safety"]
    learned: dict[str, SuggestionOut] = {}
    if rec is not None:
        for s in shown:
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

def _intake_course(navigator, at1, ids: np.ndarray,
                   exclude: pd.Index | None = None) -> dict[str, np.ndarray]:
    """The neighbours' expected course for each client, matched on what was known at intake
    (Lutz et al. 2005: similar clients at the START of treatment), so that a client who has
    not improved is compared with clients who started like them, not with clients who also
    did not improve. NaN rows for clients without an intake score. ``exclude``: the
    reference's sorted ids (training: a client is never its own neighbour). ``at1``: the
    feature rows as of session 1."""
    at1_ids = at1.keys["client_id"].to_numpy(dtype=object)
    excl = None if exclude is None else exclude.get_indexer(pd.Index(at1_ids))
    course = navigator.expected_course(at1.X, exclude=excl)
    pos = pd.Index(at1_ids).get_indexer(pd.Index(ids))
    out = {}
    for key, val in course.items():
        full = np.full((len(ids), val.shape[1]), np.nan)
        full[pos >= 0] = val[pos[pos >= 0]]
        out[key] = full
    return out


def _latest_alliance(sessions: pd.DataFrame) -> dict[str, tuple[str, float, float | None]]:
    """Per client: (alliance instrument, its latest raw score, the previous score on the same
    instrument or None), for display and the alliance prompts."""
    codes = [c for c, i in REGISTRY.items() if i.role is Role.ALLIANCE]
    sessions = SessionColumns.of(sessions)
    inst = sessions["instrument"]
    m = sessions.isin("instrument", codes)
    if not m.any():
        return {}
    ids = sessions["client_id"][m]
    sess = sessions["session"].astype(np.int64)[m]
    score = sessions["score"][m]
    rank = np.array([codes.index(c) for c in inst[m]])
    order = np.lexsort((-rank, sess, ids.astype(str)))
    ids, inst_m, score, sess = ids[order], inst[m][order], score[order], sess[order]
    out: dict[str, tuple[str, float, float | None]] = {}
    lastpos = np.flatnonzero(np.r_[ids[1:] != ids[:-1], True])
    for j in lastpos.tolist():
        code = str(inst_m[j])
        prev = None
        k = j - 1
        while k >= 0 and ids[k] == ids[j]:
            if inst_m[k] == code and sess[k] < sess[j]:
                prev = float(score[k])
                break
            k -= 1
        out[str(ids[j])] = (code, float(score[j]), prev)
    return out


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
    return _build(Population, out_of_population=bool(reasons), reasons=reasons)
