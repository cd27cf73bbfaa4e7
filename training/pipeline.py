"""Training and model comparison: cross-validation grouped by client, leave-clinics-out, the
final fit into ONE bundle.

Every fitted step (expected curve, deviation, calibration, threshold, neighbour reference) is
refitted inside each fold; folds never split a client; the gate hold-out (see
`training.dataset.holdout_mask`) is never used for fitting or cross-validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold

from features.contract import Cohort
from features.instruments import get
from features.pointintime import DEFAULT_AT
from features.targets import NHS_INSTRUMENTS, check_target
from models.base import MIN_TRAINING_CASES, CalibrationError, InsufficientDataError
from models.baseline import LogisticRisk
from models.bundle import Bundle, InstrumentModels, Population
from models.conformal import ConformalBand
from models.expected import ExpectedResponse, trajectory_points
from models.expected_risk import ExpectedResponseRisk
from models.flag import BY_SESSION, DEFAULT_BUDGET, FlagPolicy, Outcomes, fit_policy
from models.neighbours import NeighbourNavigator
from models.risk import GBMRisk
from training.dataset import TrainingRows, build_rows, holdout_mask, outcome_instruments
from training.evaluate import LABELS  # noqa: F401  (the models' display names)

MODELS = ("expected_response", "neighbours", "gbm", "logistic")
#: The simulator's oracle is the probability of `failed` on PHQ-9 (features/targets.py).
ORACLE_INSTRUMENT = "PHQ-9"
#: The absolute minimum to train anything: clients with a known outcome, and events per class.
MIN_CLIENTS, MIN_EVENTS = 50, 10


class TooLittleDataError(ValueError):
    pass


@dataclass
class Settings:
    seed: int = 0
    n_folds: int = 5
    n_neighbors: int = 50
    gbm: dict = field(default_factory=dict)  # GBMRisk overrides (n_estimators, num_leaves, ...)
    target: str = "failed"  # features.targets.TARGETS
    flag_budget: float = DEFAULT_BUDGET  # share of eventual improvers flagged by session 3


def _factory(name: str, instrument: str, target: str, settings: Settings):
    if name == "expected_response":
        return ExpectedResponseRisk(instrument=instrument)
    if name == "neighbours":
        return NeighbourNavigator(instrument=instrument, n_neighbors=settings.n_neighbors)
    if name == "gbm":
        return GBMRisk(target=target, instrument=instrument, random_state=settings.seed,
                       **settings.gbm)
    if name == "logistic":
        return LogisticRisk(instrument=instrument)
    raise ValueError(name)


def _fit(model, rows: TrainingRows, y: np.ndarray, trajectories: pd.DataFrame | None):
    if isinstance(model, NeighbourNavigator):
        # k never exceeds a third of the archived clients (small cohorts)
        k = max(5, min(model.n_neighbors, pd.unique(rows.groups).size // 3))
        model.set_params(n_neighbors=k)
        return model.fit(rows.X, y, groups=rows.groups, trajectories=trajectories)
    return model.fit(rows.X, y, groups=rows.groups)


def _threshold(model, rows: TrainingRows, y: np.ndarray) -> float:
    """The stored threshold; the navigator's is chosen on its training rows (self excluded)."""
    if hasattr(model, "threshold_"):
        return float(model.threshold_)
    from models.base import choose_threshold
    from models.neighbours import reference_positions

    keep = np.isfinite(y)
    p = model.predict_proba(rows.X, exclude=reference_positions(rows.groups))[:, 1]
    model.threshold_ = choose_threshold(y[keep].astype(int), p[keep])
    return float(model.threshold_)


def available_models(rows: TrainingRows, target: str) -> tuple[list[str], list[str]]:
    """Models that can be trained on these rows, and notes on those that cannot."""
    y = rows.failed if target == "failed" else rows.dropped_out
    keep = np.isfinite(y)
    per_client = pd.Series(y[keep]).groupby(rows.groups[keep]).first()
    n_clients, events = len(per_client), int(per_client.sum())
    if n_clients < MIN_CLIENTS or min(events, n_clients - events) < MIN_EVENTS:
        raise TooLittleDataError(
            f"{rows.instrument}, target {target}: {n_clients} clients with a known outcome "
            f"({events} with the outcome); at least {MIN_CLIENTS} clients and {MIN_EVENTS} in "
            "each outcome class are needed to train anything. LightGBM needs about "
            f"{MIN_TRAINING_CASES} clients (Giesemann et al. 2023).")
    names, notes = list(MODELS), []
    # inner folds leave about (n_folds - 1) / n_folds of the clients to each fit
    if n_clients * 0.8 < MIN_TRAINING_CASES:
        names.remove("gbm")
        notes.append(f"gradient boosting skipped: {n_clients} clients with a known outcome, "
                     f"fewer than about {MIN_TRAINING_CASES / 0.8:.0f} needed so that each "
                     f"cross-validation fit sees {MIN_TRAINING_CASES} (Giesemann et al. 2023)")
    return names, notes


def cross_validate(rows: TrainingRows, target: str, names: list[str], settings: Settings,
                   trajectories: pd.DataFrame | None, by: str = "client",
                   progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Out-of-fold probabilities and flags (threshold chosen on the training folds).

    ``by="client"``: GroupKFold on clients; ``by="clinic"``: leave-clinics-out.
    Returns a frame aligned with ``rows`` with columns ``p_<model>``, ``flag_<model>`` and
    ``fold``. Rows without a known target are NaN.
    """
    y = rows.failed if target == "failed" else rows.dropped_out
    known = np.isfinite(y)
    groups = rows.groups if by == "client" else rows.context["clinic_id"].astype(str).to_numpy()
    n_groups = pd.unique(groups[known]).size
    k = min(settings.n_folds, n_groups)
    if k < 2:
        raise TooLittleDataError(f"cannot cross-validate by {by}: {n_groups} group(s)")
    out = pd.DataFrame(index=rows.X.index)
    for name in names:
        out[f"p_{name}"] = np.nan
        out[f"flag_{name}"] = np.nan
    out["fold"] = -1
    idx = np.flatnonzero(known)
    # shuffle group order deterministically so folds do not follow id order
    rng = np.random.default_rng(settings.seed)
    uniq = pd.unique(groups[idx])
    perm = dict(zip(uniq, rng.permutation(len(uniq)), strict=True))
    shuffled = np.array([perm[g] for g in groups[idx]])
    for fold, (tr, te) in enumerate(GroupKFold(n_splits=k).split(idx, groups=shuffled)):
        train, test = rows.subset(np.isin(np.arange(len(rows)), idx[tr])), idx[te]
        test_rows = rows.subset(np.isin(np.arange(len(rows)), test))
        ytr = train.failed if target == "failed" else train.dropped_out
        for name in names:
            if progress:
                progress(f"{by} fold {fold + 1}/{k}: {name}")
            model = _fit(_factory(name, rows.instrument, target, settings), train, ytr,
                         trajectories)
            thr = _threshold(model, train, ytr)
            p = model.predict_proba(test_rows.X)[:, 1]
            out.loc[test, f"p_{name}"] = p
            out.loc[test, f"flag_{name}"] = (p >= thr).astype(float)
        out.loc[test, "fold"] = fold
    return out


def oracle_column(rows: TrainingRows, truth: pd.DataFrame | None) -> np.ndarray | None:
    """The simulator's Bayes-optimal probability for each (client, t) row, where computed."""
    if truth is None or rows.instrument != ORACLE_INSTRUMENT:
        return None
    t = rows.keys["session"].to_numpy()
    out = np.full(len(rows), np.nan)
    tr = truth.set_index("client_id")
    ids = rows.keys["client_id"]
    for s in np.unique(t):
        col = f"oracle_failure_s{s}"
        if col in tr.columns:
            m = t == s
            out[m] = tr[col].reindex(ids[m]).to_numpy(dtype=float)
    return out if np.isfinite(out).any() else None


def read_truth(path: Path | None) -> pd.DataFrame | None:
    if path is None:
        return None
    p = Path(path) / "truth.csv" if Path(path).is_dir() else None
    if p is None or not p.exists():
        return None
    return pd.read_csv(p, dtype={"client_id": "string"})


def population(rows: TrainingRows) -> Population:
    cov = {}
    for c in rows.context.columns:
        levels = rows.context[c].dropna().unique()
        if c in {"clinic_id", "therapist_id"} or len(levels) > 30:  # ids, dates: not covariates
            continue
        cov[c] = sorted(map(str, levels))
    intake = rows.X["intake_score"].to_numpy(float)
    t = rows.keys["session"].to_numpy()
    return Population(
        n_clients=int(pd.unique(rows.groups).size), n_rows=len(rows),
        sessions=(int(t.min()), int(t.max())),
        intake_range=(float(np.nanmin(intake)), float(np.nanmax(intake))),
        covariate_levels=cov,
        clinics=int(rows.context["clinic_id"].nunique()) if "clinic_id" in rows.context else 0,
        failure_rate=float(np.nanmean(rows.failed)),
        dropout_rate=float(np.nanmean(rows.dropped_out)) if np.isfinite(
            rows.dropped_out).any() else float("nan"))


def fit_instrument(cohort: Cohort, rows: TrainingRows, settings: Settings,
                   trajectories: pd.DataFrame | None) -> InstrumentModels:
    """The final models for one instrument, fitted on all training rows."""
    inst = rows.instrument
    names, _ = available_models(rows, "failed")
    failure_name = "gbm" if "gbm" in names else "logistic"
    failure = _fit(_factory(failure_name, inst, "failed", settings), rows, rows.failed, None)
    dropout = None
    if np.isfinite(rows.dropped_out).any():
        try:
            dnames, _ = available_models(rows, "dropped_out")
            dname = "gbm" if "gbm" in dnames else "logistic"
            dropout = _fit(_factory(dname, inst, "dropped_out", settings), rows,
                           rows.dropped_out, None)
        except (TooLittleDataError, InsufficientDataError, CalibrationError):
            dropout = None
    # the expected course is fitted on the training clients' whole observed courses
    # (sessions 1..20), not only the rows as of sessions 1..6
    if trajectories is not None:
        own = trajectories[trajectories.index.isin(set(rows.keys["client_id"]))]
        points = trajectory_points(own)
    else:
        points = rows.X.rename(columns={"latest_score": "score"})[
            ["intake_score", "session", "score"]]
    expected = ExpectedResponse(instrument=inst).fit(points)
    navigator = _fit(NeighbourNavigator(instrument=inst, n_neighbors=settings.n_neighbors),
                     rows, rows.failed, trajectories)
    _threshold(navigator, rows, rows.failed)
    models = InstrumentModels(instrument=inst, expected=expected, failure=failure,
                              dropout=dropout, navigator=navigator, population=population(rows),
                              recommender=fit_bundle_recommender(cohort, rows, settings),
                              target=rows.target)
    models.flag_policy = fit_flag_policy(cohort, rows, models, settings)
    models.band = fit_band(cohort, rows, models)
    return models


def fit_band(cohort: Cohort, rows: TrainingRows, models: InstrumentModels) -> ConformalBand:
    """The conformal margins of the expected course's band (`models.conformal`), calibrated
    on every training client's observed scores at sessions 2.. against the course served for
    them as known at intake, each client kept out of the neighbour reference (a training
    client is never its own neighbour; `models.assess.served_course`, the service's own
    course code). The expected-response curve, used where the neighbours have no course, is
    fitted on these clients too: one client's weight in it is small, and the coverage is
    checked on new clients (`training.conformal_eval`)."""
    from models.assess import served_course

    ids = pd.Index(sorted(pd.unique(rows.groups)))
    s = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    served = served_course(models, s, rows.instrument, exclude=ids)
    return ConformalBand().fit(served["session"], served["score"], served["lower"],
                               served["upper"])


def oof_risk(failure, n_rows: int) -> np.ndarray:
    """The not-on-track risk model's out-of-fold risks (its calibration folds, grouped by client) per
    training row; NaN on rows without a known outcome."""
    p = np.full(n_rows, np.nan)
    p[failure.oof_rows_] = failure.oof_proba_
    return p


def fit_flag_policy(cohort: Cohort, rows: TrainingRows, models: InstrumentModels,
                    settings: Settings) -> FlagPolicy:
    """The flag policy for the training clients: their history as of sessions 1..6 with the
    signal of the fitted expected course (a client is never its own neighbour) and the
    not-on-track risk model's OUT-OF-FOLD risks, then the entry threshold for the budget
    (`models.flag.fit_policy`)."""
    from models.assess import policy_history
    from training.metrics import METRICS

    ids = pd.Index(sorted(pd.unique(rows.groups)))
    s = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    history, keys = policy_history(models, s, rows.instrument, at=DEFAULT_AT, exclude=ids)
    if not keys[["client_id", "session"]].reset_index(drop=True).equals(
            rows.keys[["client_id", "session"]].reset_index(drop=True)):
        raise RuntimeError("flag-policy history rows differ from the training rows")
    p = oof_risk(models.failure, len(rows))
    t = rows.keys["session"].to_numpy()
    at3 = (t == BY_SESSION) & np.isfinite(p) & np.isfinite(rows.failed)
    auroc = (float(METRICS["auroc"](rows.failed[at3], p[at3]))
             if at3.any() and len(np.unique(rows.failed[at3])) == 2 else None)
    return fit_policy(history.with_p(p), Outcomes(rows.failed, rows.deteriorated),
                      budget=settings.flag_budget, target=rows.target, auroc=auroc)


#: Fewest decision rows (off-track clients with a known outcome) to fit the recommender.
MIN_DECISION_ROWS = 1000


def fit_bundle_recommender(cohort: Cohort, rows: TrainingRows, settings: Settings):
    """The learned adaptation suggestions (models/recommender/), fitted on the training
    clients' decision rows with fitted propensities; None when the cohort has no adaptation rows
    or too few cases (the service then shows the rule-based suggestions only)."""
    if cohort.adaptations is None or not len(cohort.adaptations):
        return None
    from training.recommendation.decisions import build_decision_data, fit_recommender

    own = set(rows.keys["client_id"])
    s = cohort.sessions[cohort.sessions["client_id"].isin(own)]
    ad = cohort.adaptations[cohort.adaptations["client_id"].isin(own)]
    try:
        data = build_decision_data(s, cohort.clients, ad, rows.instrument, seed=settings.seed)
        if np.isfinite(data.outcome).sum() < MIN_DECISION_ROWS:
            return None
        # the best learned recommender in `ontrack recommend-eval` (docs/recommender.md)
        return fit_recommender("r_learner", data, settings.seed)
    except ValueError:  # too few clients received some option, or no decision rows
        return None


def split_for_gate(rows: TrainingRows) -> tuple[TrainingRows, TrainingRows]:
    hold = holdout_mask(rows.keys["client_id"])
    return rows.subset(~hold), rows.subset(hold)


def instrument_rows(cohort: Cohort, instruments: list[str] | None = None,
                    target: str = "failed") -> dict[str, TrainingRows]:
    chosen = instruments or outcome_instruments(cohort)
    if target != "failed":  # the NHS paired target exists for PHQ-9 and GAD-7 only
        chosen = [c for c in chosen if c in NHS_INSTRUMENTS]
    for c in chosen:
        get(c)
        check_target(target, c)
    return {c: build_rows(cohort, c, target=target) for c in chosen}


def make_bundle(models: dict[str, InstrumentModels], card: dict, provenance: dict) -> Bundle:
    return Bundle(models=models, card=card, provenance=provenance)
