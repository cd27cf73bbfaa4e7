"""Evaluation metrics against scikit-learn and known answers."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from training.metrics import METRICS, bootstrap, calibration_slope_intercept, net_benefit


@pytest.mark.parametrize("seed", range(5))
def test_fast_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    p = np.round(rng.uniform(size=500), 2)  # ties on purpose
    y = (rng.uniform(size=500) < p).astype(float)
    assert METRICS["auroc"](y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert METRICS["auprc"](y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert METRICS["brier"](y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_calibration_of_a_calibrated_model_is_ideal():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 200_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    slope, intercept = calibration_slope_intercept(y, p)
    assert slope == pytest.approx(1.0, abs=0.03) and intercept == pytest.approx(0.0, abs=0.02)
    # overconfident predictions (logit doubled) have slope about 0.5
    lp = np.log(p / (1 - p)) * 2
    slope2, _ = calibration_slope_intercept(y, 1 / (1 + np.exp(-lp)))
    assert slope2 == pytest.approx(0.5, abs=0.03)


def test_cluster_bootstrap_is_wider_than_row_bootstrap_for_repeated_rows():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=300)
    y = (rng.uniform(size=300) < p).astype(float)
    rows = bootstrap(np.repeat(y, 6), np.repeat(p, 6), metrics=("auroc",), n_boot=200)
    clus = bootstrap(np.repeat(y, 6), np.repeat(p, 6), metrics=("auroc",),
                     groups=np.repeat(np.arange(300), 6), n_boot=200)
    assert (clus["auroc"].hi - clus["auroc"].lo) > 1.8 * (rows["auroc"].hi - rows["auroc"].lo)


def test_net_benefit_of_flagging_everyone():
    y = np.array([1, 0, 0, 0])
    nb = net_benefit(y, np.ones(4), thresholds=(0.2,))
    # prevalence 0.25 - 0.75 * 0.2/0.8 = 0.0625
    assert nb["net_benefit"].iloc[0] == pytest.approx(0.0625)
    assert nb["flag_all"].iloc[0] == pytest.approx(0.0625)
