"""`ontrack score`: a whole caseload, a national year or an archive, assessed on Dask.

    ontrack score --data cohort/ --out scores/ [--model URI] [--scheduler local|ADDRESS]

The job, in order (each step once per partition; see docs/scale.md):

1. **Input in client partitions.** A folder in the client-hash layout (`features.partitions`,
   what ``ontrack simulate --partitions`` writes) is read as it is; any other cohort (a folder
   with sessions/clients CSV or Parquet, or one sessions file) is split into that layout once,
   streaming, under ``OUT/_work/input``.
2. **Validate** every partition with the one rule set (`serving.scoring.validate_partition`).
   One report names every bad row across partitions (``OUT/violations.csv``; the row in the
   user's file when the input was split here). By default the run then refuses and writes no
   scores; ``--skip-invalid`` skips the clients with bad rows and scores the rest.
3. **Score** every partition with the one assessment (`serving.scoring.score_partition`, which
   calls `Bundle.assess`), the bundle loaded once per worker from the registry, pinned to the
   registry version the alias named when the job started.
4. **Record** the MLflow run (experiment ``ontrack-scoring``): parameters, the model version,
   counts, and the flag rate by clinic with small cells suppressed (`clinic_table`).

Output: ``OUT/scores/part-K.parquet`` (one row per client, `serving.scoring.SCORE_SCHEMA`), each
written atomically, and ``OUT/manifest.json`` (the run id, the model, which partitions are done).
A rerun with ``--run-id`` of an unfinished job skips the partitions already written and does the
rest. The work folder (a copy of client data) is removed when the job completes.

May import: features, models, serving.scoring, dask.distributed, mlflow, rich. Not training.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.contract import CLIENTS_FILE, SESSIONS_FILE
from features.partitions import Layout, ingest, part_name, read_layout
from features.thresholds import MIN_REPORTED_CELL

log = logging.getLogger("ontrack.score")

DEFAULT_MODEL = "models:/ontrack-not-risk@champion"
MANIFEST = "manifest.json"
VIOLATIONS = "violations.csv"
#: Clients per partition when a cohort is split here (OnTrack heuristic: a partition's
#: assessment then holds about 1 GB on a worker).
CLIENTS_PER_PARTITION = 10_000
#: Score rows per client in a typical cohort (PHQ-9, GAD-7 and SRS at about 7 sessions), to
#: size partitions from a file before reading it (OnTrack heuristic, from the simulator's
#: default cohort: 18.8 rows per client).
ROWS_PER_CLIENT = 19


class ScoreError(RuntimeError):
    """The job cannot start or finish; the message says why and what to do."""


@dataclass
class ScoreJob:
    data: Path
    out: Path
    model_uri: str = DEFAULT_MODEL
    scheduler: str = "local"
    partitions: int = 0  # 0: the input layout's, or sized from the input
    run_id: str | None = None
    skip_invalid: bool = False
    workers: int = 2  # local cluster only
    horizon: int = 4


@dataclass
class ScoreResult:
    run_id: str
    status: str  # complete | refused | incomplete
    clients: int = 0
    flagged: int = 0
    safety_flags: int = 0
    rows: int = 0
    rows_refused: int = 0
    clients_skipped: int = 0
    partitions: int = 0
    partitions_reused: int = 0
    model_version: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    violations: int = 0
    by_clinic: dict[str, list[int]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# The manifest: what this job is and which partitions are finished
# ------------------------------------------------------------------------------------------
def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _open_manifest(job: ScoreJob) -> dict | None:
    """The manifest of an earlier run of this job in ``out`` (resume), None for a new job;
    refuses a folder that holds something else."""
    path = job.out / MANIFEST
    if path.exists():
        doc = json.loads(path.read_text())
        if job.run_id != doc["run_id"]:
            raise ScoreError(f"{job.out} holds scoring run {doc['run_id']} ({doc['status']}); "
                             f"pass --run-id {doc['run_id']} to finish it, or choose an empty "
                             "folder")
        if doc["status"] == "refused":
            raise ScoreError(f"run {doc['run_id']} was refused for invalid rows (see "
                             f"{job.out / VIOLATIONS}); correct the data and score into an "
                             "empty folder")
        return doc
    if job.run_id is not None:
        raise ScoreError(f"no scoring run {job.run_id} in {job.out} (no {MANIFEST}); leave "
                         "out --run-id to start a new run")
    if job.out.exists() and any(job.out.iterdir()):
        raise ScoreError(f"{job.out} is not empty; choose an empty or new folder")
    return None


# ------------------------------------------------------------------------------------------
# The model and the input
# ------------------------------------------------------------------------------------------
def pin_model(uri: str) -> tuple[str, str]:
    """(a URI naming one registry version, its version label): an alias is resolved once, so
    every worker scores with the same version even if the alias moves during the job."""
    from mlflow.tracking import MlflowClient

    from models.registry import MODEL_NAME, version_label

    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        name, _, rest = ref.partition("@") if "@" in ref else ref.partition("/")
        try:
            if "@" in ref:
                version = str(MlflowClient().get_model_version_by_alias(name, rest).version)
            else:
                version = str(MlflowClient().get_model_version(name, rest).version)
        except Exception as err:  # noqa: BLE001  (MLflow raises its own for a missing alias)
            raise ScoreError(f"model {uri} is not in the registry: {err}") from None
        return f"models:/{name}/{version}", version_label(name, version)
    return uri, version_label(MODEL_NAME, "unregistered")


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".parquet", ".csv"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    return None


def _sized(sessions: Path) -> int:
    if sessions.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(sessions).metadata.num_rows
    else:
        rows = sessions.stat().st_size // 60  # about 60 bytes per CSV row
    return max(1, math.ceil(rows / ROWS_PER_CLIENT / CLIENTS_PER_PARTITION))


def input_layout(job: ScoreJob, console: Console) -> tuple[Layout, bool]:
    """The input in client partitions, and whether it was split here (its rows then carry
    their row in the user's file)."""
    layout = read_layout(job.data) if job.data.is_dir() else None
    if layout is not None:
        if job.partitions and job.partitions != layout.partitions:
            console.print(f"[yellow]{job.data} is in {layout.partitions} client partitions; "
                          f"--partitions {job.partitions} is ignored[/]")
        return layout, False
    work = job.out / "_work" / "input"
    done = read_layout(work) if work.is_dir() else None
    if done is not None:
        return done, True
    if job.data.is_dir():
        sessions, clients = _find(job.data, SESSIONS_FILE), _find(job.data, CLIENTS_FILE)
        if sessions is None:
            raise ScoreError(f"no sessions.csv or sessions.parquet in {job.data}")
    elif job.data.is_file():
        sessions, clients = job.data, None
    else:
        raise ScoreError(f"{job.data} does not exist")
    n = job.partitions or _sized(sessions)
    shutil.rmtree(work, ignore_errors=True)
    with _bar(console) as bar:
        task = bar.add_task(f"splitting {sessions.name} into {n} client partitions", total=None)
        layout = ingest(sessions, clients, work, n, progress=lambda k: bar.advance(task, k))
    return layout, True


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


# ------------------------------------------------------------------------------------------
# The cluster
# ------------------------------------------------------------------------------------------
def _client(job: ScoreJob):
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # not every connection
    if job.scheduler == "local":
        cluster = LocalCluster(n_workers=job.workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               silence_logs=logging.ERROR)
        return Client(cluster), cluster
    return Client(job.scheduler), None


def _map(client, fn, jobs: dict[int, tuple], bar: Progress, description: str, on_done
         ) -> list[tuple[int, str]]:
    """Run ``fn(*args)`` for every partition on the cluster; ``on_done(k, result)`` as each
    finishes (in the driver). Returns the partitions that failed, with the error's type."""
    from dask.distributed import as_completed

    task = bar.add_task(description, total=len(jobs))
    futures = {client.submit(fn, *args, key=f"{fn.__name__}-{k}", pure=False): k
               for k, args in jobs.items()}
    failed = []
    for fut in as_completed(futures):
        k = futures[fut]
        try:
            result = fut.result()
        except Exception as err:  # noqa: BLE001  (a worker lost, or a bug: no data in the log)
            failed.append((k, type(err).__name__))
            log.error("partition %d failed: %s", k, type(err).__name__)
        else:
            on_done(k, result)
        bar.advance(task, 1)
    return failed


# ------------------------------------------------------------------------------------------
# The flag rate by clinic
# ------------------------------------------------------------------------------------------
def clinic_table(by_clinic: dict[str, list[int]], min_cell: int = MIN_REPORTED_CELL) -> list[dict]:
    """Clients, flagged and flag rate per clinic; a cell that would reveal a count of 1 to
    ``min_cell - 1`` (the clients, the flagged or the not flagged) reads "<10"."""
    rows = []
    for clinic in sorted(by_clinic):
        n, f = by_clinic[clinic]
        small = lambda x: 0 < x < min_cell  # noqa: E731
        hide_n = small(n)
        hide_f = hide_n or small(f) or small(n - f)
        rows.append({"clinic_id": clinic,
                     "clients": f"<{min_cell}" if hide_n else str(n),
                     "flagged": f"<{min_cell}" if hide_f and small(f) else
                     ("suppressed" if hide_f else str(f)),
                     "flag_rate": "suppressed" if hide_f else f"{f / n:.3f}"})
    return rows


# ------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------
def run(job: ScoreJob, console: Console | None = None) -> ScoreResult:
    import mlflow

    from models.registry import SCORING_EXPERIMENT, configure, tracking_uri
    from serving.scoring import score_partition, validate_partition

    console = console or Console()
    job.out = job.out.resolve()
    job.data = job.data.resolve()
    if not job.data.exists():  # before anything is created
        raise ScoreError(f"{job.data} does not exist")
    manifest = _open_manifest(job)
    configure(SCORING_EXPERIMENT)
    store = tracking_uri()
    if manifest is None:
        pinned, version = pin_model(job.model_uri)
        job.out.mkdir(parents=True, exist_ok=True)
        run_id = mlflow.start_run(run_name="score").info.run_id
        manifest = {"run_id": run_id, "status": "running", "model_uri": job.model_uri,
                    "model_pinned": pinned, "model_version": version,
                    "skip_invalid": job.skip_invalid, "validated": {}, "scored": {}}
        _write_json(job.out / MANIFEST, manifest)
    else:
        run_id = manifest["run_id"]
        pinned, version = manifest["model_pinned"], manifest["model_version"]
        job.skip_invalid = manifest["skip_invalid"]
        mlflow.start_run(run_id=run_id)
    result = ScoreResult(run_id=run_id, status="incomplete", model_version=version)
    t_all = time.perf_counter()
    try:
        _run(job, manifest, result, console, pinned, store, validate_partition,
             score_partition)
    finally:
        result.seconds["total"] = time.perf_counter() - t_all
        _record(job, manifest, result)
        mlflow.end_run("FINISHED" if result.status == "complete" else
                       "FAILED" if result.status == "refused" else "KILLED")
    return result


def _run(job, manifest, result, console, pinned, store, validate_partition, score_partition):
    valid_dir = job.out / "_work" / "valid"
    scores_dir = job.out / "scores"
    n = manifest.get("partitions")
    if n and all(str(k) in manifest["scored"] and (scores_dir / part_name(k))
                 .exists() for k in range(n)):  # a finished run: nothing to do
        result.partitions = result.partitions_reused = n
        _totals(manifest, result)
        result.status = "complete"
        return
    if n:
        job.partitions = n  # a resumed run keeps its partitions
    t0 = time.perf_counter()
    layout, split_here = input_layout(job, console)
    result.seconds["input"] = time.perf_counter() - t0
    result.partitions = n = layout.partitions
    if manifest.get("partitions") is None:
        import mlflow

        mlflow.log_params({"model_uri": job.model_uri, "model_version": result.model_version,
                           "partitions": n, "skip_invalid": job.skip_invalid,
                           "scheduler": "local" if job.scheduler == "local" else "address",
                           "horizon": job.horizon})
    manifest.update(partitions=n, input_split_here=split_here)
    valid_dir.mkdir(parents=True, exist_ok=True)
    scores_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    client, cluster = _client(job)
    try:
        with _bar(console) as bar:
            # ---- validate ----------------------------------------------------------------
            t0 = time.perf_counter()
            todo = {k: (k, n, str(layout.sessions(k)),
                        None if layout.clients(k) is None else str(layout.clients(k)),
                        str(valid_dir / part_name(k)), job.skip_invalid)
                    for k in range(n) if str(k) not in manifest["scored"] and (
                        str(k) not in manifest["validated"]
                        or not (valid_dir / part_name(k)).exists())}

            def validated(k: int, res: dict) -> None:
                _write_json(valid_dir / part_name(k).replace(".parquet", ".json"), res)
                manifest["validated"][str(k)] = {x: res[x] for x in res if x != "report"}
                _write_json(job.out / MANIFEST, manifest)

            failed = _map(client, validate_partition, todo, bar, "validating partitions",
                          validated)
            result.seconds["validate"] = time.perf_counter() - t0
            if failed:
                raise ScoreError(_failed_message(failed, "validated", manifest["run_id"]))
            report = []
            for k in range(n):  # partitions scored by an earlier run reported then
                part = valid_dir / part_name(k).replace(".parquet", ".json")
                if part.exists():
                    report.extend(json.loads(part.read_text())["report"])
            _validation_totals(manifest, result)
            result.violations = len(report)
            if report:
                _write_violations(job.out / VIOLATIONS, report)
                _print_report(console, report, job.out / VIOLATIONS)
                if not job.skip_invalid:
                    result.status = "refused"
                    result.rows_refused = result.rows
                    shutil.rmtree(job.out / "_work", ignore_errors=True)
                    shutil.rmtree(scores_dir, ignore_errors=True)
                    return
            # ---- score -------------------------------------------------------------------
            t0 = time.perf_counter()
            result.partitions_reused = sum(
                1 for k in range(n) if str(k) in manifest["scored"]
                and (scores_dir / part_name(k)).exists())
            todo = {k: (k, str(valid_dir / part_name(k)),
                        str(scores_dir / part_name(k)), pinned, store,
                        manifest["run_id"], job.horizon)
                    for k in range(n) if str(k) not in manifest["scored"]
                    or not (scores_dir / part_name(k)).exists()}

            def scored(k: int, res: dict) -> None:
                manifest["scored"][str(k)] = res
                _write_json(job.out / MANIFEST, manifest)

            failed = _map(client, score_partition, todo, bar, "scoring partitions",
                          scored)
            result.seconds["score"] = time.perf_counter() - t0
            if failed:
                raise ScoreError(_failed_message(failed, "scored", manifest["run_id"]))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    _totals(manifest, result)
    kept = sum(s["clients_kept"] for s in manifest["validated"].values())
    if result.clients != kept:
        raise ScoreError(f"{result.clients} clients scored but {kept} passed validation; "
                         f"rerun with --run-id {manifest['run_id']}")
    result.status = "complete"
    shutil.rmtree(job.out / "_work", ignore_errors=True)
    for stale in scores_dir.glob("*.tmp"):  # left by a worker killed mid-write
        stale.unlink()


def _totals(manifest: dict, result: ScoreResult) -> None:
    done = manifest["scored"].values()
    result.clients = sum(d["clients"] for d in done)
    result.flagged = sum(d["flagged"] for d in done)
    result.safety_flags = sum(d["safety_flags"] for d in done)
    for d in done:
        for c, (m, f) in d["by_clinic"].items():
            acc = result.by_clinic.setdefault(c, [0, 0])
            acc[0] += m
            acc[1] += f
    _validation_totals(manifest, result)


def _validation_totals(manifest: dict, result: ScoreResult) -> None:
    stats = manifest["validated"].values()
    result.rows = sum(s["rows"] for s in stats)
    result.rows_refused = result.rows - sum(s["rows_kept"] for s in stats)
    result.clients_skipped = sum(s["clients"] - s["clients_kept"] for s in stats)


def _failed_message(failed: list[tuple[int, str]], step: str, run_id: str) -> str:
    ks = ", ".join(str(k) for k, _ in failed[:10])
    kinds = ", ".join(sorted({e for _, e in failed}))
    return (f"{len(failed)} partition(s) could not be {step} ({ks}; {kinds}); the finished "
            f"partitions are kept: rerun with --run-id {run_id} to do the rest")


def _write_violations(path: Path, report: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["table", "where", "row", "rule", "column",
                                           "message"])
        w.writeheader()
        w.writerows(report)
    tmp.replace(path)


def _print_report(console: Console, report: list[dict], path: Path, limit: int = 20) -> None:
    console.print(f"[bold red]{len(report)} contract violation(s)[/] (all of them in {path}):")
    for r in report[:limit]:
        where = f"{r['table']} {r['where']} row {r['row']}" if r["row"] is not None \
            else f"{r['table']} {r['where']}"
        console.print(f"  {where}: {r['message']}", markup=False, highlight=False)
    if len(report) > limit:
        console.print(f"  ... and {len(report) - limit} more")


def _record(job: ScoreJob, manifest: dict, result: ScoreResult) -> None:
    """The manifest's final state and the MLflow run: parameters, counts, the flag rate by
    clinic (small cells suppressed)."""
    import mlflow

    manifest["status"] = result.status
    manifest["summary"] = {"clients": result.clients, "flagged": result.flagged,
                           "safety_flags": result.safety_flags, "rows": result.rows,
                           "rows_refused": result.rows_refused,
                           "clients_skipped": result.clients_skipped,
                           "seconds": result.seconds}
    if job.out.exists():
        _write_json(job.out / MANIFEST, manifest)
    mlflow.set_tags({"ontrack.model_version": result.model_version,
                     "ontrack.status": result.status})
    mlflow.log_metrics({"clients": result.clients, "flagged": result.flagged,
                        "safety_flags": result.safety_flags, "rows": result.rows,
                        "rows_refused": result.rows_refused,
                        "clients_skipped": result.clients_skipped,
                        "violations": result.violations,
                        "partitions_reused": result.partitions_reused,
                        **{f"seconds_{k}": v for k, v in result.seconds.items()}})
    if result.clients:
        mlflow.log_metric("flag_rate", result.flagged / result.clients)
    if result.by_clinic:
        import pandas as pd

        mlflow.log_table(pd.DataFrame(clinic_table(result.by_clinic)),
                         "flag_rate_by_clinic.json")


def summary_table(result: ScoreResult) -> Table:
    t = Table(title=f"Scoring run {result.run_id} ({result.status}), model "
                    f"{result.model_version}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rate = f" ({result.flagged / result.clients:.1%})" if result.clients else ""
    for name, value in (("clients scored", f"{result.clients:,}"),
                        ("not on track (flagged)", f"{result.flagged:,}{rate}"),
                        ("safety flags", f"{result.safety_flags:,}"),
                        ("score rows read", f"{result.rows:,}"),
                        ("rows refused", f"{result.rows_refused:,}"),
                        ("clients skipped", f"{result.clients_skipped:,}"),
                        ("partitions (reused from an earlier run)",
                         f"{result.partitions} ({result.partitions_reused})"),
                        *((f"seconds: {k}", f"{v:.1f}") for k, v in result.seconds.items())):
        t.add_row(name, value)
    return t
