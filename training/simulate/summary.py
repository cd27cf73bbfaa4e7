"""The self-checking summary: simulated figures side by side with the published ones.

Rows are `SummaryRow`s. ``tuned`` says whether the simulator's parameters were adjusted to hit
the figure (base rates) or not (everything else: those are checks of the model's structure).
Outcome rates reuse `features.change.nhs_summary` and `features.targets.targets`. Every figure
is computed from the written contract frames (`sessions`, `clients`) only, never from latents.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from features.change import first_last, nhs_summary
from features.instruments import get as get_instrument
from features.targets import targets
from training.simulate.params import FLUCKIGER_ALLIANCE_TO_SYMPTOM, FLUCKIGER_SYMPTOM_TO_ALLIANCE

# Alliance-outcome correlation: r = .278, 95% CI .256-.299, 295 studies (Flückiger, Del Re,
# Wampold & Horvath 2018, Psychotherapy 55:316). Acceptance range .20-.35: OnTrack heuristic.
ALLIANCE_OUTCOME_R = 0.278
ALLIANCE_OUTCOME_RANGE = (0.20, 0.35)

# Therapist share of outcome variance: weighted average 5% over 20 studies, 5% in the 17
# practice-based ones (range 0.2-21%) (Johns, Barkham, Kellett & Saxon 2019, Clin Psychol Rev
# 67:78); about 5% in Baldwin & Imel 2013 (Lambert (ed.), Bergin and Garfield's Handbook, 6th
# ed., p. 258; figure VERIFY); about 5% with intake severity controlled, 581 therapists in
# managed care (Wampold & Brown 2005, J Consult Clin Psychol 73:914). Range 3-7%: OnTrack
# heuristic (5% +- 2 points).
THERAPIST_SHARE_RANGE = (0.03, 0.07)

# Sudden gains (Tang & DeRubeis 1999, J Consult Clin Psychol 67:894). Criterion 2: the gain is
# >= 25% of the pre-gain score. Criterion 3: mean(n-2..n) - mean(n+1..n+3) > t_crit * pooled SD,
# t_crit two-tailed at alpha = .05 with df = n_pre + n_post - 2 (2.776 for 3 + 3 scores; 3.182
# and 4.303 with one or both windows cut to 2 scores, as in Lutz et al. 2013 and the
# suddengains R package, Wiedemann, Thew, Stott & Ehlers 2020, PLoS ONE 15:e0230276).
# Criterion 1 (the gain is >= the reliable change) reads the PHQ-9's RCI from the registry.
SUDDEN_GAIN_SHARE_OF_PRE = 0.25
SUDDEN_GAIN_ALPHA = 0.05
# Published prevalence with these criteria: 39% of completers of 16-session CBT for depression
# (Tang & DeRubeis 1999), 33.5% in interpersonal therapy (Kelly, Cyranowski & Frank 2007,
# Behav Res Ther 45:2563), 17% (23 of 135) in routine clinics on the CORE-SF (Stiles et al.
# 2003, J Consult Clin Psychol 71:14). Meta-analytic prevalence (Aderka et al. 2012; Shalom &
# Aderka 2020, Clin Psychol Rev 76:101827): VERIFY. Range 15-40%: OnTrack heuristic spanning
# those figures.
SUDDEN_GAIN_RANGE = (0.15, 0.40)
# The simplified criterion kept beside it: mean of up to 3 scores before the gain minus mean of
# up to 3 from the gain on >= 5 PHQ-9 points. OnTrack heuristic, no published source.
SIMPLIFIED_SUDDEN_GAIN_MEAN_DROP = 5.0

# Cross-sectional PHQ-9 / GAD-7 correlation, about .6-.8 in clinical and primary-care samples:
# VERIFY (no figure checked). No published correlation of PHQ-9 and GAD-7 change scores was
# found: VERIFY, so that row has no acceptance range.
PHQ_GAD_INTAKE_R_RANGE = (0.60, 0.80)


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


def _phq_histories(sessions: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """PHQ-9 scores per client in session order, left-aligned in a NaN-padded array.

    Consecutive rows are consecutive attended sessions: a missed appointment slot has no row,
    so it is not a session here. Returns (client ids, scores [clients x max count], counts).
    """
    phq = sessions.loc[sessions["instrument"] == "PHQ-9", ["client_id", "session", "score"]]
    phq = phq.dropna(subset=["score"]).sort_values(["client_id", "session"], kind="stable")
    codes, ids = pd.factorize(phq["client_id"], sort=True)
    pos = phq.groupby("client_id", sort=False).cumcount().to_numpy()
    counts = np.bincount(codes, minlength=len(ids))
    scores = np.full((len(ids), int(counts.max()) if len(ids) else 0), np.nan)
    scores[codes, pos] = phq["score"].to_numpy(dtype=float)
    return pd.Index(ids), scores, counts


def sudden_gain_criteria(scores: np.ndarray, rci: float | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tang & DeRubeis's three criteria for every interval n -> n+1 of every history.

    `scores`: clients x sessions, left-aligned, NaN after a client's last score. Column j of
    each returned boolean array is the interval from score j to score j+1 (0-based); it is False
    where the interval cannot be tested (fewer than two scores before or after it).

    1. gain = score[n] - score[n+1] >= the PHQ-9's reliable change (registry RCI);
    2. gain >= 25% of score[n];
    3. mean(score[n-2..n]) - mean(score[n+1..n+3]) > t_crit * pooled SD, with as many of the
       three scores as exist on each side (at least 2), df = n_pre + n_post - 2 and t_crit the
       two-tailed .05 critical value: 2.776, 3.182 or 4.303. The pooled SD (not the standard
       error of the difference) is compared, as in the suddengains package's implementation.
    """
    rci = get_instrument("PHQ-9").rci if rci is None else rci
    s = np.asarray(scores, dtype=float)
    n_cl, length = s.shape
    shape = (n_cl, max(length - 1, 0))
    c1, c2, c3 = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool)
    n_avail = (~np.isnan(s)).sum(axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows of short histories
        for j in range(1, length - 2):
            ok = n_avail >= j + 3  # >= 2 scores after the gain (n+1, n+2); >= 2 before always
            pre = s[:, max(0, j - 2):j + 1]
            post = s[:, j + 1:j + 4]
            n_pre = np.full(n_cl, pre.shape[1], dtype=float)
            n_post = (~np.isnan(post)).sum(axis=1).astype(float)
            gain = s[:, j] - s[:, j + 1]
            df = np.maximum(n_pre + n_post - 2, 1)
            pooled = np.sqrt(((n_pre - 1) * np.nanvar(pre, axis=1, ddof=1)
                              + (n_post - 1) * np.nanvar(post, axis=1, ddof=1)) / df)
            t_crit = stats.t.ppf(1 - SUDDEN_GAIN_ALPHA / 2, df)
            diff = np.nanmean(pre, axis=1) - np.nanmean(post, axis=1)
            c1[:, j] = ok & (gain >= rci)
            c2[:, j] = ok & (gain >= SUDDEN_GAIN_SHARE_OF_PRE * s[:, j])
            c3[:, j] = ok & (diff > t_crit * pooled)
    return c1, c2, c3


def sudden_gain_share(sessions: pd.DataFrame) -> tuple[float, int]:
    """Share of clients with >= 4 PHQ-9 scores who show a Tang & DeRubeis sudden gain.

    All three criteria of `sudden_gain_criteria` on one interval. Denominator: clients with at
    least 4 PHQ-9 scores (the fewest with a testable interval: 2 before and 2 after), ended or
    ongoing. Returns (share, denominator).
    """
    _, scores, counts = _phq_histories(sessions)
    c1, c2, c3 = sudden_gain_criteria(scores)
    eligible = counts >= 4
    hit = (c1 & c2 & c3).any(axis=1)[eligible]
    return (float(hit.mean()) if hit.size else float("nan")), int(eligible.sum())


def simplified_sudden_gain_share(sessions: pd.DataFrame) -> tuple[float, int]:
    """A looser, simplified criterion, reported beside the Tang & DeRubeis one.

    A fall between consecutive scores of >= the PHQ-9's reliable change and >= 25% of the
    pre-gain score, and the mean of up to three scores before the gain (the pre-gain score
    included) exceeding the mean of up to three from the gain on (the post-gain score included)
    by >= 5 points, with at least two scores on each side. The third criterion is a fixed
    5-point drop (OnTrack heuristic) instead of Tang & DeRubeis's t criterion, so a gain in a
    noisy history can pass. Same denominator as `sudden_gain_share`.
    """
    rci = get_instrument("PHQ-9").rci
    _, s, counts = _phq_histories(sessions)
    n_cl, length = s.shape
    hit = np.zeros(n_cl, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(2, length - 1):  # i = first post-gain score
            ok = counts >= i + 2
            drop = s[:, i - 1] - s[:, i]
            diff = (np.nanmean(s[:, max(0, i - 3):i], axis=1)
                    - np.nanmean(s[:, i:i + 3], axis=1))
            hit |= (ok & (drop >= rci) & (drop >= SUDDEN_GAIN_SHARE_OF_PRE * s[:, i - 1])
                    & (diff >= SIMPLIFIED_SUDDEN_GAIN_MEAN_DROP))
    eligible = counts >= 4
    return (float(hit[eligible].mean()) if eligible.any() else float("nan")), int(eligible.sum())


def _client_groups(sessions: pd.DataFrame, clients: pd.DataFrame) -> pd.DataFrame:
    """therapist_id and clinic_id per client.

    From `clients` when it carries them, else from each client's first session row (the data
    contract has them as optional session columns). Missing columns come back as NA.
    """
    out = pd.DataFrame(index=pd.Index(clients["client_id"].unique(), name="client_id"))
    first = None
    for col in ("therapist_id", "clinic_id"):
        if col in clients.columns:
            out[col] = clients.drop_duplicates("client_id").set_index("client_id")[col]
        elif col in sessions.columns:
            if first is None:
                first = (sessions.sort_values(["client_id", "session"], kind="stable")
                         .drop_duplicates("client_id").set_index("client_id"))
            out[col] = first[col].reindex(out.index)
        else:
            out[col] = pd.NA
    return out


def therapist_outcome_sample(sessions: pd.DataFrame, clients: pd.DataFrame) -> pd.DataFrame:
    """Clients for the therapist-effect models: one row each, intake and last PHQ-9.

    Ended courses (end_status not "ongoing"), >= 2 PHQ-9 scores, intake PHQ-9 >= the
    registry's caseness cut-off (10): the clinical cases whose outcome is known. Clients
    without a therapist_id are left out.
    """
    phq = get_instrument("PHQ-9")
    fl = first_last(sessions, "PHQ-9")
    status = clients.drop_duplicates("client_id").set_index("client_id")["end_status"]
    fl = fl[(fl["n_scores"] >= 2) & (fl["first"] >= phq.cutoff)
            & (status.reindex(fl.index).fillna("ongoing") != "ongoing").to_numpy()]
    grp = _client_groups(sessions, clients).reindex(fl.index)
    df = pd.DataFrame({"intake": fl["first"].to_numpy(float), "last": fl["last"].to_numpy(float),
                       "therapist_id": grp["therapist_id"].to_numpy(),
                       "clinic_id": grp["clinic_id"].to_numpy()}, index=fl.index)
    return df[df["therapist_id"].notna()]


def mixed_model_share(y, X, groups) -> float:
    """Therapist share sigma_u^2 / (sigma_u^2 + sigma_e^2) from a random-intercept LMM.

    statsmodels MixedLM, REML, fixed effects `X` (with the constant), one random intercept per
    `groups` value. Fitted with BFGS: L-BFGS-B can stop at the zero-variance boundary with an
    infinite likelihood on these data; Powell is the fallback when BFGS does not converge.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM

    codes = pd.factorize(pd.Series(groups))[0]
    model = MixedLM(np.asarray(y, float), np.asarray(X, float), groups=codes)
    for method in ("bfgs", "powell"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = model.fit(reml=True, method=method)
        var_u = float(np.asarray(fit.cov_re)[0, 0])
        if fit.converged and np.isfinite(fit.llf) and np.isfinite(var_u):
            return var_u / (var_u + float(fit.scale))
    return float("nan")


def moments_share(y, x, groups) -> float:
    """Method-of-moments cross-check: one-way random-effects ANOVA on OLS residuals.

    Residuals of y on (1, x) pooled over clients; sigma_u^2 = (MSB - MSW) / n0 with
    n0 = (N - sum n_i^2 / N) / (k - 1) for unequal group sizes; share = sigma_u^2 /
    (sigma_u^2 + MSW), truncated at 0.
    """
    y = np.asarray(y, float)
    X = np.column_stack([np.ones(len(y)), np.asarray(x, float)])
    e = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    codes = pd.factorize(pd.Series(groups))[0]
    k, n = int(codes.max()) + 1, len(e)
    if k < 2 or n <= k:
        return float("nan")
    n_i = np.bincount(codes)
    m_i = np.bincount(codes, weights=e) / n_i
    msb = float((n_i * (m_i - e.mean()) ** 2).sum()) / (k - 1)
    msw = float(((e - m_i[codes]) ** 2).sum()) / (n - k)
    n0 = (n - (n_i ** 2).sum() / n) / (k - 1)
    var_u = max((msb - msw) / n0, 0.0)
    return float(var_u / (var_u + msw))


def therapist_share(sessions: pd.DataFrame, clients: pd.DataFrame) -> dict[str, float]:
    """Therapist share of outcome variance, estimated three ways on `therapist_outcome_sample`.

    Outcome = last PHQ-9, intake PHQ-9 a fixed covariate. ``mixed``: clients within therapists
    (two levels), clinic not modelled, so any clinic variance is part of the therapist term,
    as in the two-level models behind most published figures. ``mixed_clinic_fixed``: the same
    with clinic dummies as fixed effects, so between-clinic variance is taken out.
    ``moments``: the one-way ANOVA cross-check of the two-level figure.
    """
    df = therapist_outcome_sample(sessions, clients)
    out = {"clients": float(len(df)), "therapists": float(df["therapist_id"].nunique()),
           "mixed": float("nan"), "mixed_clinic_fixed": float("nan"), "moments": float("nan")}
    if out["therapists"] < 2:
        return out
    X = np.column_stack([np.ones(len(df)), df["intake"].to_numpy()])
    out["mixed"] = mixed_model_share(df["last"], X, df["therapist_id"])
    out["moments"] = float(moments_share(df["last"], df["intake"], df["therapist_id"]))
    if df["clinic_id"].notna().all() and df["clinic_id"].nunique() > 1:
        dummies = pd.get_dummies(df["clinic_id"].astype(str), drop_first=True).to_numpy(float)
        out["mixed_clinic_fixed"] = mixed_model_share(df["last"], np.column_stack([X, dummies]),
                                                      df["therapist_id"])
    return out


def phq_gad_correlations(sessions: pd.DataFrame) -> dict[str, float]:
    """PHQ-9 / GAD-7 correlations: of intake scores, and of intake-to-last change.

    Intake = the client's first session (over all instruments). ``intake_r``: Pearson r of the
    two intake scores, clients with both at intake. ``change_r``: Pearson r of (last - intake)
    on the PHQ-9 and on the GAD-7, where last = the last session with both scores, for clients
    with both at intake and >= 2 sessions with both.
    """
    first_session = sessions.groupby("client_id")["session"].min()
    pair = sessions.loc[sessions["instrument"].isin(["PHQ-9", "GAD-7"])].pivot_table(
        index=["client_id", "session"], columns="instrument", values="score", aggfunc="first")
    nan = {"intake_r": float("nan"), "change_r": float("nan"), "n_intake": 0.0, "n_change": 0.0}
    if not {"PHQ-9", "GAD-7"} <= set(pair.columns):
        return nan
    pair = pair.dropna(subset=["PHQ-9", "GAD-7"]).sort_index()
    cid = pair.index.get_level_values("client_id")
    at_intake = (pair.index.get_level_values("session")
                 == first_session.reindex(cid).to_numpy())
    intake = pair[at_intake].droplevel("session")
    g = pair.groupby(level="client_id", sort=True)
    last, n = g.last(), g.size()
    keep = intake.index[(n.reindex(intake.index) >= 2).to_numpy()]
    d_phq = last.loc[keep, "PHQ-9"] - intake.loc[keep, "PHQ-9"]
    d_gad = last.loc[keep, "GAD-7"] - intake.loc[keep, "GAD-7"]

    def r(a, b) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if len(a) >= 3 else float("nan")

    return {"intake_r": r(intake["PHQ-9"], intake["GAD-7"]), "change_r": r(d_phq, d_gad),
            "n_intake": float(len(intake)), "n_change": float(len(keep))}


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
    te = therapist_share(sessions, clients)
    pg = phq_gad_correlations(sessions)
    sg, sg_n = sudden_gain_share(sessions)
    sg_old, _ = simplified_sudden_gain_share(sessions)
    lo_r, hi_r = ALLIANCE_OUTCOME_RANGE
    lo_t, hi_t = THERAPIST_SHARE_RANGE
    lo_s, hi_s = SUDDEN_GAIN_RANGE
    lo_x, hi_x = PHQ_GAD_INTAKE_R_RANGE
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
        SummaryRow("alliance-outcome r", alliance_outcome_r(sessions),
                   f"{ALLIANCE_OUTCOME_R} (between-person; .20-.35)", lo_r, hi_r, False,
                   "Flückiger, Del Re, Wampold & Horvath 2018"),
        SummaryRow("alliance_t -> symptoms_t+1 (std, within)", cl["alliance_to_symptom"],
                   f"{FLUCKIGER_ALLIANCE_TO_SYMPTOM} (negative)", None, None, False,
                   "Flückiger et al. 2020"),
        SummaryRow("symptoms_t -> alliance_t+1 (std, within)", cl["symptom_to_alliance"],
                   f"{FLUCKIGER_SYMPTOM_TO_ALLIANCE} (negative)", None, None, False,
                   "Flückiger et al. 2020"),
        SummaryRow("within-person SD PHQ-9 / SRS (s1-7)",
                   f"{cl['sd_within_phq']:.2f} / {cl['sd_within_srs']:.2f}",
                   "assumed 3.7 / 1.4 for the conversion", None, None, False, "docs/simulator.md"),
        SummaryRow(f"therapist share of outcome variance, mixed model "
                   f"(n={te['clients']:.0f}, {te['therapists']:.0f} therapists)", te["mixed"],
                   "about 5% (3-7%); therapist SD calibrated to it on seed 5", lo_t, hi_t, True,
                   "Johns, Barkham, Kellett & Saxon 2019 (5%); Baldwin & Imel 2013 (VERIFY)"),
        SummaryRow("therapist share: moments / with clinic fixed effects",
                   f"{te['moments']:.1%} / {te['mixed_clinic_fixed']:.1%}",
                   "cross-checks of the row above", None, None, True, "one-way ANOVA; MixedLM"),
        SummaryRow(f"PHQ-9 / GAD-7 change correlation (n={pg['n_change']:.0f})", pg["change_r"],
                   "no published figure found (VERIFY)", None, None, False, ""),
        SummaryRow(f"PHQ-9 / GAD-7 intake correlation (n={pg['n_intake']:.0f})", pg["intake_r"],
                   "about .6-.8, cross-sectional (VERIFY)", lo_x, hi_x, False, "VERIFY"),
        SummaryRow(f"sudden-gain share, Tang & DeRubeis (n={sg_n})", sg,
                   "17% routine care - 39% CBT trials", lo_s, hi_s, False,
                   "Tang & DeRubeis 1999; Kelly et al. 2007; Stiles et al. 2003"),
        SummaryRow("sudden-gain share, simplified criterion (same n)", sg_old,
                   "kept for comparison", None, None, False, "OnTrack heuristic"),
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
                               0.70, 0.85, False, "OnTrack heuristic (realistic difficulty)"))
    return rows


def as_frame(rows: list[SummaryRow]) -> pd.DataFrame:
    return pd.DataFrame([{"figure": r.figure, "simulated": r.simulated, "published": r.published,
                          "in_range": r.in_range, "tuned": r.tuned, "source": r.source}
                         for r in rows])
