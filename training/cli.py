"""`ontrack`: the one command-line interface.

Training-side commands live here; serving adds its own (`serve`, `build`, `keys`, `audit`) from
`serving/cli.py`, imported lazily so that serving never imports training code and a plain
`ontrack validate` does not pay for BentoML's import.
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
    format: Annotated[str, typer.Option(help="csv or parquet.")] = "csv",
    oracle_clients: Annotated[int, typer.Option(help="Clients with oracle probabilities.",
                                                min=0)] = 5000,
) -> None:
    """Simulate a cohort in the contract's format, plus truth.csv and a self-check summary."""
    if format not in {"csv", "parquet"}:
        err.print(f"[red]error[/red]: --format must be csv or parquet, not {format!r}")
        raise typer.Exit(2)
    from training.simulate.cli import simulate_command

    simulate_command(clients=clients, seed=seed, out=out, format=format,
                     oracle_clients=oracle_clients)


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Clients to simulate.", min=100)] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    out: Annotated[Path, typer.Option(help="Where the demo cohort goes.")] = Path("data/demo"),
) -> None:
    """The main job: simulate a cohort, validate it and print its outcome table."""
    from training.outcomes import outcome_tables

    simulate(clients=clients, seed=seed, out=out, format="csv", oracle_clients=min(clients, 2000))
    cohort, report = load_or_exit(out)
    print_report(report)
    for table in outcome_tables(cohort):
        console.print(table)


def _register_serving() -> None:
    """Serving's commands, if the serving package provides them (lazy import)."""
    from importlib.util import find_spec

    if find_spec("serving.cli") is None:
        return
    from serving.cli import register

    register(app)


def main() -> None:
    _register_serving()
    app()


if __name__ == "__main__":
    main()
