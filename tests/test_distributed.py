"""Features on Dask equal the single-machine features (same implementation, partitioned)."""

import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")

from features.contract import validate_frames  # noqa: E402
from features.pointintime import point_in_time  # noqa: E402
from training.distributed import features_on_dask, partition_by_client  # noqa: E402
from training.simulate import simulate_cohort  # noqa: E402


def test_dask_features_equal_local_features():
    sim = simulate_cohort(400, seed=4, oracle_clients=0)
    cohort, report = validate_frames(sim.sessions, sim.clients)
    assert report.ok
    local = point_in_time(cohort.sessions)
    expected = pd.concat([local.keys[["client_id"]], local.X], axis=1)
    # deliberately shuffled rows in 7 partitions that split clients, then re-partitioned
    shuffled = cohort.sessions.sample(frac=1, random_state=0).reset_index(drop=True)
    ddf = dd.from_pandas(shuffled, npartitions=7)
    got = features_on_dask(partition_by_client(ddf, 5)).compute(scheduler="synchronous")
    got = got.sort_values(["client_id", "session"]).reset_index(drop=True)
    expected = expected.sort_values(["client_id", "session"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
