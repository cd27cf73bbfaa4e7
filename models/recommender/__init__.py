"""Learned adaptation suggestions for a client who is not on track.

Three estimators, all scikit-learn style (``__init__`` stores arguments, ``fit`` learns, fitted
attributes end in ``_``), all fitted on the *decision rows* of archived clients (one row per
client who went off track: features as of the decision session, the option received, its
propensity, the outcome; `training.recommendation.decisions.build_decision_data`):

* `NeighbourAdvantage`: personalised advantage from the k most similar archived clients (the
  propensity-weighted difference in their rates of reliable improvement, shrunk towards the
  whole archive's difference);
* `UpliftGBM`: gradient-boosted uplift (a propensity-weighted T-learner on the residuals of a
  LightGBM baseline of the improvement), drivers from the boosters' SHAP contributions;
* `RLearnerUplift`: the R-learner with penalised linear effects (Nie & Wager 2021), drivers from
  its exact SHAP values, and the only one whose suggestions carry an honest claim: the gain over
  a comparator with a simultaneous 95 % interval, shown as learned only where its lower bound is
  above zero.

All three correct for who received what with the propensities: known in simulation, estimated on
real data (`PropensityModel`, multinomial logistic on the same features). Every suggestion
carries the observational comparison among the similar archived clients behind it; an
adaptation with too few similar cases is never suggested, and the service then shows the
rule-based suggestions (`models.suggestions`) with the reason.

Suggestions are prompts for a conversation, never orders; the comparison is observational.
Privacy: the fitted objects hold the archived clients' decision rows (features, option, outcome),
no ids.

Modules:

* `evidence`: the options, the interval levels, the Wilson
  interval, the result records `LearnedSuggestion` and `Recommendation`;
* `wording`: labels, prompts and the clinical-language helpers;
* `propensity`: `PropensityModel`;
* `similar`: the similar clients and the observational comparison (Hajek rates, Kish effective
  sample sizes), shared by the estimators;
* `neighbour`: `NeighbourAdvantage`;
* `uplift`: `UpliftGBM` and what the model-based estimators share;
* `rlearner`: `RLearnerUplift` and its claims.

Imports: `features` and other `models` modules only, never `training` or `serving`. This module
re-exports every name code imports from ``models.recommender`` and every class, so that objects
pickled when the package was a single module (``models.recommender.RLearnerUplift``) still load.
"""

from __future__ import annotations

from features.instruments import ADAPTATIONS
from features.thresholds import MIN_SIMILAR
from models.recommender.evidence import (
    CLAIM_WORDS,
    CLAIM_Z,
    OPTIONS,
    Z95,
    LearnedSuggestion,
    Recommendation,
    top_from_gains,
    wilson,
)
from models.recommender.neighbour import NeighbourAdvantage
from models.recommender.propensity import PROPENSITY_FEATURES, PropensityModel
from models.recommender.rlearner import MIN_DRIVER, RLearnerUplift
from models.recommender.similar import DEFAULT_MATCH_FEATURES
from models.recommender.similar import _Query as _Query
from models.recommender.similar import _SimilarClients as _SimilarClients
from models.recommender.uplift import UpliftGBM
from models.recommender.uplift import _ModelDrivers as _ModelDrivers
from models.recommender.wording import LABELS, PROMPTS, SOURCE

__all__ = [
    "ADAPTATIONS",
    "CLAIM_WORDS",
    "CLAIM_Z",
    "DEFAULT_MATCH_FEATURES",
    "LABELS",
    "MIN_DRIVER",
    "MIN_SIMILAR",
    "OPTIONS",
    "PROMPTS",
    "PROPENSITY_FEATURES",
    "SOURCE",
    "Z95",
    "LearnedSuggestion",
    "NeighbourAdvantage",
    "PropensityModel",
    "RLearnerUplift",
    "Recommendation",
    "UpliftGBM",
    "top_from_gains",
    "wilson",
]
