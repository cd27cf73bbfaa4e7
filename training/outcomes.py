"""A cohort's outcome table: Jacobson-Truax categories per instrument and the NHS paired rules."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from features.change import Change, instrument_summary, nhs_summary
from features.contract import Cohort
from features.instruments import REGISTRY, Role


def cohort_overview(cohort: Cohort) -> dict[str, float]:
    """Clients, sessions attended per client, end status shares."""
    s = cohort.sessions
    attended = s.groupby("client_id")["session"].nunique()
    out = {
        "clients": float(len(attended)),
        "session_rows": float(len(s)),
        "mean_sessions_attended": float(attended.mean()) if len(attended) else float("nan"),
        "clients_with_single_session": float((attended == 1).sum()),
    }
    if len(cohort.clients):
        status = cohort.clients["end_status"].value_counts(normalize=True)
        for k in ("finished", "dropout", "ongoing"):
            out[f"share_{k}"] = float(status.get(k, 0.0))
    return out


def outcome_frame(cohort: Cohort) -> pd.DataFrame:
    """One row per outcome instrument in the cohort: counts and category shares."""
    rows = {}
    present = [c for c in REGISTRY if c in set(cohort.sessions["instrument"].unique())]
    for code in present:
        inst = REGISTRY[code]
        if inst.role is not Role.OUTCOME or inst.rci is None:
            continue
        rows[code] = instrument_summary(cohort.sessions, code)
    return pd.DataFrame.from_dict(rows, orient="index")


def _pct(x: float) -> str:
    return "—" if pd.isna(x) else f"{100 * x:.1f}%"


def outcome_tables(cohort: Cohort) -> list[Table]:
    tables = []
    ov = cohort_overview(cohort)
    t = Table(title="Cohort")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("clients", f"{ov['clients']:,.0f}")
    t.add_row("session rows", f"{ov['session_rows']:,.0f}")
    t.add_row("mean sessions attended", f"{ov['mean_sessions_attended']:.1f}")
    t.add_row("clients with a single session", f"{ov['clients_with_single_session']:,.0f}")
    for k in ("finished", "dropout", "ongoing"):
        if f"share_{k}" in ov:
            t.add_row(f"end status: {k}", _pct(ov[f"share_{k}"]))
    tables.append(t)

    frame = outcome_frame(cohort)
    t = Table(title="Reliable and clinically significant change, first vs last score "
              "(Jacobson & Truax 1991), among clients with >= 2 scores; improved = reliably improved, not recovered")
    for col in ("instrument", "clients", ">=2 scores", "recovered", "improved", "unchanged",
                "deteriorated", "verified"):
        t.add_column(col, justify="right" if col != "instrument" else "left")
    for code, r in frame.iterrows():
        t.add_row(code, f"{r['clients']:,.0f}", f"{r['with_2_scores']:,.0f}",
                  _pct(r[Change.RECOVERED.value]), _pct(r[Change.RELIABLY_IMPROVED.value]),
                  _pct(r[Change.UNCHANGED.value]), _pct(r[Change.RELIABLY_DETERIORATED.value]),
                  "yes" if REGISTRY[code].verified else "VERIFY")
    tables.append(t)

    nhs = nhs_summary(cohort.sessions)
    if nhs is not None:
        t = Table(title="NHS Talking Therapies paired PHQ-9 + GAD-7 outcomes, finished courses "
                  "(>= 2 paired scores) starting at caseness")
        t.add_column("measure")
        t.add_column("this cohort", justify="right")
        t.add_column("national figure", justify="right")
        t.add_row("finished courses", f"{nhs['finished_courses']:,.0f}", "")
        t.add_row("... at caseness", f"{nhs['at_caseness']:,.0f}", "")
        t.add_row("recovery", _pct(nhs["recovery"]), "about 50%")
        t.add_row("reliable improvement", _pct(nhs["reliable_improvement"]), "67–69%")
        t.add_row("reliable recovery", _pct(nhs["reliable_recovery"]), "48–51%")
        t.add_row("reliable deterioration", _pct(nhs["reliable_deterioration"]), "5–10% (adults)")
        tables.append(t)
    return tables
