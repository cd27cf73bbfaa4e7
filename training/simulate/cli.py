"""`ontrack simulate`: the work behind the command (registered by the lead in training/cli.py)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from training.simulate.generative import simulate_cohort
from training.simulate.params import SIMULATOR_VERSION
from training.simulate.summary import summary


def stream_command(clients: int, seed: int, out: Path, partitions: int,
                   scenario: str = "default", console: Console | None = None) -> dict:
    """Stream the cohort to `partitions` client-hash Parquet partitions in `out`
    (`training.simulate.stream`; no oracle, no truth.csv, no self-check table) and print a
    one-line summary. Returns `stream_cohort`'s figures."""
    from training.simulate.stream import stream_cohort

    console = console or Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        done = bar.add_task("clients simulated and written", total=clients)
        figures = stream_cohort(clients, seed, out, partitions=partitions, scenario=scenario,
                                progress=lambda k: bar.advance(done, k))
    console.print(f"wrote {figures['clients']:,} clients, {figures['rows']:,} session rows in "
                  f"{partitions} partitions to {out} in {figures['seconds']:.1f} s "
                  f"(simulator {SIMULATOR_VERSION}, scenario {scenario}, seed {seed}; no oracle "
                  "and no truth.csv)")
    return figures


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def simulate_command(clients: int, seed: int, out: Path, format: str = "csv",
                     oracle_clients: int = 5000, console: Console | None = None,
                     scenario: str = "default") -> int:
    """Simulate, write the cohort and truth.csv to `out`, print the self-check table.
    Returns the number of tuned figures outside their published range (0 = all in range)."""
    console = console or Console()
    t0 = time.perf_counter()
    n_or = min(oracle_clients, clients)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("oracle (Bayes, per client)", total=max(n_or, 1))
        cohort = simulate_cohort(clients, seed, oracle_clients=oracle_clients,
                                 progress=lambda k: bar.advance(task, k), scenario=scenario)
    written = cohort.write(out, format)
    elapsed = time.perf_counter() - t0
    rows = summary(cohort.sessions, cohort.clients, cohort.truth)
    table = Table(title=f"Simulated cohort: {clients:,} clients, seed {seed}, scenario "
                        f"{scenario} (simulator {SIMULATOR_VERSION})")
    for col in ("figure", "simulated", "published", "in range", "tuned"):
        table.add_column(col)
    for r in rows:
        ok = r.in_range
        table.add_row(r.figure, _fmt(r.simulated), r.published,
                      "" if ok is None else ("[green]yes[/]" if ok else "[red]NO[/]"),
                      "tuned" if r.tuned else "not tuned")
    console.print(table)
    info = cohort.oracle_info
    if info:
        console.print(f"oracle: {info['subset_size']:,} clients, max Monte Carlo SE "
                      f"{info['max_se']:.4f} (target {info['se_target']}), mean paths "
                      f"{info['mean_paths']:.0f} per value")
    console.print(f"wrote {', '.join(p.name for p in written)} to {out} in {elapsed:.1f} s")
    return sum(1 for r in rows if r.tuned and r.in_range is False)
