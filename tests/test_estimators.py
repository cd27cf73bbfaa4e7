"""The estimators' contract with scikit-learn: parameters declared and checked at `fit` before
any work, the API checks that apply to OnTrack's estimators, and a calibration that fails
refuses the model.

scikit-learn's `parametrize_with_checks` assumes any numeric matrix is valid input; OnTrack's
estimators accept only point-in-time feature rows (`features.pointintime.FEATURE_NAMES`, with
the client of every row for grouped folds) and refuse anything else. So the checks run here
are the ones about construction and parameters, which do not depend on the input:
`check_no_attributes_set_in_init`, `check_parameters_default_constructible`,
`check_get_params_invariance`, `check_set_params`, `check_estimator_repr` and
`check_param_validation` (invalid parameters must raise `InvalidParameterError` from `fit`,
whatever the data). Excluded: every check that fits on a random numeric matrix (the feature
contract refuses it by design) and the classifier checks on `predict` shapes (covered by
tests/test_models.py on real feature rows).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import (
    check_estimator_repr,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_param_validation,
    check_parameters_default_constructible,
    check_set_params,
)

from models.base import CalibrationError, platt
from models.baseline import LogisticRisk
from models.expected import ExpectedDeviation, ExpectedResponse
from models.expected_risk import ExpectedResponseRisk
from models.neighbours import NeighbourNavigator
from models.recommender import NeighbourAdvantage, PropensityModel, RLearnerUplift, UpliftGBM
from models.risk import GBMRisk

ESTIMATORS = [GBMRisk, LogisticRisk, ExpectedResponseRisk, NeighbourNavigator,
              ExpectedResponse, ExpectedDeviation, PropensityModel, NeighbourAdvantage,
              UpliftGBM, RLearnerUplift]
CHECKS = [check_no_attributes_set_in_init, check_parameters_default_constructible,
          check_get_params_invariance, check_set_params, check_estimator_repr,
          check_param_validation]


#: The recommenders' `fit` takes the option received, the outcome and the propensities as well
#: as X: scikit-learn's `check_param_validation` calls ``fit(X, y)`` and cannot reach them
#: (their parameters are checked below with the full signature instead).
FOUR_ARGUMENT_FIT = {NeighbourAdvantage, UpliftGBM, RLearnerUplift}


@pytest.mark.parametrize("estimator, check", [
    (e, c) for e in ESTIMATORS for c in CHECKS
    if not (c is check_param_validation and e in FOUR_ARGUMENT_FIT)],
    ids=lambda v: v.__name__)
def test_scikit_learn_checks_that_apply(estimator, check):
    check(estimator.__name__, estimator())


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.__name__)
def test_every_parameter_is_declared(estimator):
    assert set(estimator().get_params()) == set(estimator._parameter_constraints)


@pytest.mark.parametrize("estimator, bad", [
    (GBMRisk, {"threshold_rule": "bogus"}), (GBMRisk, {"n_splits": 1}),
    (LogisticRisk, {"C": 0.0}), (ExpectedResponseRisk, {"min_sensitivity": 1.5}),
    (NeighbourNavigator, {"n_neighbors": 0}), (ExpectedResponse, {"coverage": 1.0}),
    (ExpectedDeviation, {"min_cell": 0}), (PropensityModel, {"floor": 1.0}),
    (NeighbourAdvantage, {"min_similar": 9}), (UpliftGBM, {"learning_rate": 0.0}),
    (RLearnerUplift, {"alpha": -1.0}),
], ids=lambda v: v.__name__ if isinstance(v, type) else next(iter(v)))
def test_a_bad_parameter_fails_at_fit_before_any_work(estimator, bad):
    """No data at all: the parameters are checked before the rows are even looked at (before,
    ``GBMRisk(threshold_rule="bogus")`` failed only after five cross-validation fits)."""
    args = (None,) * (4 if estimator in FOUR_ARGUMENT_FIT else 2)
    with pytest.raises(InvalidParameterError, match=next(iter(bad))):
        estimator(**bad).fit(*args)


def test_platt_refuses_logits_that_do_not_rank_the_outcome():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    ranking = y * 1.5 + rng.normal(0, 1, 400)
    a, b = platt(ranking, y, "model")
    assert a > 0
    with pytest.raises(CalibrationError, match=r"Platt slope -\d"):
        platt(-ranking, y, "GBMRisk (failed, PHQ-9)")


def test_a_risk_model_with_a_failed_calibration_is_refused_not_shipped(tmp_path):
    """Outcomes drawn at random per client (seed 0), independent of every feature: the
    out-of-fold logits then rank the outcome the WRONG way (a fold with more outcomes is
    predicted from training folds with fewer: leave-out bias; 7 of seeds 0-7 do so), and the
    fit refuses instead of clipping the slope and returning a model that would serve it."""
    import pandas as pd

    from features.contract import load_cohort
    from training.dataset import build_rows
    from training.simulate import simulate_cohort

    simulate_cohort(600, seed=11, oracle_clients=0).write(tmp_path, "csv")
    rows = build_rows(load_cohort(tmp_path), "PHQ-9")
    clients = pd.unique(rows.groups)
    outcome = dict(zip(clients, np.random.default_rng(0).integers(0, 2, len(clients)),
                       strict=True))
    y = np.array([outcome[g] for g in rows.groups], dtype=float)
    model = GBMRisk(features=["latest_severity"], n_estimators=20, min_training_cases=100)
    with pytest.raises(CalibrationError, match=r"refused: .*Platt slope -"):
        model.fit(rows.X, y, groups=rows.groups)
    assert not hasattr(model, "booster_")
