"""Outcome targets, defined once for simulated and real cohorts alike.

Two definitions of "not reliably improved", chosen per training run (``--target``):

``failed`` (the default), on the primary instrument (PHQ-9 by default, any registered outcome
instrument otherwise):
  1  when the intake score is in the clinical range (PHQ-9 >= 10), the client has at least two
     scores and the last is not a reliable improvement on intake (PHQ-9: not at least 6 points
     below intake);
  0  when it is;
  missing when the intake is not in the clinical range, there is a single score, or the client
     is still in care (`end_status == "ongoing"`).

``failed_nhs``, the NHS Talking Therapies paired rule (PHQ-9 and GAD-7 scored at the same
sessions; `features.change.nhs_outcomes`):
  1  when the first paired scores are at caseness (PHQ-9 >= 10 or GAD-7 >= 8), there are at
     least two paired scores and the course is not a reliable improvement (PHQ-9 falls by >= 6
     or GAD-7 by >= 4, and neither reliably deteriorates);
  0  when it is; missing otherwise (as above).

`deteriorated` = reliable deterioration first vs last (the instrument's threshold, or the NHS
rule for ``failed_nhs``); `dropped_out` = 1 when `end_status == "dropout"`, 0 for `finished`,
missing for `ongoing`.

The adaptation recommender's outcomes (not ``--target`` choices):

``reliably_improved``: the last score is better than intake by at least the instrument's
  reliable-change threshold (PHQ-9: a fall of 6 or more). `improved_by_end` gives it per
  client from the sessions, missing for a client still in care, with the same change in
  reliable-change units.
``recovered``: reliable improvement that also leaves the clinical range (Jacobson & Truax 1991;
  `features.change.classify`).

Imports features only.

Sources: NHS Talking Therapies manual (reliable improvement on PHQ-9 = a fall of >= 6 points,
GAD-7 >= 4; caseness PHQ-9 >= 10, GAD-7 >= 8), Jacobson & Truax 1991.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.change import (
    Change,
    classify,
    clinical,
    first_last,
    nhs_outcomes,
    paired_first_last,
    rc_units,
    reliable_change,
)

TARGETS: dict[str, str] = {
    "failed": "not reliably improved on the instrument by the end of care",
    "failed_nhs": "not reliably improved by the NHS Talking Therapies paired PHQ-9/GAD-7 rule",
}
#: Instruments the NHS paired target can be used with.
NHS_INSTRUMENTS = ("PHQ-9", "GAD-7")


def check_target(target: str, instrument: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    if target == "failed_nhs" and instrument not in NHS_INSTRUMENTS:
        raise ValueError(f"the NHS paired target needs PHQ-9 or GAD-7 models, not {instrument}")


def targets(sessions: pd.DataFrame, clients: pd.DataFrame | None = None,
            instrument: str = "PHQ-9", target: str = "failed") -> pd.DataFrame:
    """One row per client (index `client_id`): `failed`, `deteriorated`, `dropped_out` as
    float (NaN = missing). ``failed`` holds the chosen target's definition."""
    check_target(target, instrument)
    ids = pd.Index(sessions["client_id"].unique(), name="client_id").sort_values()
    if target == "failed":
        fl = first_last(sessions, instrument).reindex(ids)
        two = (fl["n_scores"].fillna(0) >= 2).to_numpy(dtype=bool)
        eligible = two & clinical(fl["first"], instrument)
        rcu = rc_units(fl["first"], fl["last"], instrument)
        failed = np.where(eligible, np.where(rcu >= 1.0, 0.0, 1.0), np.nan)
        deteriorated = np.where(two, (rcu <= -1.0) * 1.0, np.nan)
    else:
        pairs = paired_first_last(sessions).reindex(ids)
        two = (pairs["n_paired"].fillna(0) >= 2).to_numpy(dtype=bool)
        flags = nhs_outcomes(pairs["phq_first"], pairs["phq_last"], pairs["gad_first"],
                             pairs["gad_last"])
        eligible = two & flags["caseness"].to_numpy(dtype=bool)
        failed = np.where(eligible, np.where(flags["reliable_improvement"], 0.0, 1.0), np.nan)
        deteriorated = np.where(two, flags["reliable_deterioration"] * 1.0, np.nan)
    dropped = np.full(len(ids), np.nan)
    if clients is not None and len(clients):
        status = clients.set_index("client_id")["end_status"].reindex(ids)
        ongoing = (status == "ongoing").to_numpy(dtype=bool)
        failed = np.where(ongoing, np.nan, failed)
        deteriorated = np.where(ongoing, np.nan, deteriorated)
        dropped = np.select([status == "dropout", status == "finished"], [1.0, 0.0], np.nan)
    return pd.DataFrame({"failed": failed, "deteriorated": deteriorated,
                         "dropped_out": dropped}, index=ids)


def reliably_improved(pre, post, instrument: str) -> np.ndarray:
    """True where ``post`` is a reliable improvement on ``pre`` (False where either is NaN)."""
    return reliable_change(pre, post, instrument) == 1


def recovered(pre, post, instrument: str) -> np.ndarray:
    """True where ``post`` is a reliable improvement on ``pre`` that leaves the clinical range."""
    return classify(pre, post, instrument) == Change.RECOVERED


def improved_by_end(sessions: pd.DataFrame, clients: pd.DataFrame | None, ids,
                    instrument: str = "PHQ-9") -> tuple[np.ndarray, np.ndarray]:
    """Per client of ``ids``: 1 reliably improved by the end (intake to last score), 0 not,
    NaN unknown (ongoing); and the intake-to-last improvement in reliable-change units, NaN
    unknown."""
    prim = sessions.loc[sessions["instrument"] == instrument].sort_values(
        ["client_id", "session"], kind="stable").groupby("client_id")["score"]
    first, last = prim.first().reindex(ids), prim.last().reindex(ids)
    y = reliably_improved(first.to_numpy(float), last.to_numpy(float), instrument).astype(float)
    imp = rc_units(first.to_numpy(float), last.to_numpy(float), instrument)
    if clients is not None and len(clients):
        status = clients.set_index("client_id")["end_status"].reindex(ids).astype(object)
        y[(status == "ongoing").to_numpy()] = np.nan
        imp[(status == "ongoing").to_numpy()] = np.nan
    return y, imp


def eligible_at_intake(intake: np.ndarray, instrument: str, target: str = "failed",
                       other_intake: np.ndarray | None = None) -> np.ndarray:
    """Whether a client's outcome is defined by the target, judged at intake: the intake on
    the instrument is in its clinical range (``failed``), or PHQ-9 or GAD-7 is at caseness
    (``failed_nhs``; ``other_intake`` = the other one's intake, NaN when not given)."""
    check_target(target, instrument)
    intake = np.asarray(intake, dtype=float)
    with np.errstate(invalid="ignore"):
        own = clinical(intake, instrument) & np.isfinite(intake)
        if target == "failed" or other_intake is None:
            return own
        other = "GAD-7" if instrument == "PHQ-9" else "PHQ-9"
        o = np.asarray(other_intake, dtype=float)
        return own | (clinical(o, other) & np.isfinite(o))
