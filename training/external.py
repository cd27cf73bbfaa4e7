"""External validation: a registered model scored on another cohort, without retraining.

`evaluate_cohort` measures, per instrument the model covers, on every client of the cohort:
the risk model's discrimination and calibration per session (client-bootstrap intervals), the
calibration plot and the decision curve as of session 3, an optional logistic recalibration
(intercept and slope fitted on the cohort, judged in cross-validation folds grouped by
client), the flag policies replayed session by session (docs/flag.md), subgroup figures
(`training.fairness`), the coverage of the expected-course bands (`training.conformal_eval`)
and whether the cohort is large enough for each figure to be precise (Riley et al. 2024,
`training.samplesize`). Instruments the model does not cover are named, with the reason.
`external_validation` does the same and logs it to MLflow; `ontrack evaluate` prints it and
writes the Markdown sections (`training.tripod.evaluation_markdown`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from features.contract import Cohort
from training import plots
from training.dataset import TrainingRows, build_rows
from training.evaluate import comparison_table, decision_curves
from training.flag_eval import PolicyEvaluation, evaluate_on
from training.metrics import METRICS, calibration_slope_intercept
from training.pipeline import read_truth
from training.registry import load_bundle
from training.tracking import EXPERIMENT, configure, data_sha256, evaluation_dataset

#: The session the single-session figures (calibration plot, decision curve, subgroups,
#: sample size) are shown for: the flag budget's session (docs/flag.md).
AT_SESSION = 3
#: Subgroup columns looked for in the cohort (clients file, sessions file).
SUBGROUPS = ("age_band", "gender", "diagnosis_group", "clinic_id")
#: Bootstrap resamples for the subgroup intervals, at most. OnTrack heuristic, for time:
#: fairlearn's MetricFrame bootstrap costs about 0.8 s per resample on 3,000 clients in four
#: groupings (2 cores), so 200 would add minutes per instrument; 50 percentile intervals are
#: rough at their ends (docs/training.md, "Subgroup fairness").
SUBGROUP_BOOT = 50


@dataclass
class InstrumentEvaluation:
    instrument: str
    rows: TrainingRows
    p: np.ndarray  # the served risk per row
    comparison: pd.DataFrame
    curves: pd.DataFrame
    recalibration: pd.DataFrame | None
    flags: PolicyEvaluation | None
    fairness: object | None  # training.fairness.FairnessResult
    flag_fairness: object | None
    coverage: pd.DataFrame | None
    sample_size: list = field(default_factory=list)  # training.samplesize.Check
    n_clients: int = 0
    n_known: int = 0  # clients with a known outcome at AT_SESSION
    events: int = 0
    flags_budget: float = 0.3  # the flag policy's budget (its plot marks it)

    def figures(self) -> dict[str, object]:
        """The plots (matplotlib figures) by name; the caller closes them."""
        y, t = self.rows.failed, self.rows.keys["session"].to_numpy()
        oof = pd.DataFrame({"p_served": self.p})
        out = {"calibration_s3": plots.calibration_plot(y, t, oof, session=AT_SESSION)}
        if len(self.curves):
            out["decision_curve_s3"] = plots.decision_curve_plot(self.curves)
        if self.flags is not None:
            out["flag_policy_s3"] = plots.flag_curve_plot(self.flags.curves, self.flags.table,
                                                          self.flags_budget)
        return out


@dataclass
class Evaluation:
    model_uri: str
    model_version: str | None
    instruments: dict[str, InstrumentEvaluation]
    not_covered: dict[str, str]  # instrument in the cohort -> why it was not evaluated
    n_clients: int
    data_sha256: str
    sample_size: list = field(default_factory=list)  # for a cohort with nothing evaluable
    run_id: str | None = None


def _recalibration(rows: TrainingRows, p: np.ndarray, session: int = AT_SESSION,
                   folds: int = 5, seed: int = 0) -> pd.DataFrame | None:
    """Logistic recalibration on the cohort (logit p' = a + b logit p; Steyerberg 2019,
    ch. 20): a and b fitted on all clients, and the Brier score and calibration of the
    recalibrated risk judged in folds grouped by client (fitted on the other folds)."""
    from training.metrics import _irls, _logit

    t = rows.keys["session"].to_numpy()
    y = rows.failed
    m = (t == session) & np.isfinite(y) & np.isfinite(p)
    if m.sum() < 50 or len(np.unique(y[m])) < 2:
        return None
    yy, lp, g = y[m], _logit(p[m]), rows.groups[m]
    a, b = _irls(yy, lp, fit_slope=True)
    codes = pd.factorize(g)[0]
    fold = np.random.default_rng(seed).permutation(codes.max() + 1)[codes] % folds
    recal = np.empty_like(lp)
    for k in range(folds):
        tr = fold != k
        ak, bk = _irls(yy[tr], lp[tr], fit_slope=True)
        recal[~tr] = 1.0 / (1.0 + np.exp(-(ak + bk * lp[~tr])))
    rows_out = []
    for name, q in (("as served", p[m]), ("recalibrated (cross-validated)", recal)):
        slope, inter = calibration_slope_intercept(yy, q)
        rows_out.append({"risk": name, "session": session, "n": int(m.sum()),
                         "brier": METRICS["brier"](yy, q), "cal_slope": slope,
                         "cal_intercept": inter, "fitted_a": float(a), "fitted_b": float(b)})
    return pd.DataFrame(rows_out)


def risk_by_subgroup(rows: TrainingRows, p: np.ndarray, flag: np.ndarray, n_boot: int = 200,
                     seed: int = 0, session: int = AT_SESSION):
    """`training.fairness.risk_fairness` on the rows as of ``session`` with a known outcome
    (one per client), by the `SUBGROUPS` the cohort has; None without any."""
    from training.fairness import risk_fairness

    t = rows.keys["session"].to_numpy()
    at = (t == session) & np.isfinite(rows.failed) & np.isfinite(p)
    cols = [c for c in SUBGROUPS if c in rows.context.columns]
    if not at.any() or not cols:
        return None
    groups = rows.context.loc[at, cols].reset_index(drop=True).astype("string")
    return risk_fairness(rows.failed[at], p[at], flag[at] >= 0.5, groups,
                         n_boot=min(n_boot, SUBGROUP_BOOT), seed=seed)


def flags_by_subgroup(rows: TrainingRows, pe: PolicyEvaluation | None, n_boot: int = 200,
                      seed: int = 0):
    """`training.fairness.flag_fairness` of the learned policy's replay (flagged by session
    3, per client with a known outcome), by the `SUBGROUPS` the cohort has; None without."""
    from training.fairness import flag_fairness

    if pe is None or pe.clients is None or not len(pe.clients):
        return None
    per = pe.clients[np.isfinite(pe.clients["failed"])]
    ctx = (rows.context.assign(client_id=rows.keys["client_id"].to_numpy())
           .drop_duplicates("client_id").set_index("client_id"))
    cols = [c for c in SUBGROUPS if c in ctx.columns]
    if not cols or not len(per):
        return None
    groups = ctx.reindex(per["client_id"])[cols].reset_index(drop=True).astype("string")
    return flag_fairness(per["flag_s3"].to_numpy(bool), per["failed"].to_numpy(float), groups,
                         n_boot=min(n_boot, SUBGROUP_BOOT), seed=seed)


def _instrument(bundle, cohort: Cohort, inst: str, truth, n_boot: int, recalibrate: bool,
                seed: int = 0) -> InstrumentEvaluation:
    from training.conformal_eval import coverage_table
    from training.samplesize import precision_check

    models = bundle.models[inst]
    rows = build_rows(cohort, inst, target=models.target)
    m = models.failure
    p = m.predict_proba(rows.X)[:, 1]
    flag = (p >= m.threshold_).astype(float)
    oof = pd.DataFrame({"p_served": p, "flag_served": flag})
    frame = comparison_table(rows, oof, n_boot=n_boot, seed=seed)
    t = rows.keys["session"].to_numpy()
    at = (t == AT_SESSION) & np.isfinite(rows.failed)
    fair = risk_by_subgroup(rows, p, flag, n_boot, seed)
    pe = evaluate_on(models, cohort.sessions, cohort.clients if len(cohort.clients) else None,
                     truth, n_boot=n_boot, seed=seed)
    ffair = flags_by_subgroup(rows, pe, n_boot, seed)
    coverage = (coverage_table(models, cohort.sessions)
                if getattr(models, "band", None) is not None else None)
    n_known = int(at.sum())
    events = int(np.nansum(rows.failed[at]))
    c_dev = _development_c(bundle, inst)
    checks = precision_check(n_known, events, prevalence=_prevalence(models, n_known, events),
                             c_statistic=c_dev, p_sample=p[at] if n_known else None)
    ev = InstrumentEvaluation(
        instrument=inst, rows=rows, p=p, comparison=frame,
        curves=decision_curves(rows, oof, None, session=AT_SESSION),
        recalibration=_recalibration(rows, p, seed=seed) if recalibrate else None,
        flags=pe, fairness=fair, flag_fairness=ffair, coverage=coverage, sample_size=checks,
        n_clients=int(rows.keys["client_id"].nunique()), n_known=n_known, events=events)
    if models.flag_policy is not None:
        ev.flags_budget = models.flag_policy.budget
    return ev


def _development_c(bundle, inst: str) -> float:
    """The model's cross-validated AUROC as of session 3 from its card (the anticipated C for
    the sample-size rules), or 0.7 when the card has none (OnTrack heuristic: a modest
    model)."""
    card = (getattr(bundle, "card", None) or {}).get("validation", {}).get(inst, {})
    for r in card.get("by_session", []):
        if r.get("session") == AT_SESSION and r.get("auroc") is not None:
            return float(r["auroc"])
    return 0.7


def _prevalence(models, n: int, events: int) -> float:
    """The outcome's share: the cohort's own when it has outcomes, else the model's
    training population's."""
    if n and 0 < events < n:
        return events / n
    rate = getattr(models.population, "failure_rate", float("nan"))
    return float(rate) if np.isfinite(rate) else 0.5


def evaluate_cohort(bundle, cohort: Cohort, data_path: Path | None, model_uri: str,
                    n_boot: int = 200, recalibrate: bool = False, seed: int = 0,
                    progress=None) -> Evaluation:
    """Every figure of an external validation, nothing logged (see module docstring).
    ``progress``: called with a short description of each step."""
    progress = progress or (lambda _msg: None)
    from features.instruments import REGISTRY, Role
    from training.samplesize import precision_check

    present = sorted(i for i in cohort.sessions["instrument"].astype(str).unique()
                     if i in REGISTRY and REGISTRY[i].role is Role.OUTCOME)
    common = [i for i in bundle.instruments if i in present]
    not_covered = {i: (f"the model covers {', '.join(bundle.instruments)}, not {i}: it cannot "
                       f"score {i} (train a model on {i} data with `ontrack train`)")
                   for i in present if i not in bundle.instruments}
    truth = read_truth(data_path)
    out = Evaluation(model_uri=model_uri, model_version=getattr(bundle, "version", None),
                     instruments={}, not_covered=not_covered, n_clients=cohort.n_clients,
                     data_sha256=data_sha256(data_path) if data_path else "in-memory")
    for inst in common:
        progress(f"{inst}: scoring and evaluating {cohort.n_clients:,} clients")
        out.instruments[inst] = _instrument(bundle, cohort, inst, truth, n_boot, recalibrate,
                                            seed)
    if not common:
        # how precise a validation of this size could be, had the model covered the cohort:
        # with the development share not improved and the development AUROC
        first = bundle.models[bundle.instruments[0]]
        prev = getattr(first.population, "failure_rate", float("nan"))
        prev = float(prev) if np.isfinite(prev) else 0.5
        n = cohort.n_clients
        out.sample_size = precision_check(
            n, int(round(n * prev)), prevalence=prev,
            c_statistic=_development_c(bundle, bundle.instruments[0]))
    return out


def external_validation(model_uri: str, cohort: Cohort, data_path: Path | None,
                        n_boot: int = 200, recalibrate: bool = False,
                        bundle=None, progress=None) -> Evaluation:
    """`evaluate_cohort`, logged to MLflow (experiment ``ontrack-not-on-track``, tag
    ``kind=external_validation``): metrics per instrument and session (on the model's record
    too, with the cohort as its dataset), tables and plots."""
    configure(EXPERIMENT)
    bundle = bundle or load_bundle(model_uri)
    bundle.check_compatible()
    ev = evaluate_cohort(bundle, cohort, data_path, model_uri, n_boot, recalibrate,
                         progress=progress)
    if progress:
        progress("logging to MLflow")
    model_id = _model_id(model_uri)
    with mlflow.start_run(run_name=f"evaluate {model_uri}") as run:
        mlflow.set_tags({"kind": "external_validation", "model_uri": model_uri,
                         "model_version": bundle.version or "",
                         "provenance.data_sha256": ev.data_sha256})
        ds = None
        if ev.instruments:
            ds = evaluation_dataset({i: e.rows for i, e in ev.instruments.items()},
                                    "external validation cohort",
                                    str(data_path) if data_path else "in-memory")
            mlflow.log_input(ds, context="evaluation")
        for inst, why in ev.not_covered.items():
            mlflow.set_tag(f"not_covered.{inst}", why)
        for inst, e in ev.instruments.items():
            metrics = {}
            for r in e.comparison.to_dict("records"):
                for k in ("auroc", "brier", "cal_slope", "cal_intercept"):
                    if np.isfinite(r[k]):
                        metrics[f"external_{inst}_{k}_s{int(r['session'])}"] = float(r[k])
            mlflow.log_metrics({k.removeprefix("external_"): v for k, v in metrics.items()})
            if model_id and metrics:
                mlflow.log_metrics(metrics, model_id=model_id, dataset=ds)
            mlflow.log_table(e.comparison, artifact_file=f"tables/external_{inst}.json")
            if e.flags is not None:
                mlflow.log_table(e.flags.table, artifact_file=f"tables/external_flags_{inst}.json")
                for r in e.flags.table.to_dict("records"):
                    for k in ("deteriorators_s3", "improvers_s3", "non_improvers_s3", "ppv_s3"):
                        if np.isfinite(r[k]):
                            mlflow.log_metric(f"{inst}_flag_{r['policy']}_{k}", float(r[k]))
            for name, res in (("fairness", e.fairness), ("flag_fairness", e.flag_fairness)):
                if res is not None:
                    mlflow.log_table(res.table, artifact_file=f"tables/{name}_{inst}.json")
                    mlflow.log_table(res.gaps, artifact_file=f"tables/{name}_gaps_{inst}.json")
            if e.coverage is not None:
                mlflow.log_table(e.coverage, artifact_file=f"tables/band_coverage_{inst}.json")
            if e.recalibration is not None:
                mlflow.log_table(e.recalibration,
                                 artifact_file=f"tables/recalibration_{inst}.json")
            for name, fig in e.figures().items():
                mlflow.log_figure(fig, f"plots/{inst}/{name}.png")
                plots.close(fig)
        ev.run_id = run.info.run_id
    return ev


def _model_id(model_uri: str) -> str | None:
    """The logged model's id behind a registry URI (``models:/name@alias`` or
    ``models:/name/version``), or None."""
    from training.registry import logged_model_id

    try:
        return logged_model_id(model_uri)
    except Exception:  # noqa: BLE001  (a URI outside the registry: nothing to attach to)
        return None
