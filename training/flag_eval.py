"""Evaluation of flag policies, client by client, session by session (what a therapist sees).

Every policy is replayed over each held-out client's history as the clinic would have seen it
(`models.assess.policy_history`: the risk, the signal and reliable change as of every assessed
session). Rows of the table:

* ``learned``: the fitted policy (`models.flag`): no flag at intake, entry threshold for the
  cumulative budget, red twice, reliable deterioration, hysteresis;
* ``per_row``: the earlier rule, a flag at every session where the risk reaches the per-session
  threshold (out-of-fold sensitivity 0.80), intake included;
* ``lambert``: the incumbent expected-response rule, a flag at every red signal from session 2
  (Lambert's OQ-Analyst; Finch, Lambert & Schaalje 2001);
* ``oracle``: the simulator's Bayes-optimal risk (truth.csv, sessions 1-6) through the same
  policy, with its own entry threshold for the same budget: the ceiling.

Metrics per policy over clients with a known outcome (intake in the clinical range), with
client-bootstrap 95% intervals: share of eventual reliable deteriorators flagged by session 3
and by the end (anchor: 85% and 100%, Hannan et al. 2005), of eventual non-improvers, and of
eventual reliable improvers (false alarms); PPV by session 3 (share of flagged clients who did
not reliably improve); flagged sessions per 100 sessions; flip rate (a flag that clears and
re-opens within 3 sessions, per clearing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.targets import targets
from features.thresholds import FLIP_WINDOW
from models.flag import (
    BY_SESSION,
    FlagPolicy,
    History,
    Outcomes,
    cumulative_curve,
    fit_policy,
)

#: The simulator's oracle is the probability of `failed` on PHQ-9 (training/simulate/oracle.py).
ORACLE_INSTRUMENT = "PHQ-9"

LABELS = {
    "learned": "Flag policy (learned, cumulative budget)",
    "per_row": "Per-session threshold (earlier rule)",
    "lambert": "Lambert: every red signal from session 2",
    "oracle": "Bayes oracle through the same policy (ceiling)",
    "learned_on_oracle_clients": "Flag policy, on the oracle's clients and sessions",
}
#: Short names for printed tables.
SHORT = {"learned": "learned policy", "per_row": "per-session threshold",
         "lambert": "Lambert red rule", "oracle": "oracle, same policy",
         "learned_on_oracle_clients": "learned, oracle's clients"}
METRICS = ("deteriorators_s3", "deteriorators_end", "non_improvers_s3", "non_improvers_end",
           "improvers_s3", "improvers_end", "ppv_s3", "flags_per_100", "flip_rate")


@dataclass
class ClientSummary:
    """Per client (first-seen order): what the policy did and how the client ended."""

    flag_s3: np.ndarray
    flag_end: np.ndarray
    failed: np.ndarray
    deteriorated: np.ndarray
    n_rows: np.ndarray
    n_flagged: np.ndarray
    n_cleared: np.ndarray
    n_flips: np.ndarray


def summarise(history: History, flagged: np.ndarray, outcomes: Outcomes,
              by_session: int = BY_SESSION) -> ClientSummary:
    """Reduce a policy's per-session flags to per-client facts. Openings and clearings are
    read off the flag sequence, so every policy is measured the same way."""
    client = np.asarray(history.client)
    session = np.asarray(history.session)
    flagged = np.asarray(flagged, dtype=bool)
    new = np.r_[True, client[1:] != client[:-1]] if len(client) else np.empty(0, bool)
    seg = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    n = len(first)
    prev = np.r_[False, flagged[:-1]] & ~new
    opened = flagged & ~prev
    cleared = ~flagged & prev
    flips = np.zeros(len(client), dtype=bool)
    last_clear = np.full(n, -10**9)
    for i in range(len(client)):  # a re-opening within FLIP_WINDOW sessions of a clearing
        c = seg[i]
        if opened[i] and session[i] - last_clear[c] <= FLIP_WINDOW:
            flips[i] = True
        if cleared[i]:
            last_clear[c] = session[i]

    def per(x):
        out = np.zeros(n)
        np.add.at(out, seg, x.astype(float))
        return out

    early = session <= by_session
    return ClientSummary(
        flag_s3=per(flagged & early) > 0, flag_end=per(flagged) > 0,
        failed=np.asarray(outcomes.failed, dtype=float)[first],
        deteriorated=np.asarray(outcomes.deteriorated, dtype=float)[first],
        n_rows=per(np.ones(len(client), bool)), n_flagged=per(flagged),
        n_cleared=per(cleared), n_flips=per(flips))


def _metrics(s: ClientSummary, idx: np.ndarray) -> dict[str, float]:
    f, d = s.failed[idx], s.deteriorated[idx]
    f3, fe = s.flag_s3[idx], s.flag_end[idx]

    def share(flag, mask):
        return float(flag[mask].mean()) if mask.any() else np.nan

    det, non, imp = d == 1, f == 1, f == 0
    cleared = s.n_cleared[idx].sum()
    return {
        "deteriorators_s3": share(f3, det), "deteriorators_end": share(fe, det),
        "non_improvers_s3": share(f3, non), "non_improvers_end": share(fe, non),
        "improvers_s3": share(f3, imp), "improvers_end": share(fe, imp),
        "ppv_s3": float(non[f3].mean()) if f3.any() else np.nan,
        "flags_per_100": 100 * float(s.n_flagged[idx].sum() / max(s.n_rows[idx].sum(), 1)),
        "flip_rate": float(s.n_flips[idx].sum() / cleared) if cleared else np.nan,
    }


def policy_row(name: str, s: ClientSummary, n_boot: int = 200, seed: int = 0,
               note: str = "") -> dict:
    """One row of the table: every metric with a client-bootstrap 95% interval."""
    known = np.flatnonzero(np.isfinite(s.failed))
    point = _metrics(s, known)
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in point}
    for _ in range(n_boot):
        b = _metrics(s, rng.choice(known, size=len(known), replace=True))
        for k, v in b.items():
            draws[k].append(v)
    row = {"policy": name, "label": LABELS.get(name, name), "clients": len(known),
           "deteriorators": int(np.nansum(s.deteriorated[known] == 1)),
           "improvers": int(np.sum(s.failed[known] == 0)), "note": note}
    for k, v in point.items():
        d = np.asarray(draws[k], float)
        d = d[np.isfinite(d)]
        lo, hi = np.percentile(d, [2.5, 97.5]) if len(d) else (np.nan, np.nan)
        row[k], row[f"{k}_lo"], row[f"{k}_hi"] = v, float(lo), float(hi)
    return row


def per_row_flags(history: History, threshold: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return history.eligible & (history.p >= threshold)


def lambert_flags(history: History) -> np.ndarray:
    return history.red & (history.session >= 2)


def oracle_p(keys: pd.DataFrame, truth: pd.DataFrame | None) -> np.ndarray | None:
    """The oracle's probability per history row (sessions with an ``oracle_failure_s<t>``
    column; NaN elsewhere)."""
    if truth is None:
        return None
    tr = truth.set_index("client_id")
    t = keys["session"].to_numpy()
    out = np.full(len(keys), np.nan)
    for s in np.unique(t):
        col = f"oracle_failure_s{s}"
        if col in tr.columns:
            m = t == s
            out[m] = tr[col].reindex(keys["client_id"][m]).to_numpy(dtype=float)
    return out if np.isfinite(out).any() else None


def oracle_clients(keys: pd.DataFrame, p: np.ndarray, max_session: int = 6) -> np.ndarray:
    """Rows of the clients that have an oracle value at every assessed session up to
    ``max_session`` (and those sessions only)."""
    early = keys["session"].to_numpy() <= max_session
    ok = pd.Series(np.isfinite(p) | ~early).groupby(keys["client_id"].to_numpy()).transform(
        "all").to_numpy()
    has = pd.Series(np.isfinite(p) & early).groupby(keys["client_id"].to_numpy()).transform(
        "any").to_numpy()
    return early & ok & has


@dataclass
class PolicyEvaluation:
    table: pd.DataFrame
    curves: pd.DataFrame  # the cumulative curve of the model (and the oracle) on the same clients
    gap_to_oracle: float | None  # oracle minus policy, deteriorators by session 3, points
    summary: str
    #: per client of the learned policy: client_id, flag_s3, failed, deteriorated (subgroups)
    clients: pd.DataFrame | None = None


def evaluate(history: History, keys: pd.DataFrame, outcomes: Outcomes, policy: FlagPolicy,
             per_row_threshold: float, oracle: np.ndarray | None = None,
             oracle_policy: FlagPolicy | None = None, n_boot: int = 200,
             seed: int = 0) -> PolicyEvaluation:
    """The table of policies on held-out clients (their whole history), the cumulative curves
    and the gap to the oracle."""
    learned = summarise(history, policy.replay(history).flagged, outcomes)
    rows = [
        policy_row("learned", learned, n_boot, seed),
        policy_row("per_row", summarise(history, per_row_flags(history, per_row_threshold),
                                        outcomes), n_boot, seed),
        policy_row("lambert", summarise(history, lambert_flags(history), outcomes), n_boot,
                   seed),
    ]
    curve = pd.DataFrame(cumulative_curve(history, outcomes)).assign(source="model")
    gap = None
    if oracle is not None and oracle_policy is not None:
        m = oracle_clients(keys, oracle)
        h, o = history.subset(m), Outcomes(outcomes.failed[m], outcomes.deteriorated[m])
        ho = h.with_p(oracle[m])
        note = "sessions 1-6 only (the oracle's): 'end' means session 6"
        if oracle_policy.note:
            note += "; " + oracle_policy.note
        rows.append(policy_row("oracle", summarise(ho, oracle_policy.replay(ho).flagged, o),
                               n_boot, seed, note))
        rows.append(policy_row("learned_on_oracle_clients",
                               summarise(h, policy.replay(h).flagged, o), n_boot, seed, note))
        cm = pd.DataFrame(cumulative_curve(h, o)).assign(source="model, oracle's clients")
        co = pd.DataFrame(cumulative_curve(ho, o)).assign(source="oracle")
        curve = pd.concat([curve, cm, co], ignore_index=True)
        mine = rows[-1]
        x = co.sort_values("improvers")
        x = x[np.isfinite(x["improvers"]) & np.isfinite(x["deteriorators"])]
        if len(x) and np.isfinite(mine["deteriorators_s3"]):
            at = float(np.interp(mine["improvers_s3"], x["improvers"], x["deteriorators"]))
            gap = 100 * (at - mine["deteriorators_s3"])
    table = pd.DataFrame(rows)
    lr = table.iloc[0]
    met = lr["deteriorators_s3"] >= 0.85 and lr["improvers_s3"] <= policy.budget + 1e-9
    summary = (f"learned policy: {100 * lr['deteriorators_s3']:.1f}% of eventual reliable "
               f"deteriorators and {100 * lr['improvers_s3']:.1f}% of eventual reliable "
               f"improvers flagged by session {BY_SESSION} "
               f"({'meets' if met else 'does not meet'} 85% at <= "
               f"{100 * policy.budget:.0f}%)")
    if gap is not None:
        summary += (f"; the oracle through the same policy flags {gap:+.1f} points more "
                    "deteriorators at the same false-alarm share")
    client = np.asarray(history.client)
    starts = np.r_[True, client[1:] != client[:-1]] if len(client) else np.empty(0, bool)
    per_client = pd.DataFrame({"client_id": keys["client_id"].to_numpy()[starts],
                               "flag_s3": learned.flag_s3, "failed": learned.failed,
                               "deteriorated": learned.deteriorated})
    return PolicyEvaluation(table, curve, gap, summary, per_client)


def evaluate_on(model, sessions: pd.DataFrame, clients: pd.DataFrame | None,
                truth: pd.DataFrame | None = None, oracle_policy: FlagPolicy | None = None,
                n_boot: int = 200, seed: int = 0) -> PolicyEvaluation | None:
    """The policies replayed on every client of ``sessions`` (their whole histories) with a
    fitted bundle's instrument models (`models.bundle.InstrumentModels`). On simulated data
    the oracle runs through the same policy; without ``oracle_policy`` its threshold is
    chosen on these same clients (an in-sample, slightly generous ceiling: the table says
    so)."""
    from models.assess import policy_history

    if model.flag_policy is None or not len(sessions):
        return None
    inst = model.instrument
    history, keys = policy_history(model, sessions, inst)
    tg = targets(sessions, clients, instrument=inst, target=model.target)
    outcomes = Outcomes(tg["failed"].reindex(keys["client_id"]).to_numpy(float),
                        tg["deteriorated"].reindex(keys["client_id"]).to_numpy(float))
    oracle = None
    if truth is not None and inst == ORACLE_INSTRUMENT and model.target == "failed":
        oracle = oracle_p(keys, truth)
        if oracle is not None and oracle_policy is None:
            m = oracle_clients(keys, oracle)
            oracle_policy = fit_policy(history.subset(m).with_p(oracle[m]),
                                       Outcomes(outcomes.failed[m], outcomes.deteriorated[m]),
                                       budget=model.flag_policy.budget, target=model.target,
                                       note="threshold chosen on the evaluated clients")
    return evaluate(history, keys, outcomes, model.flag_policy,
                    float(model.failure.threshold_), oracle, oracle_policy, n_boot=n_boot,
                    seed=seed)
