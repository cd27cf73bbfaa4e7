"""From a validated cohort to training rows: features as of sessions 1..6, targets, groups.

One row per (client, t) for each t at which the client is still in care (has a score on the
instrument at session t). Targets come from `features.targets` (the same code for simulated and
real cohorts). Ids stay in `keys`; models never see them. A fixed share of clients, chosen by a
salted hash of the id, is held out of every fit: the promotion gate scores challenger and
champion on those clients, which neither saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import Cohort
from features.instruments import REGISTRY, Role
from features.pointintime import DEFAULT_AT, point_in_time
from features.targets import targets

HOLDOUT_FRACTION = 0.15
HOLDOUT_SALT = "ontrack-gate-v1"


def holdout_mask(client_ids: pd.Series | np.ndarray, fraction: float = HOLDOUT_FRACTION,
                 salt: str = HOLDOUT_SALT) -> np.ndarray:
    """Deterministic client-level hold-out: hash(salt, id) < fraction."""
    ids = pd.Series(client_ids).astype(str)
    uniq = ids.unique()
    h = np.array([int.from_bytes(hashlib.blake2b(f"{salt}:{u}".encode(), digest_size=8).digest(),
                                 "big") for u in uniq], dtype=np.float64) / 2.0**64
    chosen = dict(zip(uniq, h < fraction, strict=True))
    return ids.map(chosen).to_numpy(dtype=bool)


@dataclass
class TrainingRows:
    instrument: str
    X: pd.DataFrame
    keys: pd.DataFrame  # client_id, session (= t)
    failed: np.ndarray  # float: 1 / 0 / NaN
    dropped_out: np.ndarray
    deteriorated: np.ndarray  # eventual reliable deterioration on the instrument (1/0/NaN)
    context: pd.DataFrame  # clinic_id, therapist_id, covariates per row (subgroups only)
    target: str = "failed"  # features.targets.TARGETS: which definition `failed` holds

    def __len__(self) -> int:
        return len(self.X)

    @property
    def groups(self) -> np.ndarray:
        return self.keys["client_id"].to_numpy()

    def subset(self, mask: np.ndarray) -> TrainingRows:
        mask = np.asarray(mask, dtype=bool)
        return TrainingRows(
            self.instrument, self.X[mask].reset_index(drop=True),
            self.keys[mask].reset_index(drop=True), self.failed[mask], self.dropped_out[mask],
            self.deteriorated[mask], self.context[mask].reset_index(drop=True), self.target)


def outcome_instruments(cohort: Cohort) -> list[str]:
    """Outcome instruments in the cohort that have a cut-off and a reliable-change threshold."""
    present = set(cohort.sessions["instrument"].unique())
    return [c for c, i in REGISTRY.items() if c in present and i.role is Role.OUTCOME
            and i.cutoff is not None and i.rci is not None]


def build_rows(cohort: Cohort, instrument: str, at=DEFAULT_AT,
               target: str = "failed", alliance_lag: bool = True) -> TrainingRows:
    """Training rows; ``alliance_lag=False`` only to measure what the alliance rating of the
    assessed session would add (`benchmarks/bench_alliance_timing.py`): the served model
    never sees it by default."""
    s = cohort.sessions
    ff = point_in_time(s, instrument=instrument, at=at, alliance_lag=alliance_lag)
    tg = targets(s, cohort.clients if len(cohort.clients) else None, instrument=instrument,
                 target=target)
    ids = ff.keys["client_id"]
    failed = tg["failed"].reindex(ids).to_numpy(dtype=float)
    dropped = tg["dropped_out"].reindex(ids).to_numpy(dtype=float)
    # eventual reliable deterioration (first vs last score), for the flag-policy views
    deteriorated = tg["deteriorated"].reindex(ids).to_numpy(dtype=float)
    ctx = pd.DataFrame(index=pd.Index(ids.unique(), name="client_id"))
    per_client = s.drop_duplicates("client_id").set_index("client_id")
    for c in ("clinic_id", "therapist_id"):
        if c in s.columns:
            ctx[c] = per_client[c].reindex(ctx.index)
    if len(cohort.clients):
        cov = cohort.clients.set_index("client_id").drop(columns=["end_status"])
        for c in cov.columns:
            ctx[c] = cov[c].reindex(ctx.index)
    context = ctx.reindex(ids).reset_index(drop=True)
    return TrainingRows(instrument, ff.X, ff.keys, failed, dropped, deteriorated, context,
                        target)
