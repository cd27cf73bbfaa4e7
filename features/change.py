"""Reliable and clinically significant change, for any registered instrument, and the NHS
Talking Therapies paired PHQ-9 + GAD-7 outcome rules.

Sources:
* Jacobson, N. S. & Truax, P. (1991). Clinical significance: a statistical approach to defining
  meaningful change in psychotherapy research. J Consult Clin Psychol 59:12-19.
* NHS Talking Therapies for anxiety and depression manual (v6, 2023) and the IAPT data handbook:
  caseness PHQ-9 >= 10 or GAD-7 >= 8; reliable change PHQ-9 >= 6, GAD-7 >= 4 points.

Conventions. "Improvement" honours the instrument's direction (for ORS a rise is an
improvement). A change is reliable when it is at least the registry's reliable-change threshold
(the NHS rules say "falls by 6 or more"). Everything here is vectorised over arrays.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pandas as pd

from features.instruments import Instrument, get


class Change(StrEnum):
    RECOVERED = "recovered"
    RELIABLY_IMPROVED = "reliably_improved"
    UNCHANGED = "unchanged"
    RELIABLY_DETERIORATED = "reliably_deteriorated"


def _inst(instrument: str | Instrument) -> Instrument:
    return instrument if isinstance(instrument, Instrument) else get(instrument)


def improvement(pre, post, instrument: str | Instrument) -> np.ndarray:
    """Raw improvement in points (positive = better, whatever the direction)."""
    inst = _inst(instrument)
    return inst.sign * (np.asarray(pre, dtype=float) - np.asarray(post, dtype=float))


def rc_units(pre, post, instrument: str | Instrument) -> np.ndarray:
    """Improvement in units of the reliable-change threshold (1.0 = just reliable)."""
    inst = _inst(instrument)
    if inst.rci is None:
        raise ValueError(f"{inst.code} has no reliable-change threshold in the registry")
    return improvement(pre, post, inst) / inst.rci


def reliable_change(pre, post, instrument: str | Instrument) -> np.ndarray:
    """+1 reliable improvement, -1 reliable deterioration, 0 neither (NaN where input is NaN)."""
    u = rc_units(pre, post, instrument)
    out = np.where(u >= 1.0, 1.0, np.where(u <= -1.0, -1.0, 0.0))
    return np.where(np.isnan(u), np.nan, out)


def clinical(score, instrument: str | Instrument) -> np.ndarray:
    """True where a score lies in the clinical range (caseness)."""
    inst = _inst(instrument)
    if inst.cutoff is None:
        raise ValueError(f"{inst.code} has no clinical cut-off in the registry")
    s = np.asarray(score, dtype=float)
    return s < inst.cutoff if inst.higher_is_better else s >= inst.cutoff


def classify(pre, post, instrument: str | Instrument) -> np.ndarray:
    """Jacobson-Truax category per pair (object array of `Change` values; None where NaN).

    recovered = reliable improvement AND moved from the clinical into the functional range.
    For an instrument without a published cut-off, reliable improvement is the best category.
    """
    inst = _inst(instrument)
    rc = reliable_change(pre, post, inst)
    out = np.full(rc.shape, None, dtype=object)
    out[rc == 0] = Change.UNCHANGED
    out[rc == -1] = Change.RELIABLY_DETERIORATED
    out[rc == 1] = Change.RELIABLY_IMPROVED
    if inst.cutoff is not None:
        crossed = clinical(pre, inst) & ~clinical(post, inst)
        out[(rc == 1) & crossed] = Change.RECOVERED
    return out


# ------------------------------------------------------------------------------------------
# NHS Talking Therapies: paired PHQ-9 + GAD-7
# ------------------------------------------------------------------------------------------
def nhs_outcomes(phq_first, phq_last, gad_first, gad_last) -> pd.DataFrame:
    """NHS Talking Therapies outcome flags for paired first/last PHQ-9 and GAD-7 scores.

    caseness: PHQ-9 >= 10 or GAD-7 >= 8 at the first paired score.
    recovery: caseness at first AND neither measure at caseness at last.
    reliable improvement: PHQ-9 falls >= 6 or GAD-7 falls >= 4, and neither reliably
    deteriorates. reliable deterioration: PHQ-9 rises >= 6 or GAD-7 rises >= 4, and neither
    reliably improves. Tie rule implemented: when one measure reliably improves and the other
    reliably deteriorates, the course counts as neither (NHS Talking Therapies manual).
    reliable recovery: recovery AND reliable improvement.
    """
    pf, pl = np.asarray(phq_first, float), np.asarray(phq_last, float)
    gf, gl = np.asarray(gad_first, float), np.asarray(gad_last, float)
    rp, rg = reliable_change(pf, pl, "PHQ-9"), reliable_change(gf, gl, "GAD-7")
    case_first = clinical(pf, "PHQ-9") | clinical(gf, "GAD-7")
    case_last = clinical(pl, "PHQ-9") | clinical(gl, "GAD-7")
    improved = ((rp == 1) | (rg == 1)) & (rp != -1) & (rg != -1)
    deteriorated = ((rp == -1) | (rg == -1)) & (rp != 1) & (rg != 1)
    recovery = case_first & ~case_last
    return pd.DataFrame(
        {
            "caseness": case_first,
            "recovery": recovery,
            "reliable_improvement": improved,
            "reliable_deterioration": deteriorated,
            "reliable_recovery": recovery & improved,
        }
    )


def first_last(sessions: pd.DataFrame, instrument: str) -> pd.DataFrame:
    """Per client: first and last score on an instrument, their sessions and the count."""
    s = sessions.loc[sessions["instrument"] == instrument, ["client_id", "session", "score"]]
    s = s.sort_values(["client_id", "session"], kind="stable")
    g = s.groupby("client_id", sort=True)
    out = pd.DataFrame(
        {
            "first": g["score"].first(),
            "last": g["score"].last(),
            "first_session": g["session"].first(),
            "last_session": g["session"].last(),
            "n_scores": g["score"].size(),
        }
    )
    return out


def paired_first_last(sessions: pd.DataFrame) -> pd.DataFrame:
    """Per client: first and last sessions at which BOTH PHQ-9 and GAD-7 were scored."""
    wide = sessions.loc[sessions["instrument"].isin(["PHQ-9", "GAD-7"])].pivot_table(
        index=["client_id", "session"], columns="instrument", values="score", aggfunc="first"
    )
    if not {"PHQ-9", "GAD-7"} <= set(wide.columns):
        return pd.DataFrame(columns=["phq_first", "phq_last", "gad_first", "gad_last", "n_paired"])
    wide = wide.dropna(subset=["PHQ-9", "GAD-7"]).sort_index()
    g = wide.groupby(level="client_id", sort=True)
    return pd.DataFrame(
        {
            "phq_first": g["PHQ-9"].first(),
            "phq_last": g["PHQ-9"].last(),
            "gad_first": g["GAD-7"].first(),
            "gad_last": g["GAD-7"].last(),
            "n_paired": g["PHQ-9"].size(),
        }
    )


def nhs_summary(sessions: pd.DataFrame) -> dict[str, float] | None:
    """NHS rates among finished courses (>= 2 paired scores) that started at caseness."""
    pairs = paired_first_last(sessions)
    finished = pairs[pairs["n_paired"] >= 2]
    if finished.empty:
        return None
    flags = nhs_outcomes(finished["phq_first"], finished["phq_last"], finished["gad_first"],
                         finished["gad_last"])
    at_case = flags[flags["caseness"].to_numpy()]
    n = len(at_case)

    def rate(column: str) -> float:
        return float(at_case[column].mean()) if n else float("nan")

    return {
        "finished_courses": float(len(finished)),
        "at_caseness": float(n),
        "recovery": rate("recovery"),
        "reliable_improvement": rate("reliable_improvement"),
        "reliable_deterioration": rate("reliable_deterioration"),
        "reliable_recovery": rate("reliable_recovery"),
    }


def instrument_summary(sessions: pd.DataFrame, instrument: str) -> dict[str, float]:
    """Jacobson-Truax categories (first vs last score) among clients with >= 2 scores."""
    fl = first_last(sessions, instrument)
    two = fl[fl["n_scores"] >= 2]
    cats = pd.Series(classify(two["first"], two["last"], instrument), index=two.index)
    out: dict[str, float] = {
        "clients": float(len(fl)),
        "with_2_scores": float(len(two)),
        "single_score": float((fl["n_scores"] == 1).sum()),
    }
    inst = get(instrument)
    if inst.cutoff is not None:
        start_clin = clinical(two["first"], inst)
        out["start_in_clinical_range"] = float(start_clin.sum())
    for c in Change:
        out[c.value] = float((cats == c).mean()) if len(two) else float("nan")
    return out
