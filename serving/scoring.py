"""What batch scoring does to ONE partition of clients, on whichever process holds it.

Two steps, each a pure function of a partition file and its arguments, so a Dask worker, a
test or a debugger can run it alone:

* `validate_partition`: the contract's ONE rule set (`features.contract.validate_frames`, the
  assessability rule the service applies, and the layout's own rule that every client is in its
  hash bucket); writes the typed rows of the clients that passed, ready to assess.
* `score_partition`: every client as of its latest session through `Bundle.assess` (the code the
  service runs for `/v1/assess`), flattened to one Arrow row per client (`SCORE_SCHEMA`).

Every file is written under a temporary name in its final folder and renamed when complete
(`write_atomic`), so a process killed mid-write leaves a ``.tmp`` file that no reader takes for
output and a rerun overwrites. Nothing here logs client data.

May import: features, models, numpy, pandas, pyarrow. Not training, not the HTTP service.
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.contract import (
    Rows,
    ValidationReport,
    Violation,
    check_assessable,
    validate_frames,
)
from features.partitions import SOURCE_ROW, client_bucket, misplaced

#: Covariates the population check reads from a clients table (when the table has them).
COVARIATES = ("age_band", "gender", "diagnosis_group")
#: Drivers kept per client in the output (the explanation's largest, by absolute points).
TOP_DRIVERS = 3

DRIVER = pa.struct([("concept", pa.string()), ("percentage_points", pa.float64())])
SCORE_SCHEMA = pa.schema([
    ("client_id", pa.string()),
    ("clinic_id", pa.string()),
    ("instrument", pa.string()),
    ("session", pa.int32()),
    ("n_scores", pa.int32()),
    ("flag_state", pa.string()),
    ("flagged", pa.bool_()),
    ("flag_opened_by", pa.list_(pa.string())),
    ("p_failure", pa.float64()),
    ("p_dropout", pa.float64()),
    ("signal", pa.string()),
    ("safety", pa.string()),
    ("change_category", pa.string()),
    ("out_of_population", pa.bool_()),
    ("drivers", pa.list_(DRIVER)),
    ("suggestions", pa.list_(pa.string())),
    ("model_version", pa.string()),
    ("run_id", pa.string()),
])


def without_data(fn):
    """A partition task whose errors name their type and partition only: a worker logs a
    failed task's exception, and an exception's text can hold a value from the data."""
    import functools

    @functools.wraps(fn)
    def task(k: int, *args, **kwargs):
        try:
            return fn(k, *args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise RuntimeError(f"{type(err).__name__} in partition {k} (details withheld: "
                               "they may hold client data)") from None
    return task


def write_atomic(table: pa.Table, path: Path) -> Path:
    """Write a Parquet file so that it exists under ``path`` only when complete."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------
def _source_rows(frame: pd.DataFrame) -> np.ndarray | None:
    return frame[SOURCE_ROW].to_numpy(dtype=np.int64) if SOURCE_ROW in frame else None


def _where(v: Violation, k: int, source: dict[str, np.ndarray | None]) -> dict:
    """A violation as a report row: the row in the user's file when the input was ingested,
    else the row in the partition file."""
    rows = source.get(v.table)
    if v.row is not None and rows is not None:
        where, row = "input", int(rows[v.row - 1])
    else:
        where, row = f"partition {k}", v.row
    return {"table": v.table, "where": where, "row": row, "rule": v.rule,
            "column": v.column, "message": v.message}


@without_data
def validate_partition(k: int, partitions: int, sessions_path: str, clients_path: str | None,
                       out_path: str, skip_invalid: bool) -> dict:
    """Validate partition ``k``; write the typed rows of the clients that passed (all of them,
    or none when ``skip_invalid`` is false and anything failed) to ``out_path``.

    Returns counts and the report rows (`_where`)."""
    sessions = pd.read_parquet(sessions_path)
    clients = pd.read_parquet(clients_path) if clients_path else None
    source = {"sessions": _source_rows(sessions),
              "clients": None if clients is None else _source_rows(clients)}
    raw = {"sessions": sessions.drop(columns=[SOURCE_ROW], errors="ignore"),
           "clients": None if clients is None else clients.drop(columns=[SOURCE_ROW],
                                                                errors="ignore")}
    cohort, report = validate_frames(raw["sessions"], raw["clients"])
    typed = cohort.sessions
    if not any(v.rule == "column_missing" for v in report.violations):
        report.extend(check_assessable(typed, rows=Rows(typed)))
        wrong = misplaced(typed["client_id"], k, partitions) & typed["client_id"].notna()
        home = client_bucket(typed["client_id"], partitions)
        report.extend(Violation("sessions", "partition_mismatch", "client_id",
                                f"client {typed['client_id'].iat[i]} belongs in partition "
                                f"{home[i]}, not {k}: the folder's layout is broken "
                                "(rule: partition_mismatch)", int(i) + 1)
                      for i in np.flatnonzero(wrong.to_numpy()))
    bad_rows = {v.row for v in report.violations if v.table == "sessions" and v.row}
    whole_file = any(v.row is None for v in report.violations)
    keep = np.ones(len(typed), dtype=bool)
    if report.violations:
        if skip_invalid and not whole_file:
            ids = typed["client_id"]
            bad_ids = set(ids.iloc[[r - 1 for r in bad_rows]].dropna())
            bad_ids |= _bad_clients(report, cohort.clients)
            keep = ids.notna().to_numpy() & ~ids.isin(bad_ids).to_numpy()
        else:
            keep[:] = False
    kept = typed[keep].reset_index(drop=True)
    frame = kept
    if clients is not None and len(cohort.clients) and not whole_file:
        cov = [c for c in COVARIATES if c in cohort.clients.columns]
        if cov:
            cl = cohort.clients.drop_duplicates("client_id").set_index("client_id")[cov]
            frame = kept.join(cl.add_prefix("cov_"), on="client_id")
    write_atomic(pa.Table.from_pandas(frame, preserve_index=False), Path(out_path))
    return {"partition": k, "rows": int(len(typed)), "rows_kept": int(keep.sum()),
            "clients": int(typed["client_id"].nunique()),
            "clients_kept": int(kept["client_id"].nunique()),
            "report": [_where(v, k, source) for v in report.violations]}


def _bad_clients(report: ValidationReport, clients: pd.DataFrame) -> set:
    """Clients named by a clients-table violation (their sessions are skipped too)."""
    rows = [v.row - 1 for v in report.violations if v.table == "clients" and v.row]
    if not rows or "client_id" not in clients:
        return set()
    return set(clients["client_id"].iloc[rows].dropna())


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
_BUNDLES: dict[tuple[str, str], object] = {}


def worker_bundle(model_uri: str, tracking_uri: str, num_threads: int = 1):
    """The bundle behind ``model_uri``, loaded once per process (each Dask worker loads it
    from the registry it is given the first time a partition reaches it)."""
    key = (model_uri, tracking_uri)
    if key not in _BUNDLES:
        import mlflow

        from models.registry import load_bundle

        mlflow.set_tracking_uri(tracking_uri)
        _BUNDLES.clear()
        _BUNDLES[key] = load_bundle(model_uri, num_threads=num_threads)
        gc.collect()
        gc.freeze()  # the bundle's objects are never garbage: keep them out of every GC pass
    return _BUNDLES[key]


def _covariates(frame: pd.DataFrame) -> pd.DataFrame | None:
    cov = [c for c in frame.columns if c.startswith("cov_")]
    if not cov:
        return None
    out = frame.drop_duplicates("client_id").set_index("client_id")[cov]
    return out.rename(columns=lambda c: c.removeprefix("cov_"))


def assessments_table(assessments: list, clinic: dict, model_version: str,
                      run_id: str) -> pa.Table:
    """One row per assessment (`SCORE_SCHEMA`)."""
    cols: dict[str, list] = {f.name: [] for f in SCORE_SCHEMA}
    for a in assessments:
        r, f, exp = a.risk, a.flag, a.explanation
        cols["client_id"].append(a.client_id)
        cols["clinic_id"].append(clinic.get(a.client_id))
        cols["instrument"].append(a.instrument)
        cols["session"].append(a.session)
        cols["n_scores"].append(a.n_scores)
        cols["flag_state"].append(f.state)
        cols["flagged"].append(f.flagged)
        cols["flag_opened_by"].append(list(f.opened_by))
        cols["p_failure"].append(None if r is None else r.p_failure)
        cols["p_dropout"].append(None if r is None else r.p_dropout)
        cols["signal"].append(a.signal.colour)
        cols["safety"].append(a.safety.status)
        cols["change_category"].append(a.change.category)
        cols["out_of_population"].append(a.population.out_of_population)
        drivers = [] if exp is None else sorted(
            exp.drivers, key=lambda d: -abs(d.percentage_points))[:TOP_DRIVERS]
        cols["drivers"].append([{"concept": d.concept,
                                 "percentage_points": d.percentage_points} for d in drivers])
        cols["suggestions"].append([s.adaptation for s in a.suggestions])
    n = len(assessments)
    cols["model_version"] = [model_version] * n
    cols["run_id"] = [run_id] * n
    return pa.Table.from_pydict(cols, schema=SCORE_SCHEMA)


@without_data
def score_partition(k: int, in_path: str, out_path: str, model_uri: str, tracking_uri: str,
                    run_id: str, horizon: int = 4) -> dict:
    """Assess every client of a validated partition as of its latest session; write one row
    per client to ``out_path``. Returns counts (clients, flagged, safety flags, per clinic)."""
    t0 = time.perf_counter()
    bundle = worker_bundle(model_uri, tracking_uri)
    t1 = time.perf_counter()
    frame = pd.read_parquet(in_path)
    n = int(frame["client_id"].nunique()) if len(frame) else 0
    clinic: dict = {}
    if "clinic_id" in frame and n:
        last = frame.drop_duplicates("client_id", keep="last")
        clinic = dict(zip(last["client_id"].tolist(), last["clinic_id"].tolist(), strict=True))
    assessments: list = []
    if n:
        covariates = _covariates(frame)
        sessions = frame.drop(columns=[c for c in frame.columns if c.startswith("cov_")])
        # a partition's objects are freed by reference counting; without collection passes
        # over them the assessment runs about a third faster (cycles are collected after)
        gc.disable()
        try:
            assessments = bundle.assess(sessions, covariates, horizon=horizon)
            table = assessments_table(assessments, clinic, bundle.version, run_id)
        finally:
            gc.enable()
    else:
        table = SCORE_SCHEMA.empty_table()
    t2 = time.perf_counter()
    write_atomic(table, Path(out_path))
    by_clinic: Counter = Counter()
    flagged_by_clinic: Counter = Counter()
    for a in assessments:
        c = clinic.get(a.client_id) or "unknown"
        by_clinic[c] += 1
        flagged_by_clinic[c] += int(a.flag.flagged)
    out = {"partition": k, "clients": table.num_rows,
           "flagged": int(sum(a.flag.flagged for a in assessments)),
           "safety_flags": int(sum(a.safety.status == "flag" for a in assessments)),
           "by_clinic": {c: [by_clinic[c], flagged_by_clinic[c]] for c in by_clinic},
           "model_version": bundle.version,
           "seconds": {"load": t1 - t0, "assess": t2 - t1,
                       "write": time.perf_counter() - t2}}
    del assessments
    gc.collect()
    return out
