"""Cohorts in client-hash partitions: the on-disk layout batch scoring reads and the streaming
simulator writes.

A partitioned cohort is a folder whose ``sessions/`` (and optional ``clients/``) hold one Parquet
file per bucket, ``part-00017.parquet``, each with every row of the clients whose id hashes to
that bucket (`client_bucket`) and no other client's, plus ``partitions.json`` naming the number of
buckets. Because a client never spans two files, every bucket can be validated, featurised and
assessed on its own, on any worker, with the ONE implementation of each step; and a reader can
prove the layout cheaply (every id in file k hashes to k).

The hash is pandas' `hash_array` (SipHash with a fixed key) of the id text: the same bucket for an
id on every machine, process and run, whatever else the file holds.

May import: numpy, pandas, pyarrow and `features.contract` (file names). Nothing above features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import CLIENTS_FILE, SESSIONS_FILE

LAYOUT_FILE = "partitions.json"
LAYOUT_KIND = "ontrack-client-hash"
LAYOUT_VERSION = 1


def client_bucket(ids, n: int) -> np.ndarray:
    """The bucket (0 .. n-1) of each client id: stable across machines, processes and runs."""
    if n < 1:
        raise ValueError(f"the number of partitions must be at least 1, got {n}")
    text = pd.Series(ids, dtype="string").fillna("").to_numpy(dtype=object)
    return (pd.util.hash_array(text, categorize=True) % np.uint64(n)).astype(np.int64)


def part_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


@dataclass(frozen=True)
class Layout:
    """A partitioned cohort folder (see the module docstring)."""

    root: Path
    partitions: int

    def sessions(self, k: int) -> Path:
        return self.root / SESSIONS_FILE / part_name(k)

    def clients(self, k: int) -> Path | None:
        p = self.root / CLIENTS_FILE / part_name(k)
        return p if p.exists() else None

    def write_marker(self, **extra) -> Path:
        meta = {"kind": LAYOUT_KIND, "version": LAYOUT_VERSION, "partitions": self.partitions,
                "hash": "pandas.util.hash_array(client_id) % partitions", **extra}
        path = self.root / LAYOUT_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path


def read_layout(root: str | Path) -> Layout | None:
    """The layout of a partitioned cohort folder, or None when ``root`` is not one."""
    root = Path(root)
    marker = root / LAYOUT_FILE
    if not marker.is_file():
        return None
    meta = json.loads(marker.read_text())
    if meta.get("kind") != LAYOUT_KIND or meta.get("version") != LAYOUT_VERSION:
        raise ValueError(f"{marker} is not an OnTrack client-hash layout of version "
                         f"{LAYOUT_VERSION}")
    return Layout(root, int(meta["partitions"]))


def misplaced(ids, k: int, n: int) -> np.ndarray:
    """Mask of the rows whose client does not belong in bucket ``k`` of ``n``."""
    return client_bucket(ids, n) != k


# ------------------------------------------------------------------------------------------
# Ingest: any sessions (and clients) file into the layout, in one streaming pass
# ------------------------------------------------------------------------------------------
#: The 1-based data row of each row in the file it came from (header excluded), kept through
#: the buckets so that a validation report can name the row a user would open.
SOURCE_ROW = "_source_row"
_BATCH_ROWS = 1 << 20


def _batches(path: Path):
    """Record batches of a CSV or Parquet file, streamed. CSV cells are read as text (the
    contract's shape rules coerce and report them, exactly as for a whole file)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS)
        return
    with path.open("r", newline="") as fh:
        header = fh.readline().strip().split(",")
    names = [h.strip().strip('"') for h in header]
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=64 << 20),
                            convert_options=pacsv.ConvertOptions(
                                column_types={n: pa.string() for n in names},
                                strings_can_be_null=True))
    yield from reader


def bucket_file(source: Path, folder: Path, partitions: int, progress=None) -> int:
    """Split one table file into ``folder/part-K.parquet`` by client bucket (streaming: memory
    is one batch, whatever the file's size). Returns the number of rows. Every bucket file is
    written, empty ones too; files appear under their final names only when complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    schema = None
    seen = 0
    try:
        for batch in _batches(source):
            table = pa.Table.from_batches([batch])
            if "client_id" not in table.column_names:
                raise ValueError(f"{source.name}: required column 'client_id' is missing "
                                 "(rule: column_missing)")
            table = table.append_column(SOURCE_ROW, pa.array(
                np.arange(seen + 1, seen + table.num_rows + 1, dtype=np.int64)))
            if schema is None:
                schema = table.schema
            table = table.cast(schema)
            bucket = client_bucket(table.column("client_id").to_pandas(), partitions)
            order = np.argsort(bucket, kind="stable")
            bounds = np.searchsorted(bucket[order], np.arange(partitions + 1))
            table = table.take(order)
            for k in range(partitions):
                lo, hi = int(bounds[k]), int(bounds[k + 1])
                if hi > lo:
                    if k not in writers:
                        writers[k] = pq.ParquetWriter(folder / (part_name(k) + ".tmp"),
                                                      schema, compression="zstd")
                    writers[k].write_table(table.slice(lo, hi - lo))
            seen += table.num_rows
            if progress is not None:
                progress(table.num_rows)
    finally:
        for w in writers.values():
            w.close()
    if schema is None:
        raise ValueError(f"{source.name} holds no rows")
    for k in range(partitions):
        tmp = folder / (part_name(k) + ".tmp")
        if k not in writers:
            pq.write_table(schema.empty_table(), tmp, compression="zstd")
        tmp.replace(folder / part_name(k))
    return seen


def ingest(sessions: Path, clients: Path | None, root: Path, partitions: int,
           progress=None) -> Layout:
    """A partitioned copy of a cohort's sessions (and clients) file under ``root``: the
    marker is written last, so a folder with one is complete."""
    layout = Layout(root, partitions)
    rows = {SESSIONS_FILE: bucket_file(sessions, root / SESSIONS_FILE, partitions, progress)}
    if clients is not None:
        rows[CLIENTS_FILE] = bucket_file(clients, root / CLIENTS_FILE, partitions)
    layout.write_marker(source_rows=rows, source=sessions.name)
    return layout
