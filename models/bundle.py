"""The fitted bundle: ONE object from training to serving.

It holds, per outcome instrument, the expected-response model, the nearest-neighbour navigator,
the failure and dropout risk models (with the booster the explanations come from), the
not-on-track flag policy (`models.flag`, its thresholds and what they achieved), the conformal
margins of the expected course's band (`models.conformal`) and the training population; plus
the feature version and names and the model-card fields. Training builds it and logs it to
MLflow as a custom pyfunc; the service loads it from the registry and calls `assess`; nothing
is rebuilt at serving time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from features.pointintime import FEATURE_NAMES, FEATURE_VERSION, check_features
from models.conformal import ConformalBand
from models.flag import FlagPolicy


# ------------------------------------------------------------------------------------------
# What the assessment calls on each model (tests/test_models.py checks a fitted bundle)
# ------------------------------------------------------------------------------------------
@runtime_checkable
class RiskModel(Protocol):
    """A failure or dropout model (`models.risk.GBMRisk`, `models.baseline.LogisticRisk`)."""

    feature_names_: Sequence[str]

    def transform_features(self, X: pd.DataFrame) -> np.ndarray: ...
    def contributions_from_matrix(self, M: np.ndarray) -> np.ndarray: ...
    def logit_from_matrix(self, M: np.ndarray) -> np.ndarray: ...
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...


@runtime_checkable
class ExpectedCourse(Protocol):
    """The expected-response curve (`models.expected.ExpectedResponse`)."""

    def expected(self, intake, session) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]: ...


@runtime_checkable
class Navigator(Protocol):
    """Similar clients' course (`models.neighbours.NeighbourNavigator`)."""

    max_session: int

    def expected_course(self, X: pd.DataFrame, exclude=None) -> dict[str, np.ndarray]: ...


@runtime_checkable
class Recommender(Protocol):
    """Learned adaptation suggestions (`models.recommender.RLearnerUplift` and peers)."""

    def recommend(self, X: pd.DataFrame, top: int | None = 3, **kwargs) -> list: ...


@dataclass
class Population:
    """What the training data covered, to say when a client lies outside it."""

    n_clients: int
    n_rows: int
    sessions: tuple[int, int]
    intake_range: tuple[float, float]
    covariate_levels: dict[str, list[str]] = field(default_factory=dict)
    clinics: int = 0
    failure_rate: float = float("nan")
    dropout_rate: float = float("nan")


@dataclass
class InstrumentModels:
    instrument: str
    expected: ExpectedCourse
    failure: RiskModel
    dropout: RiskModel | None
    navigator: Navigator | None
    population: Population
    validation: dict[str, Any] = field(default_factory=dict)
    recommender: Recommender | None = None  # None: rules only
    flag_policy: FlagPolicy | None = None  # None: deterioration rule only
    target: str = "failed"  # features.targets.TARGETS: what the not-on-track risk model predicts
    # conformal margins around the course's band; None: no conformal band (bundles fitted
    # before it existed unpickle without the attribute: read it with getattr(m, "band", None))
    band: ConformalBand | None = None


@dataclass
class Bundle:
    models: dict[str, InstrumentModels]
    card: dict[str, Any]
    feature_version: str = FEATURE_VERSION
    feature_names: tuple[str, ...] = FEATURE_NAMES
    provenance: dict[str, str] = field(default_factory=dict)
    version: str = "unregistered"  # set by the registry on load

    @property
    def instruments(self) -> list[str]:
        return list(self.models)

    def check_compatible(self) -> None:
        """Refuse a bundle built with other feature code (readable diff)."""
        check_features(self.feature_version, self.feature_names, FEATURE_VERSION, FEATURE_NAMES)

    def assess(self, sessions: pd.DataFrame, covariates: pd.DataFrame | None = None,
               horizon: int = 4, budget: float | None = None,
               alliance_after: bool = False) -> list:
        from models.assess import assess

        return assess(self, sessions, covariates=covariates, horizon=horizon, budget=budget,
                      alliance_after=alliance_after)
