"""Concurrent requests assessed in one pass (adaptive batching).

An assessment has a fixed cost per call (model calls, the neighbour searches, the flag
replay) that is many times the cost of one more client in the same call, so eight EHR calls
of one client each, arriving together, are cheaper as one call of eight clients. One worker
thread owns the bundle: a request's validated frames are queued and the caller waits; the
worker takes everything queued (up to ``max_clients`` clients), assesses it in one call per
group of compatible requests and hands each caller its own assessments. A request that
arrives while the service is idle is assessed at once, alone (no deliberate wait).

Every client's assessment depends on its own record only (the tests and
`benchmarks/golden_assess.py` check one client alone against the same client in a batch of
5,000), so batching changes no output. Client ids are made unique per request inside a
batch (two requests may name different people with the same id) and restored afterwards.
When a combined call raises, each request of it is assessed alone, so a request only ever
sees its own error.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.pointintime import SessionColumns


@dataclass
class _Job:
    sessions: pd.DataFrame
    covariates: pd.DataFrame | None
    budget: float | None
    alliance_after: bool
    n_clients: int
    result: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """Requests assessed in one call: the same settings and the same columns."""
        return (self.budget, self.alliance_after, tuple(self.sessions.columns))


class Batcher:
    """The bundle's one caller on the request path (see the module docstring)."""

    def __init__(self, bundle, horizon: int, max_clients: int = 64) -> None:
        self.bundle = bundle
        self.horizon = horizon
        self.max_clients = max_clients
        self.calls = 0  # combined calls made (for tests and the benchmark)
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._worker = threading.Thread(target=self._loop, name="ontrack-assess",
                                        daemon=True)
        self._worker.start()

    def assess(self, sessions: pd.DataFrame, covariates: pd.DataFrame | None = None, *,
               budget: float | None = None, alliance_after: bool = False) -> list:
        """`Bundle.assess` of one request, batched with whatever else is waiting."""
        n = int(pd.unique(sessions["client_id"]).size)
        job = _Job(sessions, covariates, budget, alliance_after, n)
        with self._ready:
            self._queue.append(job)
            self._ready.notify()
        return job.result.result()

    # ------------------------------------------------------------------------------ worker
    def _take(self) -> list[_Job]:
        with self._ready:
            while not self._queue:
                self._ready.wait()
            jobs = [self._queue.popleft()]
            total = jobs[0].n_clients
            while self._queue and total + self._queue[0].n_clients <= self.max_clients:
                total += self._queue[0].n_clients
                jobs.append(self._queue.popleft())
        return jobs

    def _loop(self) -> None:
        while True:
            groups: dict[tuple, list[_Job]] = {}
            for job in self._take():
                groups.setdefault(job.key, []).append(job)
            for jobs in groups.values():
                self._run(jobs)

    def _alone(self, job: _Job) -> None:
        try:
            job.result.set_result(self.bundle.assess(
                job.sessions, job.covariates, horizon=self.horizon, budget=job.budget,
                alliance_after=job.alliance_after))
        except BaseException as err:  # noqa: BLE001 (handed to the request's own thread)
            job.result.set_exception(err)

    def _run(self, jobs: list[_Job]) -> None:
        self.calls += 1
        if len(jobs) == 1:
            self._alone(jobs[0])
            return
        try:
            sessions, covariates, owner = _combined(jobs)
            out = self.bundle.assess(sessions, covariates, horizon=self.horizon,
                                     budget=jobs[0].budget,
                                     alliance_after=jobs[0].alliance_after)
        except Exception:  # noqa: BLE001 (each request alone: it gets its own error)
            for job in jobs:
                self._alone(job)
            return
        mine: list[list] = [[] for _ in jobs]
        for a in out:
            j, cid = owner[a.client_id]
            a.client_id = cid
            mine[j].append(a)
        for job, got in zip(jobs, mine, strict=True):
            job.result.set_result(got)


def _combined(jobs: list[_Job]) -> tuple[SessionColumns, pd.DataFrame | None,
                                         dict[str, tuple[int, Any]]]:
    """One sessions table of every request (ids made unique per request), the covariates
    likewise, and the map from a combined id back to (request, its own id)."""
    parts = [SessionColumns.of(j.sessions) for j in jobs]
    owner: dict[str, tuple[int, Any]] = {}
    ids = []
    for j, p in enumerate(parts):
        uniq, inverse = np.unique(p["client_id"].astype(str), return_inverse=True)
        new = np.array([f"{j}/{u}" for u in uniq], dtype=object)
        for u, n in zip(uniq.tolist(), new.tolist(), strict=True):
            owner[n] = (j, u)
        ids.append(new[inverse])
    out = SessionColumns({name: np.concatenate([p[name] for p in parts])
                          for name in parts[0] if name != "client_id"})
    out["client_id"] = np.concatenate(ids)
    out = SessionColumns({name: out[name] for name in parts[0]})  # the request's order
    out.id_dtype = parts[0].id_dtype
    covs = []
    for j, job in enumerate(jobs):
        if job.covariates is not None and len(job.covariates):
            c = job.covariates.copy()
            c.index = [f"{j}/{i}" for i in c.index.astype(str)]
            covs.append(c)
    return out, (pd.concat(covs) if covs else None), owner
