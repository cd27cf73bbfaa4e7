"""`NeighbourAdvantage`: personalised advantage from similar clients, after the Trier navigator.

The k most similar archived clients as of the decision session (standardised matching features,
Euclidean); per adaptation, the inverse-propensity-weighted (Hajek) rate of reliable improvement
among those who received it and among those who did not; the gain is the difference, shrunk
towards the whole archive's difference by ``prior_strength`` pseudo-clients. The drivers are the
traits the similar clients share with the client, in clinical words.

Imports: numpy, pandas, scikit-learn, `models.recommender.evidence` and
`models.recommender.similar`.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval

from features.thresholds import MIN_SIMILAR
from models.recommender.evidence import Recommendation
from models.recommender.similar import SIMILAR_CONSTRAINTS, _SimilarClients


class NeighbourAdvantage(_SimilarClients, BaseEstimator):
    """Personalised advantage from the k most similar archived clients (see module docstring).

    Parameters
    ----------
    instrument : the outcome instrument (for the wording of the drivers).
    n_neighbors : k similar archived clients as of the decision session.
    match_features : decision-row columns forming the matching vector.
    prior_strength : pseudo-clients (per arm) at the whole archive's difference; shrinks the
        gain where few similar clients received an adaptation.
    min_similar : fewest similar clients with (and without) an adaptation to suggest it
        (>= MIN_SIMILAR).
    """

    method_label = "nearest-neighbour personalised advantage"

    # checked at the start of `fit`, before any work (scikit-learn's parameter validation)
    _parameter_constraints: dict = {
        **SIMILAR_CONSTRAINTS,
        "prior_strength": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, instrument: str = "PHQ-9", n_neighbors: int = 400,
                 match_features: Sequence[str] | None = None, prior_strength: float = 20.0,
                 min_similar: int = MIN_SIMILAR):
        self.instrument = instrument
        self.n_neighbors = n_neighbors
        self.match_features = match_features
        self.prior_strength = prior_strength
        self.min_similar = min_similar

    def fit(self, X: pd.DataFrame, treatment, outcome, propensity, improvement=None
            ) -> NeighbourAdvantage:
        """X: decision rows; treatment: option received (OPTIONS); outcome: 1 reliably improved
        by the end, 0 not, NaN unknown (dropped); propensity: (n, len(OPTIONS))."""
        self._fit_similar(X, treatment, outcome, propensity)
        return self

    def _gains(self, X: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
        ev = self.evidence(X, idx)
        n = self.prior_strength
        e = 1.0 / (1.0 / np.maximum(ev["neff_with"], 1e-9) + 1.0 / np.maximum(
            ev["neff_without"], 1e-9))
        d = np.where(np.isfinite(ev["diff"]), ev["diff"], 0.0)
        e = np.where(np.isfinite(ev["diff"]), e, 0.0)
        return (e * d + n * self.global_gain_[None, :]) / (e + n)

    def gains(self, X: pd.DataFrame) -> np.ndarray:
        """Estimated gain in the chance of reliable improvement, (n, len(ADAPTATIONS))."""
        return self._gains(X, self.neighbours(X))

    def recommend(self, X: pd.DataFrame, top: int | None = 3) -> list[Recommendation]:
        idx = self.neighbours(X)
        return self._rank(X, self._gains(X, idx), None, idx, self.method_label, top)
