"""The cohort generator: layout (clinics, therapists, covariates, intake dates), the compiled
course simulation, censoring at the extraction date, and the contract's tables.

Every random number comes from one ``numpy.random.Generator`` seeded with ``seed``: it draws the
layout, the covariates, the per-client 64-bit keys of the compiled kernels and the item answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import training.simulate.kernels as K
from features.targets import targets
from training.simulate.params import (
    AGE_BANDS,
    DEFAULT,
    DIAGNOSES,
    DOMAINS,
    GENDERS,
    IDX,
    N_DOM,
    N_OPT,
    OPTIONS,
    TRAJ_NAMES,
    Packed,
    Params,
)

PHQ, GAD, SRS, CSC = "PHQ-9", "GAD-7", "SRS", "CSC"
ORACLE_SESSIONS = (1, 2, 3, 4, 5, 6)


@dataclass
class Layout:
    """Everything drawn before the courses: who is where, covariates, keys, intake dates."""

    client_id: np.ndarray
    clinic: np.ndarray
    therapist: np.ndarray
    ther_eff: np.ndarray  # therapist + clinic effect on the slope, per client
    clinic_eff: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    diag: np.ndarray
    start: np.ndarray  # datetime64[D]
    t_cut: np.ndarray  # last slot on or before the extraction date
    keys: np.ndarray  # uint64


@dataclass
class Courses:
    """Raw output of the compiled generator (full, uncensored courses)."""

    traj: np.ndarray
    domains: np.ndarray  # int bitmask
    b1: np.ndarray
    att: np.ndarray
    phq: np.ndarray
    gad: np.ndarray
    srs: np.ndarray  # tenths, (n, slots, 4)
    props: np.ndarray
    end_slot: np.ndarray
    end_status: np.ndarray  # 1 finished, 2 dropout
    option: np.ndarray
    option_slot: np.ndarray


@dataclass
class Observed:
    """What the files show (after censoring): the oracle reads only this."""

    att: np.ndarray  # 1 attended, 0 missed, -1 not observed
    phq: np.ndarray
    gad: np.ndarray
    srs: np.ndarray
    option: np.ndarray  # -1 no decision observed, 0 none, 1..6
    option_slot: np.ndarray
    last_slot: np.ndarray
    status: np.ndarray  # "finished" | "dropout" | "ongoing"


@dataclass
class SimulatedCohort:
    sessions: pd.DataFrame
    clients: pd.DataFrame
    adaptations: pd.DataFrame
    truth: pd.DataFrame
    params: Params = field(repr=False)
    seed: int = 0
    layout: Layout | None = field(default=None, repr=False)
    courses: Courses | None = field(default=None, repr=False)
    observed: Observed | None = field(default=None, repr=False)
    oracle_info: dict = field(default_factory=dict)
    scenario: str = "default"  # a name from `training.simulate.scenarios`, or "custom"

    def write(self, out_dir: str | Path, format: str = "csv") -> list[Path]:
        from training.simulate.io import write_cohort

        return write_cohort(self, Path(out_dir), format)


# ------------------------------------------------------------------------------------------
def make_layout(n: int, rng: np.random.Generator, p: Params, censor: bool = True) -> Layout:
    n_ther = max(1, math.ceil(n / p.clients_per_therapist))
    ther_clinic = rng.integers(0, p.n_clinics, size=n_ther)
    ther_sd = rng.standard_normal(n_ther) * p.b1_sd_therapist
    clinic_sd = rng.standard_normal(p.n_clinics) * p.b1_sd_clinic
    therapist = rng.integers(0, n_ther, size=n)
    clinic = ther_clinic[therapist]
    age = rng.choice(len(AGE_BANDS), size=n, p=np.asarray(p.age_probs)).astype(np.int64)
    gender = rng.choice(len(GENDERS), size=n, p=np.asarray(p.gender_probs)).astype(np.int64)
    diag = rng.choice(len(DIAGNOSES), size=n, p=np.asarray(p.diag_probs)).astype(np.int64)
    extract = np.datetime64(p.extract_date, "D")
    back = rng.integers(0, p.intake_window_days + 1, size=n)
    start = extract - back.astype("timedelta64[D]")
    t_cut = back // 7 + 1 if censor else np.full(n, p.max_slots)
    t_cut = np.minimum(t_cut, p.max_slots).astype(np.int64)
    keys = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    width = max(6, len(str(n)))
    ids = np.array([f"C{i:0{width}d}" for i in range(1, n + 1)], dtype=object)
    return Layout(ids, clinic, therapist, ther_sd[therapist], clinic_sd[clinic], age, gender,
                  diag, start, t_cut, keys)


def run_courses(pk: Packed, lay: Layout, forced: np.ndarray | None = None) -> Courses:
    n = len(lay.keys)
    forced = np.full(n, -1, dtype=np.int64) if forced is None else forced.astype(np.int64)
    lat_i, lat_f, att, phq, gad, srs, props, info = K.simulate_courses(
        pk.vec, pk.phq_delta, pk.gad_delta, pk.phq_logg, pk.gad_logg, pk.phq_eta_hat,
        pk.gad_eta_hat, lay.keys, lay.diag, lay.gender, lay.age, lay.ther_eff, lay.clinic_eff,
        forced)
    return Courses(lat_i[:, 0], lat_i[:, 1], lat_f[:, 0], att, phq, gad, srs, props,
                   info[:, 0].astype(np.int64), info[:, 1].astype(np.int64),
                   info[:, 2].astype(np.int64), info[:, 3].astype(np.int64))


def observe(c: Courses, lay: Layout) -> Observed:
    """Censor full courses at the extraction date."""
    n, slots = c.att.shape
    ended = c.end_slot <= lay.t_cut
    last = np.where(ended, c.end_slot, lay.t_cut)
    seen = np.arange(1, slots + 1)[None, :] <= last[:, None]
    att = np.where(seen, c.att, -1).astype(np.int8)
    phq = np.where(seen & (c.att == 1), c.phq, -1)
    gad = np.where(seen & (c.att == 1), c.gad, -1)
    srs = np.where((seen & (c.att == 1))[:, :, None], c.srs, -1)
    decided = (c.option >= 0) & (c.option_slot <= last)
    option = np.where(decided, c.option, -1)
    option_slot = np.where(decided, c.option_slot, -1)
    status = np.where(ended, np.where(c.end_status == 2, "dropout", "finished"), "ongoing")
    return Observed(att, phq, gad, srs, option, option_slot, last, status.astype(object))


# ------------------------------------------------------------------------------------------
# Items given totals (exact conditional of the Rasch model: independent of the latent)
# ------------------------------------------------------------------------------------------
def _suffix_polys(delta: np.ndarray) -> list[np.ndarray]:
    """G[j][r] = generating coefficients of items j..end (G[n] = [1])."""
    n = len(delta)
    out: list[np.ndarray] = [np.array([1.0])] * (n + 1)
    for j in range(n - 1, -1, -1):
        f = np.array([math.comb(3, k) * math.exp(k * delta[j]) for k in range(4)])
        out[j] = np.convolve(f, out[j + 1])
    return out


def items_given_totals(totals: np.ndarray, delta: np.ndarray, rng: np.random.Generator
                       ) -> np.ndarray:
    """Item answers (0..3) whose sum is `totals`, drawn from P(items | total) of the model.

    Item by item, the answer is the first of 0..3 whose cumulative weight reaches ``u`` times
    the total weight, the weights depending only on the total still to place: they are
    tabulated once per item for every possible remainder and looked up per row."""
    n_items = len(delta)
    G = _suffix_polys(np.asarray(delta, float))
    rem = totals.astype(np.int64).copy()
    out = np.zeros((len(totals), n_items), dtype=np.int64)
    u = rng.random((len(totals), n_items))
    top = 3 * n_items
    r_all = np.arange(top + 1)
    for j in range(n_items):
        nxt = np.concatenate([G[j + 1], np.zeros(4)])
        w = np.zeros((top + 1, 4))  # one row per remainder 0..top
        for k in range(4):
            r = r_all - k
            ok = (r >= 0) & (r < len(G[j + 1]))
            w[:, k] = np.where(ok, math.comb(3, k) * math.exp(k * delta[j])
                               * nxt[np.clip(r, 0, len(nxt) - 1)], 0.0)
        cdf = np.cumsum(w, axis=1).T.copy()  # (4, remainders)
        c = [cdf[k].take(rem) for k in range(4)]  # totals are 0..top
        x = u[:, j] * c[3]
        pick = (x >= c[0]).astype(np.int64) + (x >= c[1]) + (x >= c[2]) + (x >= c[3])
        pick = np.minimum(pick, 3)
        out[:, j] = pick
        rem -= pick
    return out


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
INSTRUMENTS = (PHQ, GAD, SRS, CSC)  # `SessionRows.instrument` indexes this


@dataclass
class SessionRows:
    """The sessions table as arrays, in the written row order (client, session, instrument).
    `build_tables` formats it as the contract's frame; the streaming writer
    (`training.simulate.stream`) goes to Arrow directly."""

    client: np.ndarray  # row -> client index in the layout
    session: np.ndarray  # int64
    instrument: np.ndarray  # int8 index into INSTRUMENTS
    score: np.ndarray  # float
    date: np.ndarray  # datetime64[D]
    items: np.ndarray  # (9, rows) float, NaN past the instrument's items


def session_rows(lay: Layout, obs: Observed, pk: Packed, rng: np.random.Generator,
                 checklist: np.ndarray | None = None, group: np.ndarray | None = None
                 ) -> SessionRows:
    """The rows of the sessions table (see `build_tables`). ``group``: a small non-negative
    integer per client; the rows are then ordered by their client's group first (stable, so
    client, session, instrument within a group), as the partitioned writer wants them. The
    values do not depend on ``group``, only their order."""
    ci, si = np.nonzero(obs.att == 1)  # row-major: client then slot
    sess = si + 1
    m = len(ci)
    phq = obs.phq[ci, si].astype(np.int64)
    gad = obs.gad[ci, si].astype(np.int64)
    srs = obs.srs[ci, si, :].astype(np.int64)
    phq_items = items_given_totals(phq, pk.phq_delta, rng)
    gad_items = items_given_totals(gad, pk.gad_delta, rng)
    k = 3 if checklist is None else 4
    items = np.full((9, k, m), np.nan)  # item, instrument, cell
    items[:, 0] = phq_items.T
    items[:7, 1] = gad_items.T
    items[:4, 2] = srs.T / 10.0
    totals = [phq, gad, srs.sum(axis=1) / 10.0]
    keep = np.ones(k * m, dtype=bool)
    if checklist is not None:  # the CSC row only at the decision cell (an attended session)
        items[:N_DOM, 3] = checklist[ci].T
        totals.append(checklist[ci].sum(axis=1))
        keep[3 * m:] = (obs.option[ci] >= 0) & (obs.option_slot[ci] == sess)
    scores = np.stack(totals).astype(float)
    order = np.arange(k * m).reshape(k, m).T.ravel()  # client, session, instrument
    order = order[keep[order]]
    cell = order % m if m else order
    if group is not None:
        by = np.argsort(group[ci[cell]], kind="stable")
        order, cell = order[by], cell[by]
    return SessionRows(
        client=ci[cell],
        session=sess[cell].astype(np.int64),
        instrument=(order // max(m, 1)).astype(np.int8),
        score=scores.ravel()[order],
        date=lay.start[ci[cell]] + (7 * si[cell]).astype("timedelta64[D]"),
        items=items.reshape(9, k * m)[:, order],
    )


def build_tables(lay: Layout, obs: Observed, pk: Packed, rng: np.random.Generator,
                 checklist: np.ndarray | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The contract's tables. ``checklist``: (clients, 5) clinical-support checklist ratings
    (`checklist_ratings`), written as one CSC row at each client's decision session."""
    r = session_rows(lay, obs, pk, rng, checklist)
    clinic = np.array([f"K{c + 1:02d}" for c in range(int(lay.clinic.max()) + 1)], dtype=object)
    ther = np.array([f"T{t + 1:04d}" for t in range(int(lay.therapist.max()) + 1)], dtype=object)
    sessions = pd.DataFrame({
        "client_id": pd.array(lay.client_id[r.client], dtype="string"),
        "session": r.session,
        "instrument": pd.array(np.array(INSTRUMENTS, dtype=object)[r.instrument],
                               dtype="string"),
        "score": r.score,
        "date": r.date.astype("datetime64[s]"),
        "clinic_id": pd.array(clinic[lay.clinic[r.client]], dtype="string"),
        "therapist_id": pd.array(ther[lay.therapist[r.client]], dtype="string"),
    })
    for j in range(9):
        sessions[f"item_{j + 1}"] = r.items[j]
    clients = pd.DataFrame({
        "client_id": pd.array(lay.client_id, dtype="string"),
        "end_status": pd.array(obs.status, dtype="string"),
        "age_band": pd.array(np.array(AGE_BANDS, dtype=object)[lay.age], dtype="string"),
        "gender": pd.array(np.array(GENDERS, dtype=object)[lay.gender], dtype="string"),
        "diagnosis_group": pd.array(np.array(DIAGNOSES, dtype=object)[lay.diag], dtype="string"),
        "intake_date": lay.start.astype("datetime64[s]"),
    })
    has = obs.option >= 1
    adaptations = pd.DataFrame({
        "client_id": pd.array(lay.client_id[has], dtype="string"),
        "session": obs.option_slot[has].astype(np.int64),
        "adaptation": pd.array(np.array(OPTIONS, dtype=object)[obs.option[has]], dtype="string"),
    })
    return sessions, clients, adaptations


def checklist_ratings(bits: np.ndarray, p: Params, rng: np.random.Generator) -> np.ndarray:
    """(clients, 5) clinical-support checklist ratings 0-4: item k rates domain k as
    ``csc_shift * (has the domain) + N(0, 1)`` cut at ``csc_cuts`` (see `Params`). The draws
    come from their own stream, so the checklist never changes a course and is the same under
    every counterfactual option; `build_tables` writes it at the decision session."""
    z = rng.standard_normal((len(bits), N_DOM))
    has = ((bits[:, None] >> np.arange(N_DOM)[None, :]) & 1).astype(float)
    return np.digitize(p.csc_shift * has + z, np.asarray(p.csc_cuts)).astype(float)


def domain_labels(bits: np.ndarray) -> np.ndarray:
    out = np.full(len(bits), "", dtype=object)
    for j, name in enumerate(DOMAINS):
        on = ((bits >> j) & 1) == 1
        out[on] = np.where(out[on] == "", name, out[on] + ";" + name)
    return out


def option_effects(pk: Packed, traj: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Effect on the symptom logit of each adaptation (columns = ADAPTATIONS) per client;
    a vectorised copy of `kernels.option_effect` (kept equal by a test)."""
    v = pk.vec
    gen, match = v[IDX["adapt_generic"]], v[IDX["adapt_matched"]:IDX["adapt_matched"] + 6]
    eff = np.zeros((len(traj), N_OPT - 1))
    for o in range(1, N_DOM + 1):
        eff[:, o - 1] = gen + match[o - 1] * ((bits >> (o - 1)) & 1)
    eff[:, 5] = gen + match[5] * np.isin(traj, (2, 3))
    return eff


def best_adaptation(pk: Packed, traj: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The adaptation with the largest effect on the symptom logit for the true latents;
    "any" when every adaptation has only the generic effect (no domain and no non-response)."""
    eff = option_effects(pk, traj, bits)
    best = np.array(OPTIONS[1:], dtype=object)[eff.argmax(axis=1)]
    return np.where(eff.max(axis=1) - eff.min(axis=1) < 1e-12, "any", best)


def format_propensities(props: np.ndarray) -> np.ndarray:
    out = np.full(len(props), "", dtype=object)
    ok = np.isfinite(props[:, 0])
    cols = [np.char.add(f"{name}:", np.char.mod("%.6f", props[ok, o]))
            for o, name in enumerate(OPTIONS)]
    if ok.any():
        joined = cols[0]
        for c in cols[1:]:
            joined = np.char.add(np.char.add(joined, ";"), c)
        out[ok] = joined
    return out


# ------------------------------------------------------------------------------------------
def simulate_cohort(n_clients: int, seed: int, oracle_clients: int = 5000,
                    params: Params | None = None, censor: bool = True,
                    oracle_sessions: tuple[int, ...] = ORACLE_SESSIONS,
                    oracle_se: float = 0.005, oracle_max_paths: int = 64000,
                    oracle_min_paths: int = 512, progress=None,
                    scenario: str | None = None) -> SimulatedCohort:
    """Simulate a cohort (see docs/simulator.md). `oracle_clients=0` skips the oracle.

    `scenario` names a world of `training.simulate.scenarios` (its parameters; give either it
    or `params`).

    The oracle is computed for a random subset of `oracle_clients` clients (all when fewer),
    at the sessions in `oracle_sessions`, to a Monte Carlo standard error <= `oracle_se`.
    """
    if scenario is not None:
        if params is not None:
            raise ValueError("give a scenario or params, not both")
        from training.simulate.scenarios import scenario as named

        p = named(scenario)
    else:
        p = params or DEFAULT
    pk = p.pack()
    rng = np.random.default_rng(seed)
    lay = make_layout(n_clients, rng, p, censor)
    courses = run_courses(pk, lay)
    obs = observe(courses, lay)
    item_rng = np.random.default_rng([seed, 1])
    ratings = checklist_ratings(courses.domains, p, np.random.default_rng([seed, 3]))
    sessions, clients, adaptations = build_tables(lay, obs, pk, item_rng, ratings)
    tg = targets(sessions, clients).reindex(pd.Index(lay.client_id, name="client_id"))
    truth = pd.DataFrame({
        "client_id": pd.array(lay.client_id, dtype="string"),
        "trajectory_class": pd.array(np.array(TRAJ_NAMES, dtype=object)[courses.traj],
                                     dtype="string"),
        "domains": pd.array(domain_labels(courses.domains), dtype="string"),
        "best_adaptation": pd.array(best_adaptation(pk, courses.traj, courses.domains),
                                    dtype="string"),
        "propensities": pd.array(format_propensities(np.where(
            (obs.option >= 0)[:, None], courses.props, np.nan)), dtype="string"),
        "failed": tg["failed"].to_numpy(),
        "dropped_out": tg["dropped_out"].to_numpy(),
    })
    info: dict = {}
    for t in ORACLE_SESSIONS:
        truth[f"oracle_failure_s{t}"] = np.nan
    for t in ORACLE_SESSIONS:
        truth[f"oracle_se_s{t}"] = np.nan
    if oracle_clients > 0:
        from training.simulate.oracle import oracle_for_cohort

        pick_rng = np.random.default_rng([seed, 2])
        n_or = min(oracle_clients, n_clients)
        subset = np.sort(pick_rng.choice(n_clients, size=n_or, replace=False))
        val, se, info = oracle_for_cohort(pk, lay, obs, subset, seed, oracle_sessions,
                                          oracle_se, oracle_max_paths, progress,
                                          slope_sd=p.b1_sd, min_paths=oracle_min_paths)
        for j, t in enumerate(ORACLE_SESSIONS):
            truth.loc[subset, f"oracle_failure_s{t}"] = val[:, j]
            truth.loc[subset, f"oracle_se_s{t}"] = se[:, j]
        info["subset_size"] = int(n_or)
    name = scenario or ("default" if p == DEFAULT else "custom")
    return SimulatedCohort(sessions, clients, adaptations, truth, p, seed, lay, courses, obs,
                           info, name)
