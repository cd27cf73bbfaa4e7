"""`ontrack compare`: a leaderboard and a Markdown report from a training run in MLflow, and
every logged model of the experiment side by side (MLflow 3's `search_logged_models`: each
model's own record, its metrics tied to the dataset they were measured on)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from training.tracking import EXPERIMENT, configure


def _latest_training_run(client: MlflowClient) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise LookupError("no training runs yet: run `ontrack train --data PATH` first")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'training' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise LookupError("no training runs yet: run `ontrack train --data PATH` first")
    return runs[0].info.run_id


def logged_models(client: MlflowClient, max_results: int = 20) -> pd.DataFrame:
    """The experiment's logged models, newest first: id, registered version, instruments,
    the cross-validated AUROC as of session 3 per instrument (with the dataset digest), the
    gate's AUROC difference and decision."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return pd.DataFrame()
    models = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], filter_string="tags.instruments != ''",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=max_results, output_format="list")
    rows = []
    for m in models:
        versions = json.loads(m.tags.get("mlflow.modelVersions", "[]") or "[]")
        row = {"model_id": m.model_id,
               "version": ",".join(str(v["version"]) for v in versions) or "—",
               "instruments": m.tags.get("instruments", ""),
               "permuted": m.tags.get("provenance.permuted_labels", ""),
               "created": pd.Timestamp(m.creation_timestamp, unit="ms").strftime(
                   "%Y-%m-%d %H:%M")}
        digests = set()
        for metric in m.metrics or []:
            if metric.dataset_digest is None:
                continue
            key = metric.key
            if key.startswith("external_"):  # evaluations on other cohorts: their own runs
                continue
            if key.endswith("_auroc_s3") or key in {"gate_auroc_diff", "gate_promote"}:
                row[key] = metric.value
                digests.add(metric.dataset_digest)
        row["datasets"] = ",".join(sorted(digests))
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_report(run_id: str | None, out: Path) -> tuple[Path, pd.DataFrame]:
    configure(EXPERIMENT)
    client = MlflowClient()
    run_id = run_id or _latest_training_run(client)
    out = Path(out) / run_id
    out.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(out)))
    tables = sorted((local / "tables").glob("comparison_*.csv"))
    lines = [f"# Model comparison (MLflow run `{run_id}`)", ""]
    board = []
    for path in tables:
        inst = path.stem.removeprefix("comparison_")
        frame = pd.read_csv(path)
        s3 = frame[frame["session"] == 3].assign(instrument=inst)
        board.append(s3)
        lines += [f"## {inst}", "", "Cross-validated (folds grouped by client), 95% client "
                  "bootstrap intervals.", "", _markdown(frame), ""]
        for extra, title in (("vs_oracle", "Same rows as the Bayes oracle, session 3"),
                             ("leave_clinics_out", "Leave-clinics-out, session 3"),
                             ("deterioration", "Eventual deteriorators flagged by session 3 "
                                               "at each model's per-session threshold"),
                             ("flag_policies", "Flag policies replayed session by session on "
                                               "held-out clients (docs/flag.md)"),
                             ("dropout", "Dropout"),
                             ("subgroups", "Subgroups, risk as of session 3 (fairlearn; "
                                           "cells < 10 suppressed)"),
                             ("subgroups_gaps", "Largest subgroup gaps, risk"),
                             ("flag_subgroups", "Subgroups, the flag policy by session 3 "
                                                "(hold-out)"),
                             ("flag_subgroups_gaps", "Largest subgroup gaps, flag policy"),
                             ("band_coverage", "Coverage of the expected-course bands "
                                               "(hold-out)")):
            p = local / "tables" / f"{extra}_{inst}.csv"
            if p.exists():
                lines += [f"### {title}", "", _markdown(pd.read_csv(p)), ""]
        for png in sorted((local / "plots" / inst).glob("*.png")):
            lines += [f"![{png.stem}]({png.relative_to(out).as_posix()})", ""]
    models = logged_models(client)
    if len(models):
        lines += ["## Logged models in this experiment", "",
                  "Each model's own MLflow record (`search_logged_models`): the "
                  "cross-validated AUROC as of session 3 and the gate's result, with the "
                  "digests of the datasets they were measured on.", "", _markdown(models), ""]
    report = out / "comparison.md"
    report.write_text("\n".join(lines))
    leaderboard = (pd.concat(board, ignore_index=True).sort_values(
        ["instrument", "auroc"], ascending=[True, False]) if board else pd.DataFrame())
    return report, leaderboard


def _markdown(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    cols = list(frame.columns)
    buf.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
    for row in frame.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        buf.write("| " + " | ".join(cells) + " |\n")
    return buf.getvalue()
