"""Point-in-time features on a Dask cluster, for cohorts one machine cannot hold.

Features are computed per client from that client's own rows only, so a sessions table
partitioned by client can be processed partition by partition with the ONE feature
implementation (`features.pointintime.point_in_time`); nothing is re-implemented here. Rows of a
client must not be split across partitions: `partition_by_client` hashes the client id into
partitions first, with the bucket rule of `features.partitions` (the layout `ontrack score`
reads, docs/scale.md).

    import dask.dataframe as dd
    sessions = dd.read_parquet("s3://bucket/cohort/sessions/")      # any Dask source
    feats = features_on_dask(partition_by_client(sessions, 64))    # a lazy Dask DataFrame
    feats.to_parquet("features/")                                  # or .compute()

Needs the optional extra: `uv sync --extra distributed`.
"""

from __future__ import annotations

import pandas as pd

from features.partitions import client_bucket
from features.pointintime import DEFAULT_AT, FEATURE_NAMES, point_in_time


def partition_by_client(sessions, n_partitions: int):
    """Re-partition a Dask sessions frame so that every client's rows sit in one partition."""
    frame = sessions.assign(_part=sessions["client_id"].map_partitions(
        lambda ids: pd.Series(client_bucket(ids, n_partitions), index=ids.index),
        meta=("_part", "int64")))
    return frame.shuffle(on="_part", npartitions=n_partitions).drop(columns="_part")


def _partition_features(part: pd.DataFrame, instrument: str, at) -> pd.DataFrame:
    if part.empty:
        return _meta()
    ff = point_in_time(part, instrument=instrument, at=at)
    # the feature `session` is the row's t, so the client id is the only key to add
    return pd.concat([ff.keys[["client_id"]].reset_index(drop=True),
                      ff.X.reset_index(drop=True)], axis=1)


def _meta() -> pd.DataFrame:
    cols = {"client_id": pd.Series(dtype="string")}
    cols.update({n: pd.Series(dtype="float64") for n in FEATURE_NAMES})
    return pd.DataFrame(cols)


def features_on_dask(sessions, instrument: str = "PHQ-9", at=DEFAULT_AT):
    """Lazy Dask frame of (client_id, features...) rows, one partition at a time."""
    return sessions.map_partitions(_partition_features, instrument, at, meta=_meta())
