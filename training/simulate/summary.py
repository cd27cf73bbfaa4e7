"""The self-checking summary: simulated figures side by side with the published ones.

Rows are `SummaryRow`s. ``tuned`` says whether the simulator's parameters were adjusted to hit
the figure (base rates) or not (everything else: those are checks of the model's structure).
Outcome rates reuse `features.change.nhs_summary` and `features.targets.targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.change import nhs_summary
from features.targets import targets
from training.simulate.params import FLUCKIGER_ALLIANCE_TO_SYMPTOM, FLUCKIGER_SYMPTOM_TO_ALLIANCE


@dataclass(frozen=True)
class SummaryRow:
    figure: str
    simulated: float | str
    published: str
    low: float | None  # acceptance range, when there is one
    high: float | None
    tuned: bool
    source: str

    @property
    def in_range(self) -> bool | None:
        if self.low is None or not isinstance(self.simulated, float) or np.isnan(self.simulated):
            return None
        return self.low <= self.simulated <= self.high


def _wide(sessions: pd.DataFrame) -> pd.DataFrame:
    return sessions.pivot_table(index=["client_id", "session"], columns="instrument",
                                values="score", aggfunc="first").sort_index()


def cross_lagged(sessions: pd.DataFrame, max_session: int = 7) -> dict[str, float]:
    """Within-person cross-lagged coefficients, standardised as in Flückiger et al. 2020.

    Sessions 1..`max_session`, clients with >= 4 paired PHQ-9/SRS scores there. Each score is
    centred on the person's mean and divided by the pooled within-person SD; consecutive
    attended sessions form the lagged pairs. Two OLS fits with log(session) as a covariate (the
    course trend would otherwise bias the within-person paths):
    PHQ_next ~ PHQ_now + SRS_now + log(session) and SRS_next ~ SRS_now + PHQ_now + log(session).
    """
    w = _wide(sessions[sessions["session"] <= max_session])[["PHQ-9", "SRS"]].dropna()
    cid = w.index.get_level_values("client_id")
    n = w.groupby(level="client_id").size()
    w = w[cid.isin(n.index[n >= 4])]
    cid = w.index.get_level_values("client_id").to_numpy()
    t = np.log(w.index.get_level_values("session").to_numpy(dtype=float))
    cen = w - w.groupby(level="client_id").transform("mean")
    sd = np.sqrt((cen**2).mean())
    z = (cen / sd).to_numpy()
    same = cid[1:] == cid[:-1]
    X = np.column_stack([np.ones(same.sum()), z[:-1][same], t[1:][same]])
    b_sym = np.linalg.lstsq(X, z[1:, 0][same], rcond=None)[0]  # [const, PHQ, SRS, time]
    b_all = np.linalg.lstsq(X, z[1:, 1][same], rcond=None)[0]
    return {"alliance_to_symptom": float(b_sym[2]), "symptom_to_alliance": float(b_all[1]),
            "sd_within_phq": float(sd["PHQ-9"]), "sd_within_srs": float(sd["SRS"]),
            "pairs": float(same.sum())}


def sudden_gain_share(sessions: pd.DataFrame) -> float:
    """Share of clients with >= 4 PHQ-9 scores who show a sudden gain.

    Criteria adapted from Tang & DeRubeis 1999 to the PHQ-9: a fall between consecutive
    attended sessions of >= 6 points (the reliable change) and >= 25% of the pre-gain score,
    and (their third criterion, simplified) the mean of up to three scores before the gain
    exceeds the mean of up to three scores from the gain on by >= 5 points, with at least two
    scores on each side.
    """
    phq = sessions[sessions["instrument"] == "PHQ-9"].sort_values(["client_id", "session"])
    flags = []
    for _, g in phq.groupby("client_id", sort=False):
        s = g["score"].to_numpy()
        if len(s) < 4:
            continue
        hit = False
        for i in range(2, len(s) - 1):
            drop = s[i - 1] - s[i]
            if (drop >= 6 and drop >= 0.25 * s[i - 1]
                    and s[max(0, i - 3):i].mean() - s[i:i + 3].mean() >= 5):
                hit = True
                break
        flags.append(hit)
    return float(np.mean(flags)) if flags else float("nan")


def alliance_outcome_r(sessions: pd.DataFrame) -> float:
    """Correlation of a client's mean SRS with pre-post PHQ-9 improvement (>= 2 scores)."""
    w = _wide(sessions)
    g = w.groupby(level="client_id")
    phq = w["PHQ-9"].dropna().groupby(level="client_id")
    df = pd.DataFrame({"srs": g["SRS"].mean(), "impr": phq.first() - phq.last(),
                       "n": phq.size()}).dropna()
    df = df[df["n"] >= 2]
    return float(np.corrcoef(df["srs"], df["impr"])[0, 1])


def oracle_auroc(truth: pd.DataFrame, t: int = 3) -> tuple[float, int]:
    from sklearn.metrics import roc_auc_score

    col = f"oracle_failure_s{t}"
    ok = truth["failed"].notna() & truth[col].notna()
    if ok.sum() < 10 or truth.loc[ok, "failed"].nunique() < 2:
        return float("nan"), int(ok.sum())
    return float(roc_auc_score(truth.loc[ok, "failed"], truth.loc[ok, col])), int(ok.sum())


def summary(sessions: pd.DataFrame, clients: pd.DataFrame, truth: pd.DataFrame | None = None
            ) -> list[SummaryRow]:
    """Comparison rows: tuned base rates first, then figures that were not tuned for."""
    tg = targets(sessions, clients)
    nhs = nhs_summary(sessions) or {}
    ended = clients[clients["end_status"] != "ongoing"]
    att = sessions[sessions["instrument"] == "PHQ-9"].groupby("client_id").size()
    n_sess = att.reindex(ended["client_id"]).fillna(0)
    fin = att.reindex(clients.loc[clients["end_status"] == "finished", "client_id"]).fillna(0)
    cl = cross_lagged(sessions)
    q = np.percentile(n_sess, [10, 25, 50, 75, 90]) if len(n_sess) else [np.nan] * 5
    rows = [
        SummaryRow("dropout (ended courses)", float(tg["dropped_out"].mean()), "20-35%",
                   0.20, 0.35, True, "Swift & Greenberg 2012 (~20%); ~30% outpatient CBT"),
        SummaryRow("reliable improvement", nhs.get("reliable_improvement", np.nan), "60-75% (NHS 67-69%)",
                   0.60, 0.75, True, "NHS Talking Therapies annual reports"),
        SummaryRow("reliable recovery", nhs.get("reliable_recovery", np.nan), "45-55% (NHS 48-51%)",
                   0.45, 0.55, True, "NHS Talking Therapies annual reports"),
        SummaryRow("reliable deterioration", nhs.get("reliable_deterioration", np.nan), "5-10%",
                   0.05, 0.10, True, "domain.md: 5-10% of adults"),
        SummaryRow("mean sessions, finished courses", float(fin.mean()), "~6.9 (NHS 2019-20)",
                   None, None, True, "NHS Talking Therapies 2019-20"),
        SummaryRow("alliance-outcome r", alliance_outcome_r(sessions), "0.30 (between-person)",
                   None, None, False, "Flückiger et al. (alliance meta-analyses)"),
        SummaryRow("alliance_t -> symptoms_t+1 (std, within)", cl["alliance_to_symptom"],
                   f"{FLUCKIGER_ALLIANCE_TO_SYMPTOM} (negative)", None, None, False,
                   "Flückiger et al. 2020"),
        SummaryRow("symptoms_t -> alliance_t+1 (std, within)", cl["symptom_to_alliance"],
                   f"{FLUCKIGER_SYMPTOM_TO_ALLIANCE} (negative)", None, None, False,
                   "Flückiger et al. 2020"),
        SummaryRow("within-person SD PHQ-9 / SRS (s1-7)",
                   f"{cl['sd_within_phq']:.2f} / {cl['sd_within_srs']:.2f}",
                   "assumed 3.7 / 1.4 for the conversion", None, None, False, "docs/simulator.md"),
        SummaryRow("sudden-gain share (>= 4 scores)", sudden_gain_share(sessions),
                   "a sizeable minority (VERIFY)", None, None, False, "domain.md"),
        SummaryRow("sessions attended p10/p25/p50/p75/p90 (ended)",
                   "/".join(f"{v:.0f}" for v in q), "mean ~6.9; ~37% finish a course", None,
                   None, False, "NHS Talking Therapies"),
        SummaryRow("single-session courses (ended)", float((n_sess == 1).mean()), "not published here",
                   None, None, False, ""),
        SummaryRow("clients at caseness with >= 2 paired scores", nhs.get("at_caseness", np.nan),
                   "", None, None, False, ""),
    ]
    if truth is not None and "oracle_failure_s3" in truth:
        auc, n = oracle_auroc(truth, 3)
        rows.append(SummaryRow(f"oracle AUROC at session 3 (n={n})", auc, "0.70-0.85 expected",
                               0.70, 0.85, False, "issue 3 (realistic difficulty)"))
    return rows


def as_frame(rows: list[SummaryRow]) -> pd.DataFrame:
    return pd.DataFrame([{"figure": r.figure, "simulated": r.simulated, "published": r.published,
                          "in_range": r.in_range, "tuned": r.tuned, "source": r.source}
                         for r in rows])
