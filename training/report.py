"""`ontrack compare`: a leaderboard and a Markdown report from a training run in MLflow."""

from __future__ import annotations

import io
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
                             ("dropout", "Dropout"), ("subgroups", "Subgroups (cells < 10 "
                                                                   "suppressed)")):
            p = local / "tables" / f"{extra}_{inst}.csv"
            if p.exists():
                lines += [f"### {title}", "", _markdown(pd.read_csv(p)), ""]
        for png in sorted((local / "plots" / inst).glob("*.png")):
            lines += [f"![{png.stem}]({png.relative_to(out).as_posix()})", ""]
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
