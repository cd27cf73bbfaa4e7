"""The recommender's decision dataset, and fitting a recommender on it by name.

Decision dataset (the same code for simulated and real cohorts): for each client who went off
track, the *decision session*, the features as of it (`features.pointintime.point_in_time` on
the sessions up to and including it: the ONE feature implementation, so nothing after the
decision enters a row), the option received (an `adaptations.csv` row, or ``"none"``), its
propensity and the outcome *reliably improved by the end* (intake to last score, at least the
instrument's reliable-change threshold: PHQ-9 a fall of 6 or more;
`features.targets.improved_by_end`).

* Decision session: the session of the client's first adaptation row; for a client without one,
  the first session >= 2 at which the client was off track by `OffTrackRule` (the score above
  an expected course that reaches one reliable change by session 8, plus a tolerance of a third
  of it, or an alliance rating below a floor). This is the simulated therapist's rule
  (docs/simulator.md), stated here as the assumption used on real data too.
* Propensities: the simulator's known ones (``truth.csv``) when given; otherwise a fitted
  multinomial logistic model on the same features (`models.recommender.PropensityModel`).

`fit_recommender` is the one fit of a learned recommender on decision rows: the bundle's
(`training.pipeline`) and each evaluation fold's (`training.recommendation.picks`).

Imports features and models only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.instruments import REGISTRY, Role, get
from features.pointintime import point_in_time
from features.targets import improved_by_end
from models.recommender import OPTIONS, PropensityModel


@dataclass(frozen=True)
class OffTrackRule:
    """When an archived client without an adaptation row counts as off track (the decision).

    Score worse than ``intake - rci * log(s) / log(rc_session)`` by more than
    ``tolerance_rc * rci`` (PHQ-9: 2 points), or an alliance rating below ``alliance_floor``
    on the same session (SRS 30), at sessions s >= 2.
    """

    rc_session: float = 8.0
    tolerance_rc: float = 1.0 / 3.0
    alliance_floor: dict = field(default_factory=lambda: {"SRS": 30.0})


@dataclass
class DecisionData:
    instrument: str
    X: pd.DataFrame  # features as of the decision session (FEATURE_NAMES)
    keys: pd.DataFrame  # client_id, session (= the decision session)
    treatment: np.ndarray  # option names (OPTIONS)
    propensity: np.ndarray  # (n, len(OPTIONS)), rows sum to 1
    outcome: np.ndarray  # 1 reliably improved by the end, 0 not, NaN unknown (ongoing)
    improvement: np.ndarray  # intake to last score in reliable-change units, NaN unknown
    propensity_source: str = "known"

    def __len__(self) -> int:
        return len(self.X)

    @property
    def client_id(self) -> np.ndarray:
        return self.keys["client_id"].to_numpy(dtype=object)

    def subset(self, mask: np.ndarray) -> DecisionData:
        m = np.asarray(mask)
        return DecisionData(self.instrument, self.X[m].reset_index(drop=True),
                            self.keys[m].reset_index(drop=True), self.treatment[m],
                            self.propensity[m], self.outcome[m], self.improvement[m],
                            self.propensity_source)


def decision_sessions(sessions: pd.DataFrame, adaptations: pd.DataFrame | None,
                      instrument: str = "PHQ-9", rule: OffTrackRule | None = None
                      ) -> pd.DataFrame:
    """client_id -> decision session and option received ("none" when no adaptation row)."""
    rule = rule or OffTrackRule()
    inst = get(instrument)
    s = sessions.loc[sessions["instrument"] == instrument, ["client_id", "session", "score"]]
    s = s.sort_values(["client_id", "session"], kind="stable")
    intake = s.groupby("client_id", sort=False)["score"].transform("first").to_numpy(float)
    sess = s["session"].to_numpy(dtype=float)
    expected = intake - inst.sign * inst.rci * np.log(sess) / np.log(rule.rc_session)
    off = inst.sign * (s["score"].to_numpy(float) - expected) > rule.tolerance_rc * inst.rci
    al = [c for c in rule.alliance_floor if c in REGISTRY and REGISTRY[c].role is Role.ALLIANCE]
    if al:
        a = sessions.loc[sessions["instrument"].isin(al), ["client_id", "session", "instrument",
                                                           "score"]].copy()
        a["low"] = a["score"].to_numpy(float) < a["instrument"].map(rule.alliance_floor).to_numpy(
            float)
        low = a.groupby(["client_id", "session"])["low"].any()
        idx = pd.MultiIndex.from_arrays([s["client_id"], s["session"]])
        off |= low.reindex(idx).fillna(False).to_numpy(dtype=bool)
    off &= sess >= 2
    first_off = s.loc[off].groupby("client_id", sort=False)["session"].min()
    out = pd.DataFrame({"session": first_off, "adaptation": "none"})
    if adaptations is not None and len(adaptations):
        ad = adaptations.sort_values(["client_id", "session"], kind="stable").drop_duplicates(
            "client_id")
        ad = ad.set_index("client_id")[["session", "adaptation"]].astype(
            {"session": "int64", "adaptation": object})
        out = pd.concat([out.drop(index=ad.index, errors="ignore"), ad])
    out.index.name = "client_id"
    out["session"] = out["session"].astype("int64")
    return out.sort_index()


def _parse_propensities(truth: pd.DataFrame, ids) -> np.ndarray:
    tr = truth.set_index(truth["client_id"].astype(str))["propensities"].reindex(
        pd.Index(ids).astype(str))
    out = np.full((len(ids), len(OPTIONS)), np.nan)
    pos = {o: j for j, o in enumerate(OPTIONS)}
    for i, txt in enumerate(tr.to_numpy(dtype=object)):
        if isinstance(txt, str) and txt:
            for part in txt.split(";"):
                name, p = part.split(":")
                out[i, pos[name]] = float(p)
    return out


def build_decision_data(sessions: pd.DataFrame, clients: pd.DataFrame | None,
                        adaptations: pd.DataFrame | None, instrument: str = "PHQ-9",
                        truth: pd.DataFrame | None = None, rule: OffTrackRule | None = None,
                        seed: int = 0) -> DecisionData:
    """One row per client with a decision session (see the module docstring)."""
    dec = decision_sessions(sessions, adaptations, instrument, rule)
    ids = dec.index.to_numpy(dtype=object)
    upto = sessions["client_id"].map(dec["session"])
    s = sessions.loc[upto.notna().to_numpy() & (sessions["session"].to_numpy()
                                               <= upto.fillna(0).to_numpy())]
    ff = point_in_time(s, instrument=instrument, at=None)
    order = pd.Index(ff.keys["client_id"].astype(object)).get_indexer(pd.Index(ids))
    X = ff.X.iloc[order].reset_index(drop=True)
    keys = pd.DataFrame({"client_id": ids, "session": dec["session"].to_numpy()})
    treatment = dec["adaptation"].to_numpy(dtype=object)
    y, imp = improved_by_end(sessions, clients, ids, instrument)
    if truth is not None and "propensities" in truth.columns:
        prop, source = _parse_propensities(truth, ids), "known (simulation truth)"
    else:
        prop, source = np.full((len(ids), len(OPTIONS)), np.nan), "fitted"
    missing = ~np.isfinite(prop).all(axis=1)
    if missing.any():
        pm = PropensityModel(random_state=seed).fit(X, treatment)
        prop[missing] = pm.predict_proba(X[missing])
        if not missing.all():
            source += f"; fitted for {int(missing.sum())} clients"
    return DecisionData(instrument, X, keys, treatment, prop, y, imp, source)


def make_recommender(name: str, instrument: str = "PHQ-9", seed: int = 0):
    from models.recommender import NeighbourAdvantage, RLearnerUplift, UpliftGBM

    if name == "neighbours":
        return NeighbourAdvantage(instrument=instrument)
    if name == "uplift_gbm":
        return UpliftGBM(instrument=instrument, random_state=seed)
    if name == "r_learner":
        return RLearnerUplift(instrument=instrument, random_state=seed)
    raise ValueError(name)


def fit_recommender(name: str, data: DecisionData, seed: int = 0):
    model = make_recommender(name, data.instrument, seed)
    return model.fit(data.X, data.treatment, data.outcome, data.propensity,
                     improvement=data.improvement)
