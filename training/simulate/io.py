"""Writing a simulated cohort: the contract's files plus `truth.csv`, byte-identical per seed.

CSV is written by Arrow's writer (shortest round-trip float text, so the same numbers always give
the same bytes; SRS values are tenths and print with one decimal). `truth.csv` states the
oracle's Monte Carlo standard error per value in `oracle_se_s1..s6`. `simulation.json` names the
simulator version and scenario that produced the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.contract import ADAPTATIONS_FILE, CLIENTS_FILE, SESSIONS_FILE

if TYPE_CHECKING:
    from training.simulate.generative import SimulatedCohort

FORMATS = ("csv", "parquet")


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    table = _table(frame)
    if path.suffix == ".parquet":
        # no pandas metadata and fixed writer options, so that bytes depend on the data only
        table = table.replace_schema_metadata(None)
        pq.write_table(table, path, compression="zstd", write_statistics=False,
                       store_schema=False)
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))
    return path


def write_cohort(cohort: SimulatedCohort, out_dir: Path, format: str = "csv") -> list[Path]:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions = cohort.sessions.copy()
    sessions["date"] = sessions["date"].dt.date  # calendar dates, no time of day
    clients = cohort.clients.copy()
    clients["intake_date"] = clients["intake_date"].dt.date
    written = [
        write_table(sessions, out_dir / f"{SESSIONS_FILE}.{format}"),
        write_table(clients, out_dir / f"{CLIENTS_FILE}.{format}"),
        write_table(cohort.adaptations, out_dir / f"{ADAPTATIONS_FILE}.{format}"),
        write_table(cohort.truth, out_dir / "truth.csv"),
    ]
    meta = out_dir / "simulation.json"
    meta.write_text(json.dumps(simulation_meta(cohort), indent=2, sort_keys=True) + "\n")
    written.append(meta)
    return written


def simulation_meta(cohort: SimulatedCohort) -> dict:
    """What produced the files: simulator version, scenario, seed and size (no client data)."""
    from training.simulate.params import SIMULATOR_VERSION

    return {"simulator_version": SIMULATOR_VERSION, "scenario": cohort.scenario,
            "seed": cohort.seed, "clients": len(cohort.clients)}
