"""The not-on-track flag: a policy fitted with the bundle, replayed over a client's history.

A therapist sees one badge per client. It must be a signal, so it is not the per-session
``p >= threshold`` of a risk model (at 80% sensitivity per session about half of all sessions
are flagged, and by session 3 most clients have been flagged once). The policy:

* **No model flag at intake.** The intake risk is shown as context only.
* **Entry** at a later session when any of these holds (the trigger that opened the flag is
  kept as its reason):
  ``risk`` - the calibrated risk of not improving reaches the entry threshold;
  ``red_twice`` - the signal is red (beyond the not-on-track boundary) at two consecutive
  scores (Lambert's red signal, asked twice so that one noisy score does not flag);
  ``reliable_deterioration`` - the score is reliably worse than at intake.
  Clients who started below the clinical cut-off have no risk (their outcome is not defined)
  and are monitored for reliable deterioration only.
* **Exit (hysteresis).** A flag clears only after ``exit_sessions`` consecutive scores with the
  risk below the lower exit threshold and neither trigger of the signal or deterioration.
* **States** per assessed session: ``new`` (opened at this session), ``continuing``,
  ``cleared`` (was flagged, cleared since) and ``none``.

The state at session t is a pure function of the history up to t (`replay` reads nothing
later), so the service stays stateless and a replay gives the answer the clinic saw.

The entry threshold is chosen by `fit_policy` on out-of-fold risks (folds grouped by client)
for a **cumulative** budget: at most ``budget`` (default 30%) of the clients who went on to
reliably improve may have been flagged by session 3. The budget is a ceiling: the threshold
is the lowest whose share's one-sided 95% upper bound (Wilson) is within it, so that new
clients stay within the budget, not just the fitting ones. The thresholds and the sensitivities they
achieved travel in the bundle, and the stored curve lets a clinic pick its own budget without
refitting (`FlagPolicy.for_budget`).

OnTrack heuristics (not published values): the 30% budget, the exit threshold 10 percentage
points below entry, two calm sessions to clear, and two red scores in a row. Hannan et al.
(2005) give the anchor the policy is judged against: 85% of eventual deteriorators flagged by
session 3, 100% by the end of treatment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from features.thresholds import (  # the policy's named thresholds, with their sources
    BY_SESSION,
    DEFAULT_BUDGET,
    EXIT_MARGIN,
    EXIT_SESSIONS,
    RED_IN_A_ROW,
)

TRIGGERS: tuple[str, ...] = ("risk", "red_twice", "reliable_deterioration")
STATES: tuple[str, ...] = ("none", "new", "continuing", "cleared")

_RISK, _RED, _DET = 1, 2, 4  # trigger bits, in the order of TRIGGERS
_WORDS = {
    "risk": "the risk of not improving reached the entry level",
    "red_twice": "the score was beyond the not-on-track boundary at two sessions in a row",
    "reliable_deterioration": "the score is reliably worse than at intake",
}


def trigger_names(bits: int) -> list[str]:
    return [name for k, name in enumerate(TRIGGERS) if bits & (1 << k)]


def trigger_words(bits: int) -> str:
    return "; ".join(_WORDS[n] for n in trigger_names(bits))


@dataclass(frozen=True)
class History:
    """What the policy reads, one entry per assessed session (a score on the instrument),
    sorted by client and then session.

    client: int codes, non-decreasing; session: session numbers; p: calibrated risk of not
    improving as of that session (NaN: none); red: the signal was red; deteriorated: reliably
    worse than at intake; eligible: the client started in the clinical range (a model flag is
    possible), per row.
    """

    client: np.ndarray
    session: np.ndarray
    p: np.ndarray
    red: np.ndarray
    deteriorated: np.ndarray
    eligible: np.ndarray

    def __len__(self) -> int:
        return len(self.client)

    def subset(self, mask: np.ndarray) -> History:
        return History(*(getattr(self, f)[mask] for f in
                         ("client", "session", "p", "red", "deteriorated", "eligible")))

    def with_p(self, p: np.ndarray) -> History:
        return replace(self, p=np.asarray(p, dtype=float))


@dataclass(frozen=True)
class Replay:
    """The policy's answer per entry of a `History` (same order)."""

    state: np.ndarray  # index into STATES
    flagged: np.ndarray  # new or continuing
    opened_by: np.ndarray  # trigger bits of the current (or last) flag; 0 = never flagged
    opened_session: np.ndarray  # -1 = never flagged
    cleared_session: np.ndarray  # -1 = not cleared since the last opening
    entered: np.ndarray  # a flag opened at this session
    cleared: np.ndarray  # a flag cleared at this session

    def state_names(self) -> np.ndarray:
        return np.asarray(STATES, dtype=object)[self.state]


def _grid_positions(client: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(row in grid, column) per entry; entries must be sorted by client."""
    n = len(client)
    if n == 0:
        return np.empty(0, int), np.empty(0, int), 0, 0
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(client[1:], client[:-1], out=new[1:])
    seg = np.cumsum(new) - 1
    start = np.flatnonzero(new)
    col = np.arange(n) - start[seg]
    return seg, col, int(seg[-1]) + 1, int(col.max()) + 1


def replay(history: History, entry: float, exit: float,
           exit_sessions: int = EXIT_SESSIONS) -> Replay:
    """Run the policy over every client's history at once (a loop over session positions,
    vectorised over clients). Pure: the answer at an entry depends only on earlier entries of
    the same client."""
    seg, col, n_seg, width = _grid_positions(np.asarray(history.client))
    n = len(seg)

    def grid(values, fill):
        g = np.full((n_seg, width), fill, dtype=np.asarray(values).dtype if n else float)
        g[seg, col] = values
        return g

    valid = grid(np.ones(n, dtype=bool), False)
    P = grid(np.asarray(history.p, dtype=float), np.nan)
    red = grid(np.asarray(history.red, dtype=bool), False)
    det = grid(np.asarray(history.deteriorated, dtype=bool), False)
    elig = grid(np.asarray(history.eligible, dtype=bool), False)
    S = grid(np.asarray(history.session, dtype=np.int64), -1)

    with np.errstate(invalid="ignore"):
        risk_hit = elig & (P >= entry)
        risk_calm = ~(P >= exit)  # NaN (no risk) is calm
    risk_hit[:, 0] = False  # no model flag at intake
    red_twice = np.zeros_like(red)  # red at RED_IN_A_ROW consecutive sessions, the last eligible
    k = RED_IN_A_ROW
    red_twice[:, k - 1:] = elig[:, k - 1:]
    for j in range(k):
        red_twice[:, k - 1:] &= red[:, k - 1 - j:red.shape[1] - j]
    bits = (risk_hit * _RISK | red_twice * _RED | det * _DET).astype(np.int64)
    calm = valid & ~det & (~elig | (risk_calm & ~red))

    out_state = np.zeros((n_seg, width), dtype=np.int64)
    out_flag = np.zeros((n_seg, width), dtype=bool)
    out_bits = np.zeros((n_seg, width), dtype=np.int64)
    out_open = np.full((n_seg, width), -1, dtype=np.int64)
    out_clear = np.full((n_seg, width), -1, dtype=np.int64)
    out_enter = np.zeros((n_seg, width), dtype=bool)
    out_cleared = np.zeros((n_seg, width), dtype=bool)

    flagged = np.zeros(n_seg, dtype=bool)
    ever = np.zeros(n_seg, dtype=bool)
    calm_run = np.zeros(n_seg, dtype=np.int64)
    opened_by = np.zeros(n_seg, dtype=np.int64)
    opened_at = np.full(n_seg, -1, dtype=np.int64)
    cleared_at = np.full(n_seg, -1, dtype=np.int64)
    for c in range(width):
        v = valid[:, c]
        enter = v & ~flagged & (bits[:, c] > 0)
        stay = v & flagged
        calm_run = np.where(stay & calm[:, c], calm_run + 1, np.where(v, 0, calm_run))
        clear = stay & (calm_run >= exit_sessions)
        opened_by = np.where(enter, bits[:, c], opened_by)
        opened_at = np.where(enter, S[:, c], opened_at)
        cleared_at = np.where(enter, -1, np.where(clear, S[:, c], cleared_at))
        flagged = (flagged & ~clear) | enter
        ever |= enter
        calm_run = np.where(enter | clear, 0, calm_run)
        state = np.where(enter, 1, np.where(flagged, 2, np.where(ever, 3, 0)))
        out_state[:, c], out_flag[:, c], out_bits[:, c] = state, flagged, opened_by
        out_open[:, c], out_clear[:, c] = opened_at, cleared_at
        out_enter[:, c], out_cleared[:, c] = enter, clear
    return Replay(out_state[seg, col], out_flag[seg, col], out_bits[seg, col],
                  out_open[seg, col], out_clear[seg, col], out_enter[seg, col],
                  out_cleared[seg, col])


# ------------------------------------------------------------------------------------------
# Fitting: the entry threshold for a cumulative budget
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcomes:
    """Eventual outcome per `History` entry (the client's, repeated on its rows): 1/0/NaN."""

    failed: np.ndarray  # not reliably improved (the model's target)
    deteriorated: np.ndarray  # eventual reliable deterioration


def first_by(history: History, by_session: int = BY_SESSION
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per client (in code order): the highest risk at an eligible non-intake session up to
    ``by_session`` (NaN if none), whether a rule (red twice, deterioration) fired by then, and
    the position of the client's first entry. The cumulative flag by ``by_session`` at entry
    threshold e is ``max_p >= e or rule`` (entry does not depend on the exit)."""
    seg, col, n_seg, _ = _grid_positions(np.asarray(history.client))
    early = history.session <= by_session
    p = np.where(early & history.eligible & (col > 0), history.p, np.nan)
    max_p = np.full(n_seg, np.nan)
    if len(seg):
        np.fmax.at(max_p, seg, p)
    zero = replay(history, entry=np.inf, exit=-np.inf)  # rules only: entries by the rules
    rule = np.zeros(n_seg, dtype=bool)
    np.logical_or.at(rule, seg, zero.entered & early)
    first = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]]) if len(seg) else np.empty(0, int)
    return max_p, rule, first


@dataclass
class FlagPolicy:
    """The fitted policy (thresholds, the budget it was chosen for, what it achieved)."""

    entry: float
    exit: float
    exit_sessions: int = EXIT_SESSIONS
    budget: float = DEFAULT_BUDGET
    by_session: int = BY_SESSION
    target: str = "failed"
    #: On the out-of-fold risks: per candidate entry threshold, the share flagged by
    #: ``by_session`` of eventual reliable improvers, deteriorators and non-improvers, and
    #: the PPV (share of flagged clients who did not reliably improve).
    curve: dict[str, list[float]] = field(default_factory=dict)
    achieved: dict[str, float] = field(default_factory=dict)
    auroc: float | None = None  # the risk model's AUROC at session `by_session` (context)
    note: str = ""

    def replay(self, history: History) -> Replay:
        return replay(history, self.entry, self.exit, self.exit_sessions)

    def for_budget(self, budget: float) -> FlagPolicy:
        """The same policy with the entry threshold the stored curve gives for another budget
        (a clinic's own): the lowest threshold whose improver share is within it."""
        if budget == self.budget or not self.curve:
            return self
        entry, achieved = _pick(self.curve, budget)
        return replace(self, entry=entry, exit=max(entry - EXIT_MARGIN, 0.0), budget=budget,
                       achieved=achieved)

    def describe(self) -> str:
        """The policy and what a flag means, in words (the model card and the web view)."""
        a = self.achieved
        parts = [
            f"A client is flagged after intake when the risk of not improving reaches "
            f"{100 * self.entry:.0f}%, when the score is beyond the not-on-track boundary at "
            "two sessions in a row, or when it is reliably worse than at intake; the flag "
            f"clears after {self.exit_sessions} sessions below {100 * self.exit:.0f}% without "
            "either of the other two."]
        if a:
            parts.append(
                f"Chosen so that at most {100 * self.budget:.0f}% of clients who went on to "
                f"reliably improve were flagged by session {self.by_session} (in validation "
                f"{_pct(a.get('improvers'))}); {_pct(a.get('deteriorators'))} of clients who "
                f"went on to reliably deteriorate and {_pct(a.get('non_improvers'))} of those "
                f"who did not improve were flagged by then. Of 100 clients flagged by session "
                f"{self.by_session}, about {_n(100 * a.get('ppv', np.nan))} did not reliably "
                "improve (positive predictive value).")
        if self.auroc is not None and np.isfinite(self.auroc):
            parts.append(f"The risk model's AUROC at session {self.by_session}: "
                         f"{self.auroc:.2f}.")
        if self.note:
            parts.append(self.note)
        return " ".join(parts)


def _pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.0f}%"


def _n(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.0f}"


def _wilson_upper(share: np.ndarray, n: np.ndarray, z: float = 1.645) -> np.ndarray:
    """One-sided 95% Wilson upper bound of a share (Wilson 1927)."""
    share, n = np.asarray(share, float), np.maximum(np.asarray(n, float), 1.0)
    centre = share + z * z / (2 * n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return (centre + half) / (1 + z * z / n)


def _pick(curve: dict[str, list[float]], budget: float) -> tuple[float, dict[str, float]]:
    """The lowest entry threshold whose improver share is within the budget with 95%
    confidence (its one-sided Wilson upper bound on the fitting clients), so that new clients
    stay within it too; the budget is a ceiling, not a target."""
    thr = np.asarray(curve["threshold"], dtype=float)
    imp = np.asarray(curve["improvers"], dtype=float)
    if "n_improvers" in curve:
        imp = _wilson_upper(imp, np.asarray(curve["n_improvers"], float))
    ok = np.flatnonzero(imp <= budget + 1e-12)
    j = int(ok[np.argmin(thr[ok])]) if len(ok) else int(np.argmax(thr))
    return float(thr[j]), {k: float(v[j]) for k, v in curve.items() if k != "threshold"}


def cumulative_curve(history: History, outcomes: Outcomes, by_session: int = BY_SESSION,
                     thresholds: np.ndarray | None = None) -> dict[str, list[float]]:
    """Shares flagged by ``by_session`` (entry threshold swept; the rules always count), over
    clients with a known outcome."""
    max_p, rule, first = first_by(history, by_session)
    failed = np.asarray(outcomes.failed, dtype=float)[first]
    det = np.asarray(outcomes.deteriorated, dtype=float)[first]
    known = np.isfinite(failed)
    max_p, rule, failed, det = max_p[known], rule[known], failed[known], det[known]
    if thresholds is None:
        finite = max_p[np.isfinite(max_p)]
        qs = np.unique(np.quantile(finite, np.linspace(0, 1, 401))) if len(finite) else []
        thresholds = np.r_[qs, np.inf]
    thresholds = np.sort(np.asarray(thresholds, dtype=float))
    with np.errstate(invalid="ignore"):
        flag = (max_p[None, :] >= thresholds[:, None]) | rule[None, :]
    imp, non, dete = failed == 0, failed == 1, det == 1

    def share(mask):
        return (flag[:, mask].mean(axis=1) if mask.any()
                else np.full(len(thresholds), np.nan))

    n_flag = flag.sum(axis=1)
    ppv = np.where(n_flag > 0, (flag & non[None, :]).sum(axis=1) / np.maximum(n_flag, 1),
                   np.nan)
    return {"threshold": thresholds.tolist(), "improvers": share(imp).tolist(),
            "deteriorators": share(dete).tolist(), "non_improvers": share(non).tolist(),
            "ppv": ppv.tolist(), "flagged": flag.mean(axis=1).tolist(),
            "n_clients": [float(len(failed))] * len(thresholds),
            "n_deteriorators": [float(dete.sum())] * len(thresholds),
            "n_improvers": [float(imp.sum())] * len(thresholds)}


def fit_policy(history: History, outcomes: Outcomes, budget: float = DEFAULT_BUDGET,
               by_session: int = BY_SESSION, exit_margin: float = EXIT_MARGIN,
               exit_sessions: int = EXIT_SESSIONS, target: str = "failed",
               auroc: float | None = None, note: str = "") -> FlagPolicy:
    """The entry threshold for ``budget`` on out-of-fold risks (``history.p``): the lowest
    threshold at which at most ``budget`` of eventual reliable improvers are flagged by
    ``by_session``, with 95% confidence (`_pick`). When the rules alone exceed the budget the
    risk never opens a flag and the policy says so; ``note`` is carried into its
    description."""
    if not 0.0 < budget < 1.0:
        raise ValueError(f"budget must be a share between 0 and 1; got {budget!r}")
    if exit_sessions < 1:
        raise ValueError(f"exit_sessions must be at least 1; got {exit_sessions!r}")
    curve = cumulative_curve(history, outcomes, by_session)
    if not np.isfinite(curve["improvers"]).any():
        raise ValueError("no eventual reliable improvers with a known outcome: the budget "
                         "cannot be applied")
    entry, achieved = _pick(curve, budget)
    if not np.isfinite(entry):
        note = (f"The signal and deterioration rules alone flag "
                f"{_pct(achieved.get('improvers'))} of eventual improvers by session "
                f"{by_session}, more than the budget: the risk opens no flag.")
        entry = 1.0 + 1e-9
    store = {k: [float(x) for x in v] for k, v in curve.items()}
    store["threshold"] = [min(t, 1.0 + 1e-9) for t in store["threshold"]]
    return FlagPolicy(entry=float(entry), exit=float(max(entry - exit_margin, 0.0)),
                      exit_sessions=exit_sessions, budget=budget, by_session=by_session,
                      target=target, curve=store, achieved=achieved, auroc=auroc, note=note)
