"""Counterfactual outcomes under each adaptation, with common random numbers.

Every client's course is re-simulated once per option (none + the six adaptation codes), with
the option forced at the client's decision point (the first session the simulated therapist finds
them off track). All other random numbers are the same counter-based draws as in the factual run,
so the history up to the decision point is identical and differences after it are due to the
option alone. A recommender's policy value on this cohort is then exact:
``value(policy) = mean over clients of outcome[client, policy(client)]``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.simulate.generative import SimulatedCohort, observe, run_courses
from training.simulate.params import OPTIONS


def outcome_arrays(obs) -> dict[str, np.ndarray]:
    """`failed` / `dropped_out` exactly as `features.targets.targets` defines them, from arrays."""
    att = obs.att == 1
    n_scores = att.sum(axis=1)
    idx_last = np.where(att.any(axis=1), att.shape[1] - 1 - np.argmax(att[:, ::-1], axis=1), 0)
    first = obs.phq[:, 0].astype(float)
    last = obs.phq[np.arange(len(att)), idx_last].astype(float)
    ongoing = obs.status == "ongoing"
    eligible = (first >= 10) & (n_scores >= 2) & ~ongoing
    failed = np.where(eligible, np.where(first - last >= 6, 0.0, 1.0), np.nan)
    dropped = np.where(ongoing, np.nan, (obs.status == "dropout").astype(float))
    return {"failed": failed, "dropped_out": dropped, "last_phq": last,
            "n_sessions": n_scores.astype(float)}


def counterfactual_outcomes(cohort: SimulatedCohort, options: tuple[str, ...] = OPTIONS
                            ) -> pd.DataFrame:
    """Long table: client_id, option, decision_session, eligible, failed, dropped_out,
    last_phq, n_sessions. `eligible` = the client reached a decision point (was off track)."""
    if cohort.layout is None or cohort.courses is None:
        raise ValueError("counterfactuals need the cohort's layout (simulate_cohort keeps it)")
    pk = cohort.params.pack()
    lay = cohort.layout
    decision = np.where(cohort.courses.option >= 0, cohort.courses.option_slot, -1)
    frames = []
    for name in options:
        o = OPTIONS.index(name)
        forced = np.full(len(lay.keys), o, dtype=np.int64)
        obs = observe(run_courses(pk, lay, forced), lay)
        out = outcome_arrays(obs)
        frames.append(pd.DataFrame({
            "client_id": pd.array(lay.client_id, dtype="string"),
            "option": name,
            "decision_session": decision,
            "eligible": decision >= 1,
            **out,
        }))
    return pd.concat(frames, ignore_index=True)
