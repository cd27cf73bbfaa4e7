"""Outcome targets, defined once for simulated and real cohorts alike.

`failed` (not reliably improved by the end of care), on the primary instrument (PHQ-9 by
default, any registered outcome instrument otherwise):
  1  when the intake score is in the clinical range (PHQ-9 >= 10), the client has at least two
     scores and the last is not a reliable improvement on intake (PHQ-9: not at least 6 points
     below intake);
  0  when it is;
  missing when the intake is not in the clinical range, there is a single score, or the client
     is still in care (`end_status == "ongoing"`).
`dropped_out` = 1 when `end_status == "dropout"`, 0 for `finished`, missing for `ongoing`.

Sources: NHS Talking Therapies manual (reliable improvement on PHQ-9 = a fall of >= 6 points;
caseness >= 10), Jacobson & Truax 1991.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.change import clinical, first_last, rc_units


def targets(sessions: pd.DataFrame, clients: pd.DataFrame | None = None,
            instrument: str = "PHQ-9") -> pd.DataFrame:
    """One row per client (index `client_id`): `failed`, `dropped_out` as float (NaN = missing)."""
    fl = first_last(sessions, instrument)
    ids = pd.Index(sessions["client_id"].unique(), name="client_id").sort_values()
    fl = fl.reindex(ids)
    eligible = (fl["n_scores"].fillna(0) >= 2) & clinical(fl["first"], instrument)
    improved = rc_units(fl["first"], fl["last"], instrument) >= 1.0
    failed = np.where(eligible, np.where(improved, 0.0, 1.0), np.nan)
    dropped = np.full(len(ids), np.nan)
    if clients is not None and len(clients):
        status = clients.set_index("client_id")["end_status"].reindex(ids)
        ongoing = (status == "ongoing").to_numpy(dtype=bool)
        failed = np.where(ongoing, np.nan, failed)
        dropped = np.select([status == "dropout", status == "finished"], [1.0, 0.0], np.nan)
    return pd.DataFrame({"failed": failed, "dropped_out": dropped}, index=ids)
