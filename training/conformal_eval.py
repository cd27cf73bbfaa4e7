"""Coverage of the expected course's bands on clients the models never saw.

Coverage at session s: the share of clients observed at session s whose score there falls
inside the band fixed at their intake (the course shown for session s, which depends on what
was known at intake only). The empirical band is the served ``lower``/``upper``; the conformal
band is the same band with the bundle's per-session margins (`models.conformal`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.instruments import get
from models.assess import served_course
from models.bundle import InstrumentModels


def coverage_table(models: InstrumentModels, sessions: pd.DataFrame,
                   sessions_range=range(2, 9)) -> pd.DataFrame:
    """Per session in ``sessions_range``: ``n`` clients observed there, the coverage and mean
    width of the empirical band and of the conformal band, the ``nominal`` level and the
    binomial standard error of a coverage at the nominal level with ``n`` clients (``se``).

    ``sessions``: a contract-typed sessions frame of clients NOT used to fit ``models`` (new
    clients: no one to keep out of the neighbour reference). The served course comes from
    `models.assess.served_course`, the code the service and the calibration use. Conformal
    columns are NaN when the models have no band."""
    inst = get(models.instrument)
    served = served_course(models, sessions, models.instrument)
    served = served[served["session"].isin(list(sessions_range))]
    band = getattr(models, "band", None)
    y, lo, hi = (served[c].to_numpy(dtype=float) for c in ("score", "lower", "upper"))
    if band is not None:
        clo, chi = band.apply(served["session"].to_numpy(), lo, hi, inst.score_min,
                              inst.score_max)
        nominal = band.coverage_
    else:  # the served band's own level
        clo = chi = np.full(len(served), np.nan)
        nominal = float(getattr(models.expected, "coverage", np.nan))
    frame = pd.DataFrame({
        "session": served["session"].to_numpy(),
        "empirical_in": (lo <= y) & (y <= hi), "empirical_width": hi - lo,
        "conformal_in": np.where(np.isfinite(clo), (clo <= y) & (y <= chi), np.nan),
        "conformal_width": chi - clo})
    out = frame.groupby("session").agg(
        n=("empirical_in", "size"), empirical_coverage=("empirical_in", "mean"),
        conformal_coverage=("conformal_in", "mean"),
        empirical_width=("empirical_width", "mean"),
        conformal_width=("conformal_width", "mean"))
    out = out.reindex(list(sessions_range)).rename_axis("session").reset_index()
    out["n"] = out["n"].fillna(0).astype(int)
    out["nominal"] = nominal
    with np.errstate(divide="ignore", invalid="ignore"):
        out["se"] = np.sqrt(nominal * (1.0 - nominal) / out["n"].to_numpy(dtype=float))
    return out
