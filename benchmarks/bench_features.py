"""Benchmark of the point-in-time features (features/pointintime.py).

    .venv/bin/python benchmarks/bench_features.py            # 1,000,000 session rows
    .venv/bin/python benchmarks/bench_features.py --rows 200000 --repeats 3

Simulates a plausible contract-typed frame inline (seeded): clients with 1-20 sessions, some
missed, PHQ-9 (with item 9), GAD-7 and SRS at every attended session, and dates. Reports the
median over several runs of the whole `point_in_time` call (DataFrame in, FeatureFrame out):
rows per second for the training case (as of sessions 1..6) and the serving case (as of each
client's latest session), and microseconds per single-client call (10 sessions), from a
DataFrame and from a mapping of column lists (the prediction service's request path).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from features.pointintime import point_in_time

INSTRUMENTS = ("PHQ-9", "GAD-7", "SRS")


def simulate(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """About `n_rows` session rows (3 instruments per attended session)."""
    rng = np.random.default_rng(seed)
    n_clients = max(1, round(n_rows / (3 * 8.5)))  # ~8.5 attended sessions per client
    length = rng.integers(1, 21, n_clients)  # planned sessions 1..20
    client = np.repeat(np.arange(n_clients), length)
    start = np.repeat(np.cumsum(length) - length, length)
    session = np.arange(len(client)) - start + 1
    attended = (session == 1) | (rng.random(len(client)) > 0.12)
    client, session = client[attended], session[attended]
    intake = rng.normal(16, 5, n_clients)
    rate = rng.normal(0.25, 0.2, n_clients)
    phq = np.clip(np.round(intake[client] - 6 * rate[client] * np.log(session)
                           + rng.normal(0, 2, len(client))), 0, 27)
    gad = np.clip(np.round(phq * 0.75 + rng.normal(0, 2, len(client))), 0, 21)
    srs = np.clip(np.round(rng.normal(35, 3, len(client)), 1), 0, 40)
    item9 = np.where(rng.random(len(client)) < 0.1, rng.integers(1, 4, len(client)), 0)
    date = (np.datetime64("2024-01-01", "D") + rng.integers(0, 300, n_clients)[client]
            + 7 * (session - 1)).astype("datetime64[ns]")
    k = len(client)
    ids = np.char.add("c", np.char.zfill(client.astype(str), 7))
    frame = pd.DataFrame({
        "client_id": pd.array(np.repeat(ids, 3), dtype="string"),
        "session": pd.array(np.repeat(session, 3), dtype="Int64"),
        "instrument": pd.array(np.tile(INSTRUMENTS, k), dtype="string"),
        "score": np.stack([phq, gad, srs], axis=1).ravel(),
        "date": np.repeat(date, 3),
        "item_9": np.stack([item9, np.full(k, np.nan), np.full(k, np.nan)], axis=1).ravel(),
    })
    return frame


def with_checklist(frame: pd.DataFrame, share: float = 0.6, seed: int = 1) -> pd.DataFrame:
    """``frame`` plus one clinical-support checklist (CSC, 5 items 0-4) for ``share`` of the
    clients, at their third attended session (as a not-on-track client would get it)."""
    rng = np.random.default_rng(seed)
    phq = frame[frame["instrument"] == "PHQ-9"]
    third = phq.groupby("client_id", sort=False).nth(2)
    third = third[rng.random(len(third)) < share]
    items = rng.integers(0, 5, (len(third), 5)).astype(float)
    csc = pd.DataFrame({"client_id": third["client_id"].to_numpy(),
                        "session": third["session"].to_numpy(),
                        "instrument": pd.array(["CSC"] * len(third), dtype="string"),
                        "score": items.sum(axis=1), "date": third["date"].to_numpy()})
    for k in range(5):
        csc[f"item_{k + 1}"] = items[:, k]
    out = pd.concat([frame, csc], ignore_index=True)
    return out.sort_values(["client_id", "session"], kind="stable", ignore_index=True)


def one_client(n_sessions: int = 10) -> pd.DataFrame:
    """One client with sessions 1..n_sessions, PHQ-9 + GAD-7 + SRS at each."""
    k = np.arange(1, n_sessions + 1)
    phq = np.maximum(20.0 - k, 0)
    return pd.DataFrame({
        "client_id": pd.array(["c1"] * (3 * n_sessions), dtype="string"),
        "session": pd.array(np.repeat(k, 3), dtype="Int64"),
        "instrument": pd.array(list(INSTRUMENTS) * n_sessions, dtype="string"),
        "score": np.stack([phq, phq * 0.7 // 1, np.full(n_sessions, 35.0)], axis=1).ravel(),
        "date": np.repeat(np.datetime64("2024-01-01", "ns")
                          + (k - 1) * np.timedelta64(7, "D"), 3),
        "item_9": np.stack([np.zeros(n_sessions), np.full(n_sessions, np.nan),
                            np.full(n_sessions, np.nan)], axis=1).ravel(),
    })


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--single-repeats", type=int, default=1000)
    args = parser.parse_args()

    frame = simulate(args.rows)
    n = len(frame)
    one = one_client()
    point_in_time(frame.head(1000))  # warm-up
    train = median_seconds(lambda: point_in_time(frame), args.repeats)
    serve = median_seconds(lambda: point_in_time(frame, at=None), args.repeats)
    single_train = median_seconds(lambda: point_in_time(one), args.single_repeats)
    single_serve = median_seconds(lambda: point_in_time(one, at=None), args.single_repeats)
    request = {c: one[c].tolist() for c in one.columns}  # what the service holds: lists
    request["date"] = one["date"].to_numpy()
    single_map = median_seconds(lambda: point_in_time(request, at=None), args.single_repeats)
    checked = with_checklist(frame)
    train_ck = median_seconds(lambda: point_in_time(checked), args.repeats)
    n_train = len(point_in_time(frame))
    n_clients = frame["client_id"].nunique()

    table = Table(title=f"point_in_time: {n:,} session rows, {n_clients:,} clients "
                        f"(median of {args.repeats} runs; single client: "
                        f"{args.single_repeats} runs)")
    for col in ("case", "input", "output rows", "median", "throughput"):
        table.add_column(col, justify="right" if col != "case" else "left")
    table.add_row("training, at=(1..6)", f"{n:,} rows", f"{n_train:,}", f"{train:.3f} s",
                  f"{n / train:,.0f} rows/s")
    table.add_row("training, at=(1..6), checklist for 60% of clients", f"{len(checked):,} rows",
                  "", f"{train_ck:.3f} s", f"{len(checked) / train_ck:,.0f} rows/s")
    table.add_row("serving batch, at=None", f"{n:,} rows", f"{n_clients:,}", f"{serve:.3f} s",
                  f"{n / serve:,.0f} rows/s")
    table.add_row("1 client, 10 sessions, at=(1..6)", f"{len(one)} rows", "6",
                  f"{single_train * 1e6:,.0f} µs", "")
    table.add_row("1 client, 10 sessions, at=None", f"{len(one)} rows", "1",
                  f"{single_serve * 1e6:,.0f} µs", "")
    table.add_row("1 client, 10 sessions, at=None, mapping of lists", f"{len(one)} rows", "1",
                  f"{single_map * 1e6:,.0f} µs", "")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
