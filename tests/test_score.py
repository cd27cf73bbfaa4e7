"""Batch scoring on Dask (`ontrack score`): a real LocalCluster of worker processes on loopback.

Covers: the scores of a 5,000-client cohort equal `Bundle.assess` in-process, field by field;
a cohort with bad rows in several partitions gets one report naming each row of the user's file
and no scores (or, with --skip-invalid, the other clients scored); a worker killed with
SIGKILL mid-run, then the whole job, leaves only complete partitions, and a rerun with the run
id keeps them and finishes the rest; the MLflow run carries the counts and the flag rate by
clinic with small cells suppressed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.service_fixtures import REPO, environ, register, shared_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The test bundle registered as ontrack-not-risk@champion in a private store."""
    root = tmp_path_factory.mktemp("score")
    uri = register(shared_bundle(), root / "mlflow")
    with environ({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
                  "OMP_NUM_THREADS": "1"}):
        yield root, uri


def _cohort(out: Path, n: int, seed: int, fmt: str = "parquet") -> Path:
    from training.simulate import simulate_cohort

    simulate_cohort(n, seed=seed, oracle_clients=0).write(out, fmt)
    return out


def _scores(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "scores").to_pandas()


def test_scores_equal_the_in_process_assessment(store, tmp_path):
    from features.contract import load_cohort
    from models.registry import load_bundle
    from serving.score import ScoreJob, run

    root, uri = store
    data = _cohort(tmp_path / "cohort", 5000, seed=21)
    result = run(ScoreJob(data=data, out=tmp_path / "out", partitions=5, workers=2))
    assert result.status == "complete"
    got = _scores(tmp_path / "out").set_index("client_id")
    cohort = load_cohort(data)
    assert len(got) == got.index.nunique() == cohort.n_clients == result.clients == 5000

    bundle = load_bundle("models:/ontrack-not-risk@champion")
    cov = cohort.clients.set_index("client_id")[["age_band", "gender", "diagnosis_group"]]
    want = bundle.assess(cohort.sessions, cov)
    assert result.model_version == bundle.version
    for a in want:
        row = got.loc[a.client_id]
        assert row["instrument"] == a.instrument and row["session"] == a.session
        assert row["n_scores"] == a.n_scores
        assert row["flag_state"] == a.flag.state and row["flagged"] == a.flag.flagged
        assert list(row["flag_opened_by"]) == list(a.flag.opened_by)
        assert row["signal"] == a.signal.colour and row["safety"] == a.safety.status
        assert row["change_category"] == a.change.category
        assert row["out_of_population"] == a.population.out_of_population
        assert list(row["suggestions"]) == [s.adaptation for s in a.suggestions]
        assert row["model_version"] == bundle.version and row["run_id"] == result.run_id
        if a.risk is None:
            assert pd.isna(row["p_failure"]) and len(row["drivers"]) == 0
            continue
        assert row["p_failure"] == a.risk.p_failure  # bit for bit
        assert row["p_dropout"] == a.risk.p_dropout
        top = sorted(a.explanation.drivers, key=lambda d: -abs(d.percentage_points))[:3]
        assert [(d["concept"], d["percentage_points"]) for d in row["drivers"]] == \
            [(d.concept, d.percentage_points) for d in top]
    flagged = sum(a.flag.flagged for a in want)
    assert result.flagged == flagged > 0
    assert result.safety_flags == sum(a.safety.status == "flag" for a in want)

    # the MLflow run: model version, counts, the flag rate by clinic
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    mrun = client.get_run(result.run_id)
    assert mrun.data.params["model_version"] == bundle.version
    assert mrun.data.metrics["clients"] == 5000 and mrun.data.metrics["flagged"] == flagged
    assert mrun.info.status == "FINISHED"
    path = client.download_artifacts(result.run_id, "flag_rate_by_clinic.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    clinics = cohort.sessions.drop_duplicates("client_id", keep="last")["clinic_id"]
    assert set(frame["clinic_id"]) == set(clinics)
    assert frame["clients"].astype(int).sum() == 5000  # every clinic has >= 10 clients here
    # the work folder (a copy of client data) is gone; the manifest says complete
    assert not (tmp_path / "out" / "_work").exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "complete"


def test_small_cells_are_suppressed():
    from serving.score import clinic_table

    rows = {r["clinic_id"]: r for r in clinic_table(
        {"A": [250, 40], "B": [7, 2], "C": [120, 3], "D": [30, 25], "E": [15, 0]})}
    assert rows["A"] == {"clinic_id": "A", "clients": "250", "flagged": "40",
                         "flag_rate": "0.160"}
    assert rows["B"]["clients"] == "<10" and rows["B"]["flag_rate"] == "suppressed"
    assert rows["C"]["flagged"] == "<10" and rows["C"]["flag_rate"] == "suppressed"
    # 5 not flagged would be revealed by the rate and the count
    assert rows["D"]["flagged"] == "suppressed" and rows["D"]["flag_rate"] == "suppressed"
    assert rows["E"]["flagged"] == "0" and rows["E"]["flag_rate"] == "0.000"


def test_bad_rows_get_one_report_and_no_scores(store, tmp_path):
    from features.partitions import client_bucket
    from serving.score import ScoreJob, run

    data = _cohort(tmp_path / "cohort", 600, seed=4, fmt="csv")
    sessions = pd.read_csv(data / "sessions.csv", dtype={"client_id": "string"})
    bucket = client_bucket(sessions["client_id"], 4)
    # two bad rows in two different partitions, a third client with an unknown instrument
    a = int(np.flatnonzero((bucket == 0) & (sessions["instrument"] == "PHQ-9"))[3])
    b = int(np.flatnonzero((bucket == 3) & (sessions["instrument"] == "GAD-7"))[5])
    c = int(np.flatnonzero(bucket == 1)[0])
    sessions["score"] = sessions["score"].astype(object)
    sessions.loc[a, "score"] = 31
    sessions.loc[b, "score"] = "abc"
    sessions.loc[c, "instrument"] = "PHQ-99"
    sessions.to_csv(data / "sessions.csv", index=False)

    out = tmp_path / "refused"
    result = run(ScoreJob(data=data, out=out, partitions=4, workers=2))
    assert result.status == "refused" and result.clients == 0
    assert not (out / "scores").exists() and not (out / "_work").exists()
    report = pd.read_csv(out / "violations.csv")
    rules: dict[int, set] = {}
    for r in report.itertuples():
        assert r.where == "input"
        rules.setdefault(int(r.row), set()).add(r.rule)
    # the rows of the user's file (1-based data rows, header excluded), and no others
    assert rules == {a + 1: {"score_out_of_range", "items_do_not_sum"},
                     b + 1: {"wrong_type"}, c + 1: {"instrument_unknown"}}
    assert "'abc'" in report.loc[report["rule"] == "wrong_type", "message"].iloc[0]
    assert json.loads((out / "manifest.json").read_text())["status"] == "refused"

    skipped = run(ScoreJob(data=data, out=tmp_path / "skipped", partitions=4, workers=2,
                           skip_invalid=True))
    assert skipped.status == "complete"
    bad = set(sessions.loc[[a, b, c], "client_id"])
    got = _scores(tmp_path / "skipped")
    assert skipped.clients_skipped == len(bad) and len(got) == 600 - len(bad)
    assert not bad & set(got["client_id"])
    assert skipped.rows_refused == int(sessions["client_id"].isin(bad).sum())


def _children(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline()) or "forkserver" in " ".join(p.cmdline())]


def _wait_for(path: Path, done, timeout: float = 180.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = None
        if doc is not None and done(doc):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {path}")


def test_killed_worker_and_job_leave_complete_partitions_and_a_rerun_finishes(store,
                                                                              tmp_path):
    from serving.score import MANIFEST

    data = _cohort(tmp_path / "cohort", 4000, seed=9)
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("ontrack")), "score", "--data", str(data), "--out",
           str(out), "--partitions", "16", "--workers", "2"]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        first = _wait_for(out / MANIFEST, lambda d: len(d.get("scored", {})) >= 2)
        workers = _children(proc.pid)
        assert workers, "no worker processes found"
        os.kill(workers[0], signal.SIGKILL)  # a worker, mid-partition
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)  # then the whole job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "running"
    done = manifest["scored"]
    assert len(done) >= len(first["scored"]) >= 2
    assert len(done) < 16, "the job finished before it was killed; nothing was tested"
    # every partition file present is complete (a kill leaves at most a .tmp file); one the
    # job wrote but was killed before recording is readable and is scored again on the rerun
    finals = sorted((out / "scores").glob("part-*.parquet"))
    recorded = [f for f in finals if str(int(f.stem.split("-")[1])) in done]
    assert len(recorded) == len(done)
    for f in finals:
        k = str(int(f.stem.split("-")[1]))
        rows = pq.ParquetFile(f).metadata.num_rows
        assert rows > 0
        if k in done:
            assert rows == done[k]["clients"]
    stamps = {f.name: f.stat().st_mtime_ns for f in recorded}

    rerun = subprocess.run([*cmd, "--run-id", manifest["run_id"]], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    after = json.loads((out / MANIFEST).read_text())
    assert after["status"] == "complete" and len(after["scored"]) == 16
    for name, ns in stamps.items():  # the finished partitions were kept, not redone
        assert (out / "scores" / name).stat().st_mtime_ns == ns
    got = _scores(out)
    sessions = pq.read_table(data / "sessions.parquet", columns=["client_id"]).to_pandas()
    assert len(got) == got["client_id"].nunique() == sessions["client_id"].nunique() == 4000
    assert not list((out / "scores").glob("*.tmp"))
    assert set(got["run_id"]) == {manifest["run_id"]}


def test_a_second_job_cannot_overwrite_a_run(store, tmp_path):
    from serving.score import ScoreError, ScoreJob, run

    data = _cohort(tmp_path / "cohort", 300, seed=2)
    first = run(ScoreJob(data=data, out=tmp_path / "out", partitions=2, workers=1))
    with pytest.raises(ScoreError, match=f"--run-id {first.run_id}"):
        run(ScoreJob(data=data, out=tmp_path / "out", partitions=2, workers=1))
    again = run(ScoreJob(data=data, out=tmp_path / "out", run_id=first.run_id, workers=1))
    assert again.status == "complete" and again.partitions_reused == 2
    assert again.clients == first.clients == 300


def test_the_same_command_runs_on_a_separate_dask_cluster(store, tmp_path):
    """A scheduler and two workers started on their own (as on other machines), on loopback;
    `--scheduler ADDRESS` instead of the local cluster, nothing else changed."""
    from tests.service_fixtures import free_port

    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = (tmp_path / "cluster.log").open("w")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=logs, stderr=subprocess.STDOUT,
                              start_new_session=True)]
    try:
        time.sleep(2.0)
        procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", "2",
                                       "--nthreads", "1", "--no-dashboard", "--host",
                                       "127.0.0.1"], cwd=REPO, stdout=logs,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        data = _cohort(tmp_path / "cohort", 1500, seed=12)
        out = tmp_path / "out"
        done = subprocess.run([str(Path(sys.executable).with_name("ontrack")), "score",
                               "--data", str(data), "--out", str(out), "--partitions", "3",
                               "--scheduler", address], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        got = _scores(out)
        assert len(got) == got["client_id"].nunique() == 1500
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["summary"]["clients"] == 1500
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        logs.close()


def test_a_failing_partition_names_no_data():
    from serving.scoring import validate_partition

    with pytest.raises(RuntimeError) as info:
        validate_partition(3, 8, "/nonexistent/SENTINEL-C0001234.parquet", None,
                           "/nonexistent/out.parquet", False)
    assert "partition 3" in str(info.value) and "SENTINEL" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_missing_input_creates_nothing(tmp_path):
    from serving.score import ScoreError, ScoreJob, run

    with pytest.raises(ScoreError, match="does not exist"):
        run(ScoreJob(data=tmp_path / "no-such-cohort", out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
