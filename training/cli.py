"""`ontrack`: the one command-line interface.

Training-side commands live here; serving adds its own (`serve`, `build`, `keys`, `audit`)
through the `ontrack.commands` entry-point group (pyproject.toml names `serving.cli:register`),
so neither package imports the other (tests/test_layers.py) and a plain `ontrack validate`
does not pay for BentoML's import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from features.contract import ValidationReport, validate_path
from features.logs import configure_logging

app = typer.Typer(
    name="ontrack",
    help="OnTrack: routine outcome monitoring, not-on-track prediction and explained feedback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

PathArg = Annotated[Path, typer.Argument(help="A cohort folder (sessions, clients, "
                                         "adaptations) or a single sessions file (.csv/.parquet).")]


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False
          ) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    configure_logging(verbose)


def print_report(report: ValidationReport, limit: int = 200) -> None:
    """Render a validation report: one table naming every offending row and rule."""
    if report.ok:
        rows = ", ".join(f"{n:,} {t} rows" for t, n in report.n_rows.items())
        console.print(f"[green]valid[/green]: {rows}")
        for w in report.warnings:
            console.print(f"[yellow]note[/yellow]: {w}")
        return
    table = Table(title=f"{len(report.violations)} contract violations", show_lines=False)
    for col in ("file", "row", "column", "rule", "problem"):
        table.add_column(col, overflow="fold")
    for v in report.violations[:limit]:
        table.add_row(v.table, "" if v.row is None else str(v.row), v.column, v.rule, v.message)
    err.print(table)
    if len(report.violations) > limit:
        err.print(f"... and {len(report.violations) - limit} more (first {limit} shown)")
    summary = ", ".join(f"{rule}: {n}" for rule, n in report.counts().items())
    err.print(f"[red]invalid[/red]: {summary}. Rows are numbered from 1 (the first data row, "
              "line 2 of a CSV). Nothing was run on this data.")


def load_or_exit(path: Path):
    """Validated cohort, or print the full report and exit 1. Nothing runs on invalid data."""
    if not path.exists():
        err.print(f"[red]error[/red]: {path} does not exist")
        raise typer.Exit(2)
    cohort, report = validate_path(path)
    if not report.ok:
        print_report(report)
        raise typer.Exit(1)
    return cohort, report


@app.command()
def validate(path: PathArg) -> None:
    """Check a cohort or a sessions file against the data contract; report every violation."""
    _, report = load_or_exit(path)
    print_report(report)


@app.command()
def outcomes(path: PathArg) -> None:
    """Print the cohort's outcome table (Jacobson-Truax per instrument, NHS paired rules)."""
    from training.outcomes import outcome_tables

    cohort, _ = load_or_exit(path)
    for table in outcome_tables(cohort):
        console.print(table)


@app.command()
def simulate(
    clients: Annotated[int, typer.Option(help="Number of clients.", min=1)] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 7,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/demo"),
    format: Annotated[str | None, typer.Option(
        help="csv or parquet (default csv; with --partitions parquet, the only format "
             "there).")] = None,
    oracle_clients: Annotated[int, typer.Option(help="Clients with oracle probabilities.",
                                                min=0)] = 5000,
    scenario: Annotated[str, typer.Option(
        help="Simulated world: default, null-effects, confounded, weak-signal or shifted "
             "(docs/simulator.md).")] = "default",
    partitions: Annotated[int, typer.Option(
        help="Stream the cohort in chunks to this many client-hash Parquet partitions "
             "(national scale: no oracle, no truth.csv, no self-check table; OUT must be new "
             "or empty). 0 = one file per table.", min=0)] = 0,
) -> None:
    """Simulate a cohort in the contract's format, plus truth.csv and a self-check summary;
    with --partitions, stream a national-scale cohort to client-hash Parquet partitions."""
    if format is None:
        format = "parquet" if partitions else "csv"
    if format not in {"csv", "parquet"}:
        err.print(f"[red]error[/red]: --format must be csv or parquet, not {format!r}")
        raise typer.Exit(2)
    if partitions and format != "parquet":
        err.print("[red]error[/red]: --partitions writes Parquet only; drop --format csv")
        raise typer.Exit(2)
    from training.simulate.scenarios import SCENARIOS

    if scenario not in SCENARIOS:
        err.print(f"[red]error[/red]: --scenario must be one of {', '.join(SCENARIOS)}, "
                  f"not {scenario!r}")
        raise typer.Exit(2)
    if partitions:
        from training.simulate.cli import stream_command
        from training.simulate.stream import refuse_non_empty

        try:
            refuse_non_empty(out)
        except ValueError as e:
            err.print(f"[red]error[/red]: {e}")
            raise typer.Exit(2) from None
        stream_command(clients=clients, seed=seed, out=out, partitions=partitions,
                       scenario=scenario)
        return
    from training.simulate.cli import simulate_command

    simulate_command(clients=clients, seed=seed, out=out, format=format,
                     oracle_clients=oracle_clients, scenario=scenario)


def _progress():
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=console, transient=False)


def _with_progress(start: str, job, errors: tuple[type[Exception], ...] = (LookupError,)):
    """``job(progress)`` under a spinner whose text each step updates; one of ``errors``
    prints its message and exits 1 (no traceback)."""
    with _progress() as bar:
        task = bar.add_task(start, total=None)
        try:
            out = job(lambda msg: bar.update(task, description=msg))
        except errors as e:
            bar.stop()
            err.print(f"[red]error[/red]: {e}")
            raise typer.Exit(1) from None
        bar.update(task, description="done")
    return out


def _print_frame(frame, title: str, columns: dict[str, str], digits: int = 3) -> None:
    import math

    table = Table(title=title)
    for label in columns.values():
        table.add_column(label, justify="left" if label in {"model", "level", "subgroup"}
                         else "right")
    for row in frame.to_dict("records"):
        cells = []
        for key in columns:
            v = row.get(key)
            if key + "_lo" in row and isinstance(v, float) and not math.isnan(v):
                cells.append(f"{v:.{digits}f} [{row[key + '_lo']:.{digits}f}, "
                             f"{row[key + '_hi']:.{digits}f}]")
            elif isinstance(v, float):
                cells.append("—" if math.isnan(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        table.add_row(*cells)
    console.print(table)


def print_flag_table(frame, title: str) -> None:
    """The flag-policy table: shares in percent with their intervals."""
    import math

    cols = {"deteriorators_s3": "deteriorators s3", "deteriorators_end": "… by end",
            "non_improvers_s3": "non-improvers s3", "improvers_s3": "improvers s3",
            "improvers_end": "… by end", "ppv_s3": "PPV s3", "flags_per_100": "flags/100",
            "flip_rate": "flip rate"}
    table = Table(title=title)
    table.add_column("policy", justify="left")
    table.add_column("clients", justify="right")
    for label in cols.values():
        table.add_column(label, justify="right")
    from training.flag_eval import SHORT

    for row in frame.to_dict("records"):
        cells = [SHORT.get(row["policy"], row["label"]),
                 f"{row['clients']} ({row['deteriorators']} det.)"]
        for key in cols:
            v = row.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("—")
            elif key == "flags_per_100":
                cells.append(f"{v:.0f} [{row[key + '_lo']:.0f}, {row[key + '_hi']:.0f}]")
            else:
                cells.append(f"{100 * v:.0f}% [{100 * row[key + '_lo']:.0f}, "
                             f"{100 * row[key + '_hi']:.0f}]")
        table.add_row(*cells)
    console.print(table)


def print_training_report(result) -> None:
    for inst, r in result.reports.items():
        s3 = r.comparison[r.comparison["session"] == 3]
        _print_frame(s3, f"{inst}: not on track at the end of care, as of session 3 "
                     "(cross-validated, grouped by client; 95% client-bootstrap intervals)",
                     {"label": "model", "n": "n", "auroc": "AUROC", "brier": "Brier",
                      "cal_slope": "cal. slope", "sensitivity": "sens.",
                      "specificity": "spec.", "flag_rate": "flagged"})
        if r.vs_oracle is not None:
            _print_frame(r.vs_oracle, f"{inst}: the same rows as the Bayes oracle, session 3",
                         {"label": "model", "n": "n", "auroc": "AUROC", "brier": "Brier",
                          "cal_slope": "cal. slope"})
        if r.external is not None:
            _print_frame(r.external, f"{inst}: leave-clinics-out (external view), session 3",
                         {"label": "model", "n": "n", "auroc": "AUROC", "brier": "Brier",
                          "cal_slope": "cal. slope"})
        _print_frame(r.deterioration, f"{inst}: eventual reliable deteriorators flagged by "
                     "session 3 at each model's per-session threshold (cross-validated; the "
                     "flag policy's figures follow)",
                     {"label": "model", "deteriorators": "deteriorators",
                      "flagged_deteriorators": "flagged", "flagged_others": "others flagged"})
        if r.flags is not None:
            print_flag_table(r.flags.table, f"{inst}: flag policies replayed session by session "
                             "on held-out clients (95% client-bootstrap intervals)")
            console.print(r.flags.summary)
        if r.dropout is not None:
            _print_frame(r.dropout[r.dropout["session"] == 3], f"{inst}: dropout, session 3",
                         {"label": "model", "n": "n", "auroc": "AUROC", "brier": "Brier",
                          "cal_slope": "cal. slope"})
        for note in r.notes:
            console.print(f"[yellow]note[/yellow]: {note}")
    if result.version is not None:
        console.print(f"registered [bold]ontrack-not-risk[/bold] version {result.version} "
                      "(alias candidate)")
    if result.decision is not None:
        colour = "green" if result.decision.promote else "yellow"
        console.print(f"gate: [{colour}]{result.decision.reason}[/{colour}]")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Cohort folder or sessions file.")],
    seed: Annotated[int, typer.Option(help="Seed for folds and models.")] = 0,
    folds: Annotated[int, typer.Option(help="Cross-validation folds.", min=2)] = 5,
    neighbours: Annotated[int, typer.Option(help="Neighbours for the navigator.", min=5)] = 50,
    instrument: Annotated[list[str] | None, typer.Option(
        help="Instrument(s) to model (default: every outcome instrument with a cut-off).")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for intervals.",
                                           min=20)] = 200,
    register: Annotated[bool, typer.Option(help="Log, register and gate the bundle.")] = True,
    permute_labels: Annotated[bool, typer.Option(
        help="Negative control: shuffle outcomes between clients before training.")] = False,
    target: Annotated[str, typer.Option(
        help="What 'not reliably improved' means: failed (on the instrument) or failed_nhs "
        "(the NHS Talking Therapies paired PHQ-9/GAD-7 rule; PHQ-9 and GAD-7 models only).")
    ] = "failed",
    flag_budget: Annotated[float, typer.Option(
        help="Flag budget: at most this share of eventual reliable improvers flagged by "
        "session 3 (sets the flag policy's entry threshold).", min=0.01, max=0.99)] = 0.30,
) -> None:
    """Cross-validate and compare all models, fit the bundle, log to MLflow, register, gate."""
    from features.targets import TARGETS
    from models.base import CalibrationError
    from training.pipeline import Settings, TooLittleDataError
    from training.train import train as run_training

    if target not in TARGETS:
        err.print(f"[red]error[/red]: --target must be one of {', '.join(TARGETS)}, "
                  f"not {target!r}")
        raise typer.Exit(2)
    cohort, _ = load_or_exit(data)
    result = _with_progress("training", lambda progress: run_training(
        cohort, data, Settings(seed=seed, n_folds=folds, n_neighbors=neighbours,
                               target=target, flag_budget=flag_budget),
        instruments=instrument or None, n_boot=bootstrap, register_model=register,
        permute_labels=permute_labels, progress=progress), errors=(TooLittleDataError, CalibrationError))
    print_training_report(result)
    console.print(f"MLflow run {result.run_id}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/ontrack-not-risk@champion")],
    data: Annotated[Path, typer.Option(help="Cohort to validate on (not used in training).")],
    bootstrap: Annotated[int, typer.Option(min=20)] = 200,
    recalibrate: Annotated[bool, typer.Option(
        help="Also fit a logistic recalibration (intercept and slope) on this cohort, judged "
        "in folds grouped by client.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for evaluation.md and its plots.")
                   ] = Path("reports/evaluation"),
) -> None:
    """External validation of a registered model on another cohort, without retraining:
    discrimination, calibration, flag policies, subgroups, band coverage and whether the
    cohort is large enough (Riley et al. 2024)."""
    from training.external import external_validation
    from training.tripod import evaluation_markdown

    cohort, _ = load_or_exit(data)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.exceptions import MlflowException

    ev = _with_progress("loading the model", lambda progress: external_validation(
        model, cohort, data, n_boot=bootstrap, recalibrate=recalibrate, progress=progress),
        errors=(LookupError, MlflowException))
    for inst, why in ev.not_covered.items():
        console.print(f"[yellow]{inst}: not evaluated[/yellow]: {why}")
    if not ev.instruments:
        console.print("[bold]Too small, and not covered[/bold]: had the model covered this "
                      "cohort, a validation on it could be this precise (Riley et al. 2024; "
                      "outcome events in brackets at the development outcome share):")
        for c in ev.sample_size:
            console.print(f"  - {c.sentence}")
    for inst, e in ev.instruments.items():
        _print_frame(e.comparison, f"{inst}: external validation of {model}",
                     {"session": "session", "n": "n", "auroc": "AUROC", "brier": "Brier",
                      "cal_slope": "cal. slope", "cal_intercept": "cal. intercept",
                      "sensitivity": "sens.", "specificity": "spec.", "flag_rate": "flagged"})
        if e.flags is not None:
            print_flag_table(e.flags.table, f"{inst}: flag policies replayed session by "
                             "session on every client of the cohort (95% client-bootstrap "
                             "intervals)")
            console.print(e.flags.summary)
        if e.recalibration is not None:
            _print_frame(e.recalibration, f"{inst}: recalibration",
                         {"risk": "risk", "brier": "Brier", "cal_slope": "cal. slope",
                          "cal_intercept": "cal. intercept", "fitted_a": "a", "fitted_b": "b"})
        if e.fairness is not None:
            for line in e.fairness.sentences():
                console.print(f"  {line}")
        small = [c for c in e.sample_size if not c.meets]
        if small:
            console.print(f"[bold]{inst}: too small for a precise validation[/bold]")
        for c in e.sample_size:
            console.print(f"  - {c.sentence}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluation.md"
    path.write_text(f"# External evaluation of `{model}`\n\n"
                    + evaluation_markdown(ev, out / "plots", out))
    console.print(f"evaluation: {path}")
    console.print(f"logged to MLflow run {ev.run_id}")


@app.command()
def report(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/ontrack-not-risk@champion")],
    data: Annotated[Path, typer.Option(help="Evaluation cohort (not used in training).")],
    format: Annotated[list[str] | None, typer.Option(
        "--format", help="md and/or html (repeat the option); PDF: print the HTML.")] = None,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports/tripod"),
    bootstrap: Annotated[int, typer.Option(min=20)] = 200,
    recalibrate: Annotated[bool, typer.Option(
        help="Include a logistic recalibration on the evaluation cohort.")] = False,
) -> None:
    """A TRIPOD+AI report for a registered model: every checklist item, filled from its
    MLflow run and an evaluation on --data, or marked "not available" with the reason;
    logged on the model's MLflow record."""
    from training.tripod import write_report

    formats = [f.lower() for f in (format or ["md", "html"])]
    bad = [f for f in formats if f not in {"md", "html"}]
    if bad:
        err.print(f"[red]error[/red]: --format must be md or html, not {', '.join(bad)} "
                  "(for a PDF, open report.html in a browser and print it)")
        raise typer.Exit(2)
    cohort, _ = load_or_exit(data)  # the contract's errors, named, before anything is written
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.exceptions import MlflowException

    paths = _with_progress("loading the model", lambda progress: write_report(
        model, cohort, data, out, formats, n_boot=bootstrap, recalibrate=recalibrate,
        progress=progress), errors=(LookupError, MlflowException))
    ev = paths.evaluation
    for inst, why in ev.not_covered.items():
        console.print(f"[yellow]{inst}: not evaluated[/yellow]: {why}")
    small = [c for e in ev.instruments.values() for c in e.sample_size if not c.meets]
    small += [c for c in ev.sample_size if not c.meets]
    for c in small:
        console.print(f"[yellow]too small[/yellow]: {c.sentence}")
    if paths.missing:
        err.print(f"[red]error[/red]: items without a section: {', '.join(paths.missing)}")
        raise typer.Exit(1)
    console.print(f"report: {paths.markdown}" + (f" and {paths.html}" if paths.html else ""))
    if paths.model_id:
        console.print(f"logged on the model record {paths.model_id} (artifacts/reports)")


@app.command()
def compare(
    run_id: Annotated[str | None, typer.Option(help="Training run (default: the latest).")] = None,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports"),
) -> None:
    """Leaderboard of the latest training run, and a Markdown report with its plots."""
    from training.report import comparison_report

    try:
        path, leaderboard = comparison_report(run_id, out)
    except LookupError as e:
        err.print(f"[red]error[/red]: {e}")
        raise typer.Exit(1) from None
    _print_frame(leaderboard, "Leaderboard (AUROC as of session 3, cross-validated)",
                 {"instrument": "instrument", "label": "model", "auroc": "AUROC",
                  "brier": "Brier", "cal_slope": "cal. slope", "flag_rate": "flagged"})
    from mlflow.tracking import MlflowClient

    from training.report import logged_models

    models = logged_models(MlflowClient())
    if len(models):
        cols = {"version": "version", "created": "created", "instruments": "instruments",
                **{c: c.replace("_auroc_s3", " AUROC s3") for c in models.columns
                   if c.endswith("_auroc_s3")},
                "gate_auroc_diff": "gate ΔAUROC", "gate_promote": "promoted"}
        _print_frame(models, "Logged models (newest first; MLflow search_logged_models)",
                     {k: v for k, v in cols.items() if k in models.columns})
    console.print(f"report: {path}")


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Clients to simulate.", min=100)] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    out: Annotated[Path, typer.Option(help="Where the demo cohort goes.")] = Path("data/demo"),
    serve: Annotated[bool, typer.Option(help="Start the service at the end.")] = True,
    port: Annotated[int | None, typer.Option(help="Port for the service.")] = None,
    bootstrap: Annotated[int, typer.Option(
        help="Bootstrap resamples for the intervals of the training report.", min=20)] = 100,
    oracle_clients: Annotated[int | None, typer.Option(
        help="Simulated clients given the Bayes oracle's probabilities (the ceiling the "
             "models are compared with); default: all, at most 2,000.", min=0)] = None,
) -> None:
    """The main job: simulate a cohort, validate it, train and compare the models, register the
    bundle (champion through the gate), and serve it with the web view."""
    from training.outcomes import outcome_tables
    from training.pipeline import Settings
    from training.registry import champion_version
    from training.train import train as run_training

    if (out / "sessions.csv").exists() and (out / "truth.csv").exists():
        console.print(f"using the simulated cohort already in {out} (delete it to re-simulate)")
    else:
        simulate(clients=clients, seed=seed, out=out, format="csv",
                 oracle_clients=min(clients, 2000) if oracle_clients is None
                 else min(oracle_clients, clients))
    cohort, report = load_or_exit(out)
    print_report(report)
    for table in outcome_tables(cohort):
        console.print(table)
    with _progress() as bar:
        task = bar.add_task("training", total=None)
        result = run_training(cohort, out, Settings(seed=seed), instruments=None,
                              n_boot=bootstrap,
                              progress=lambda m: bar.update(task, description=m))
        bar.update(task, description="done")
    print_training_report(result)
    if not serve:
        return
    serve_cmd = _command("serve")
    if serve_cmd is None:
        err.print("[red]error[/red]: no `serve` command is installed (the serving package "
                  "registers it: `make setup`)")
        raise typer.Exit(1)
    if champion_version() is None:
        os.environ["ONTRACK_MODEL_ALIAS"] = "candidate"
        console.print("[yellow]no champion yet (the gate did not promote this model): serving "
                      "the candidate, for demonstration only[/yellow]")
    serve_cmd(port=port)



@app.command("recommend-eval")
def recommend_eval(
    clients: Annotated[int, typer.Option(help="Clients in the simulated evaluation cohort.",
                                         min=1000)] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed of the cohort.")] = 1,
    archive_clients: Annotated[int, typer.Option(
        help="Fit the recommenders on a separate simulated archive of this many clients "
             "(seed + 1000); 0 = cross-fit within the cohort.", min=0)] = 0,
    folds: Annotated[int, typer.Option(help="Cross-fitting folds (archive 0).", min=2)] = 5,
    checklist: Annotated[bool, typer.Option(
        help="Give every policy and model the clinical-support checklist; --no-checklist "
             "blanks it for all (a service without it).")] = True,
    data: Annotated[Path | None, typer.Option(
        help="Evaluate on this cohort's own records instead of a simulation (a clinic's "
             "data: doubly robust estimates, no counterfactuals; --clients, "
             "--archive-clients and --checklist do not apply).")] = None,
    scenario: Annotated[str, typer.Option(
        help="Simulated world of cohort and archive: default, null-effects, confounded, "
             "weak-signal or shifted (docs/simulator.md).")] = "default",
    off_policy: Annotated[bool, typer.Option(
        help="Also value every policy from the records only (fitted propensities, doubly "
             "robust) and report its bias against the exact values.")] = False,
    log: Annotated[bool, typer.Option(help="Log an MLflow run.")] = True,
) -> None:
    """Policy value of the learned adaptation suggestions against the rules, a random choice
    and the oracle, on a simulated cohort's counterfactual outcomes; or, with --data, on a
    cohort's own records (docs/recommender.md)."""
    from training.recommendation.picks import CLAIMED, LEARNED, POLICY_SHORT
    from training.recommendation.policy import evaluate_policies
    from training.recommendation.tracking import log_to_mlflow
    from training.simulate.scenarios import SCENARIOS

    if scenario not in SCENARIOS:
        err.print(f"[red]error[/red]: --scenario must be one of {', '.join(SCENARIOS)}, "
                  f"not {scenario!r}")
        raise typer.Exit(2)

    if data is not None:
        _recommend_eval_on_data(data, seed, folds, log)
        return
    with _progress() as bar:
        task = bar.add_task("recommend-eval", total=None)
        rep = evaluate_policies(clients, seed, folds, archive_clients, checklist=checklist,
                                scenario=scenario, off_policy=off_policy,
                                progress=lambda m: bar.update(task, description=m))
    table = Table(title=f"Top-suggestion policies: {rep.n_flagged:,} flagged of "
                        f"{rep.n_clients:,} simulated clients ({rep.design})")
    for col in ("policy", "reliably improved", "vs rules (SE)", "reliably recovered",
                "top is best"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rep.results:
        table.add_row(POLICY_SHORT[r.policy], f"{100 * r.value:.2f}%",
                      f"{100 * r.diff_vs_rules:+.2f} ({100 * r.diff_se:.2f})",
                      f"{100 * r.recovery:.2f}%", f"{100 * r.top_is_best:.1f}%")
    console.print(table)
    def pct(x: float) -> str:
        return "n/a (no gap)" if x != x else f"{100 * x:.0f}%"

    for name in (*LEARNED, "info_limit"):
        console.print(f"{name}: {pct(rep.gap_closed(name))} of the rules-to-oracle gap "
                      f"closed ({pct(rep.gap_closed(name, outcome='recovery'))} on "
                      "recovery; "
                      f"{pct(rep.gap_closed(name, 'rules_without_checklist'))} "
                      "against the rules without the checklist)"
                      + (f"; fell back to the rules for {100 * rep.fallback_share[name]:.1f}%"
                         if name in rep.fallback_share else ""))
    for name in (*LEARNED, CLAIMED):
        console.print(f"{POLICY_SHORT[name]}: {pct(rep.limit_share(name))} of the "
                      "information limit's gain over the rules")
    console.print(f"claimed (shown as learned): {100 * rep.claim_share:.1f}% of the "
                  f"{rep.n_flagged:,} flagged clients (scenario {scenario})")
    if rep.dr:
        bias = rep.dr_bias()
        t = Table(title="From the records only (doubly robust, fitted propensities) against "
                        "the exact values")
        for col in ("policy", "doubly robust (SE)", "exact", "bias"):
            t.add_column(col, justify="left" if col == "policy" else "right")
        exact = rep.params["exact_on_known"]
        for r in rep.dr:
            t.add_row(POLICY_SHORT[r.policy], f"{100 * r.value:.2f}% ({100 * r.se:.2f})",
                      f"{100 * exact[r.policy]:.2f}%", f"{100 * bias[r.policy]:+.2f}")
        console.print(t)
    if log:
        console.print(f"MLflow run: {log_to_mlflow(rep)}")


def _recommend_eval_on_data(path: Path, seed: int, folds: int, log: bool) -> None:
    from training.recommendation.offpolicy import evaluate_cohort
    from training.recommendation.picks import POLICY_SHORT
    from training.recommendation.tracking import log_off_policy_to_mlflow

    cohort, _ = load_or_exit(path)
    with _progress() as bar:
        task = bar.add_task("recommend-eval", total=None)
        try:
            rep = evaluate_cohort(cohort.sessions, cohort.clients, cohort.adaptations,
                                  n_folds=folds, seed=seed,
                                  progress=lambda m: bar.update(task, description=m))
        except ValueError as e:
            bar.stop()
            err.print(f"[red]error[/red]: {e}")
            raise typer.Exit(1) from None
    table = Table(title=f"Top-suggestion policies on {path.name}: {rep.design}")
    for col in ("policy", "reliably improved (DR)", "vs rules (SE)", "IPW check",
                "received it"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rep.results:
        table.add_row(POLICY_SHORT[r.policy], f"{100 * r.value:.1f}% ({100 * r.se:.1f})",
                      f"{100 * r.diff_vs_rules:+.1f} ({100 * r.diff_se:.1f})",
                      f"{100 * r.ipw:.1f}%", f"{r.matched:,}")
    console.print(table)
    console.print("Observational estimates: valid only if who received what depended on what "
                  "the records hold. Propensities: " + rep.params["propensities"] + ".")
    if log:
        console.print(f"MLflow run: {log_off_policy_to_mlflow(rep, str(path))}")


COMMAND_GROUP = "ontrack.commands"


def _register_plugins() -> None:
    """The commands other packages add (entry points of `COMMAND_GROUP`: each is called with
    the Typer app). Called once, by `main`."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=COMMAND_GROUP):
        ep.load()(app)


def _command(name: str):
    """The callback of a registered command by name (e.g. serving's ``serve``), or None."""
    if not any(c.name == name or getattr(c.callback, "__name__", "") == name
               for c in app.registered_commands):
        _register_plugins()
    for c in app.registered_commands:
        if c.name == name or getattr(c.callback, "__name__", "") == name:
            return c.callback
    return None


def main() -> None:
    _register_plugins()
    app()


if __name__ == "__main__":
    main()
