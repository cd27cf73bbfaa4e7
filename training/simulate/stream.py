"""Streaming a cohort too large for memory to client-hash-partitioned Parquet.

    from training.simulate.stream import stream_cohort
    stream_cohort(1_200_000, seed=1, out="data/national", partitions=64)

writes the layout of `features.partitions`: ``sessions/``, ``clients/`` and ``adaptations/``
each hold ``part-00000.parquet`` .. ``part-{partitions-1}``, every row of a client in the bucket
`client_bucket` names for its id and in no other, then ``partitions.json`` (written last, so a
folder without it is not a finished cohort). Every bucket file exists, with the schema, even when
no client hashes to it. Columns and types are those `write_cohort` writes to Parquet (dates as
calendar dates); rows within a file are in client order, then session, then instrument.

The layout (clinics, therapists, covariates, intake dates, per-client keys) is drawn once for all
clients, exactly as `simulate_cohort` draws it; the clients are then simulated in chunks of
``chunk`` consecutive clients, and only a few chunks are in memory at a time. The course
kernels draw from per-client keys, so everything that follows from the courses is the same
whatever the chunk size and the same as `simulate_cohort(n_clients, seed)` gives: the clients
and adaptations tables, which session rows exist, their dates, clinics and therapists, and the
PHQ-9, GAD-7 and SRS scores (and SRS items). The PHQ-9 / GAD-7 item answers and the
clinical-support checklist ratings (the CSC rows' items and scores) come from per-chunk
generators, ``np.random.default_rng([seed, 1, i])`` and ``np.random.default_rng([seed, 3, i])``
for chunk ``i``, so they differ from `simulate_cohort`'s. A client's values depend on the seed
and the chunk size only (not on the number of partitions), and the files are byte-identical for
the same seed, chunk size and partitions; a streamed cohort is not byte-identical to a written
`simulate_cohort`.

No oracle and no ``truth.csv``: the oracle (docs/simulator.md, section 3) needs the whole cohort's
latents in memory and costs far more than the simulation itself.

While the main thread writes one chunk, ``workers`` threads simulate the next ones (the course
kernel, numpy and Arrow's Parquet writer release the GIL); at most ``workers + 1`` chunks wait
or are being built while one is written.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.contract import ADAPTATIONS_FILE, CLIENTS_FILE, SESSIONS_FILE
from features.partitions import Layout as PartitionLayout
from features.partitions import client_bucket, part_name
from training.simulate.generative import (
    INSTRUMENTS,
    Layout,
    checklist_ratings,
    make_layout,
    observe,
    run_courses,
    session_rows,
)
from training.simulate.params import AGE_BANDS, DIAGNOSES, GENDERS, OPTIONS, SIMULATOR_VERSION

SESSIONS_SCHEMA = pa.schema(
    [("client_id", pa.string()), ("session", pa.int64()), ("instrument", pa.string()),
     ("score", pa.float64()), ("date", pa.date32()), ("clinic_id", pa.string()),
     ("therapist_id", pa.string())]
    + [(f"item_{j}", pa.float64()) for j in range(1, 10)])
CLIENTS_SCHEMA = pa.schema(
    [("client_id", pa.string()), ("end_status", pa.string()), ("age_band", pa.string()),
     ("gender", pa.string()), ("diagnosis_group", pa.string()), ("intake_date", pa.date32())])
ADAPTATIONS_SCHEMA = pa.schema(
    [("client_id", pa.string()), ("session", pa.int64()), ("adaptation", pa.string())])
TABLES = {SESSIONS_FILE: SESSIONS_SCHEMA, CLIENTS_FILE: CLIENTS_SCHEMA,
          ADAPTATIONS_FILE: ADAPTATIONS_SCHEMA}
# the options `write_cohort` writes Parquet with (bytes depend on the data only)
WRITER_OPTIONS = dict(compression="zstd", write_statistics=False, store_schema=False)


@dataclass
class _Chunk:
    """One chunk's three tables, rows grouped by bucket: bucket k is rows bounds[k]:bounds[k+1]."""

    tables: dict[str, tuple[pa.Table, np.ndarray]]
    clients: int
    rows: int
    simulate: float
    build: float


def _slice(lay: Layout, a: int, b: int) -> Layout:
    return Layout(**{f.name: getattr(lay, f.name)[a:b] for f in fields(Layout)})


def _bounds(bucket: np.ndarray, partitions: int) -> np.ndarray:
    """Where each bucket starts in rows ordered by bucket: bucket k is bounds[k]:bounds[k+1]."""
    bounds = np.zeros(partitions + 1, dtype=np.int64)
    np.cumsum(np.bincount(bucket, minlength=partitions), out=bounds[1:])
    return bounds


def _group(bucket: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of the rows by bucket, and the bucket bounds in that order."""
    return np.argsort(bucket, kind="stable"), _bounds(bucket, partitions)


def _labels(values) -> pa.Array:
    return pa.array(list(values), type=pa.string())


class _Streamer:
    def __init__(self, n_clients: int, seed: int, partitions: int, scenario: str):
        from training.simulate.scenarios import scenario as named

        self.seed, self.partitions = seed, partitions
        self.p = named(scenario)
        self.pk = self.p.pack()
        self.lay = make_layout(n_clients, np.random.default_rng(seed), self.p)
        small = np.int16 if partitions <= np.iinfo(np.int16).max else np.int64
        self.bucket = client_bucket(self.lay.client_id, partitions).astype(small)
        self.ids = pa.array(self.lay.client_id, type=pa.string())
        self.clinic = _labels(f"K{c + 1:02d}" for c in range(int(self.lay.clinic.max()) + 1))
        self.ther = _labels(f"T{t + 1:04d}" for t in range(int(self.lay.therapist.max()) + 1))
        self.instrument = _labels(INSTRUMENTS)
        self.age, self.gender = _labels(AGE_BANDS), _labels(GENDERS)
        self.diag, self.option = _labels(DIAGNOSES), _labels(OPTIONS)

    def chunk(self, i: int, a: int, b: int) -> _Chunk:
        t0 = time.perf_counter()
        lay = _slice(self.lay, a, b)
        courses = run_courses(self.pk, lay)
        obs = observe(courses, lay)
        ratings = checklist_ratings(courses.domains, self.p,
                                    np.random.default_rng([self.seed, 3, i]))
        bucket = self.bucket[a:b]
        rows = session_rows(lay, obs, self.pk, np.random.default_rng([self.seed, 1, i]),
                            ratings, group=bucket)  # rows grouped by bucket
        t1 = time.perf_counter()
        client = rows.client
        s_bounds = _bounds(bucket[client], self.partitions)
        sessions = pa.Table.from_arrays(
            [self.ids.take(client + a), rows.session, self.instrument.take(rows.instrument),
             rows.score, rows.date, self.clinic.take(lay.clinic[client]),
             self.ther.take(lay.therapist[client])] + list(rows.items),
            schema=SESSIONS_SCHEMA)
        cperm, c_bounds = _group(bucket, self.partitions)
        clients = pa.Table.from_arrays(
            [self.ids.take(cperm + a), pa.array(obs.status[cperm], type=pa.string()),
             self.age.take(lay.age[cperm]), self.gender.take(lay.gender[cperm]),
             self.diag.take(lay.diag[cperm]), lay.start[cperm]],
            schema=CLIENTS_SCHEMA)
        has = np.flatnonzero(obs.option >= 1)
        aperm, a_bounds = _group(bucket[has], self.partitions)
        has = has[aperm]
        adaptations = pa.Table.from_arrays(
            [self.ids.take(has + a), obs.option_slot[has].astype(np.int64),
             self.option.take(obs.option[has])],
            schema=ADAPTATIONS_SCHEMA)
        t2 = time.perf_counter()
        return _Chunk({SESSIONS_FILE: (sessions, s_bounds), CLIENTS_FILE: (clients, c_bounds),
                       ADAPTATIONS_FILE: (adaptations, a_bounds)},
                      b - a, sessions.num_rows, t1 - t0, t2 - t1)


def refuse_non_empty(out: Path) -> None:
    """ValueError unless ``out`` is missing or an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: the streaming writer "
                         "writes a new cohort into an empty or new folder only")


def stream_cohort(n_clients: int, seed: int, out: str | Path, partitions: int = 64,
                  chunk: int = 100_000, scenario: str = "default", progress=None,
                  workers: int = 2) -> dict:
    """Simulate ``n_clients`` clients in chunks of ``chunk`` and write them to ``out`` as a
    client-hash-partitioned Parquet cohort of ``partitions`` buckets (module docstring).

    ``scenario`` names a world of `training.simulate.scenarios`. ``progress(k)`` is called with
    the number of clients written after each chunk. ``workers``: threads that simulate chunks
    while the calling thread writes (the output does not depend on it). Refuses (ValueError) when ``out`` exists and
    is not an empty folder. Returns clients, rows (of the sessions table), partitions, chunks,
    seconds (wall) and the seconds of each phase: simulate (courses, censoring, items), tables
    (Arrow tables grouped by bucket) and write (Parquet); simulate and tables run in a worker
    thread while the main thread writes, so the phases add up to more than the wall time.
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be at least 1, got {n_clients}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    if partitions < 1:
        raise ValueError(f"the number of partitions must be at least 1, got {partitions}")
    out = Path(out)
    refuse_non_empty(out)
    created = not out.exists()
    t0 = time.perf_counter()
    streamer = _Streamer(n_clients, seed, partitions, scenario)
    spans = [(i, a, min(a + chunk, n_clients)) for i, a in enumerate(range(0, n_clients, chunk))]
    paths = {name: [out / name / part_name(k) for k in range(partitions)] for name in TABLES}
    writers: dict[str, list[pq.ParquetWriter]] = {}
    phase = {"simulate": 0.0, "tables": 0.0, "write": 0.0}
    done = rows = 0
    try:
        for name, schema in TABLES.items():
            (out / name).mkdir(parents=True, exist_ok=True)
            writers[name] = []
            for path in paths[name]:
                writers[name].append(pq.ParquetWriter(_tmp(path), schema, **WRITER_OPTIONS))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="simulate") as pool:
            depth = workers + 1  # one chunk queued, so that no worker waits for the writer
            ahead = deque(pool.submit(streamer.chunk, *s) for s in spans[:depth])
            for j in range(len(spans)):
                part = ahead.popleft().result()
                if j + depth < len(spans):
                    ahead.append(pool.submit(streamer.chunk, *spans[j + depth]))
                tw = time.perf_counter()
                for name, (table, bounds) in part.tables.items():
                    for k, w in enumerate(writers[name]):
                        if bounds[k + 1] > bounds[k]:
                            w.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]))
                phase["write"] += time.perf_counter() - tw
                phase["simulate"] += part.simulate
                phase["tables"] += part.build
                done += part.clients
                rows += part.rows
                del part
                if progress is not None:
                    progress(spans[j][2] - spans[j][1])
        tw = time.perf_counter()
        for ws in writers.values():
            for w in ws:
                w.close()
        phase["write"] += time.perf_counter() - tw
    except BaseException:
        for ws in writers.values():
            for w in ws:
                w.close()
        for name, ps in paths.items():  # leave the folder as it was: no half-written cohort
            for path in ps:
                _tmp(path).unlink(missing_ok=True)
            if (out / name).is_dir() and not any((out / name).iterdir()):
                (out / name).rmdir()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    for ps in paths.values():
        for path in ps:
            _tmp(path).replace(path)
    PartitionLayout(out, partitions).write_marker(
        simulator_version=SIMULATOR_VERSION, scenario=scenario, seed=seed, clients=n_clients,
        chunk=chunk)
    return {"clients": done, "rows": rows, "partitions": partitions, "chunks": len(spans),
            "seconds": time.perf_counter() - t0, **phase}


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")
