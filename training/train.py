"""`ontrack train`: cross-validate, compare, fit the bundle, log everything to MLflow, register,
and run the promotion gate.

MLflow layout (experiment ``ontrack-not-on-track``): one parent run per training, with nested
runs per instrument and model (parameters, metrics per session with 95% intervals, ROC and
calibration plots, tables), and the bundle logged as a pyfunc in the parent run with the
comparison table, the expected-course fan, the decision curve, subgroup and deterioration tables
and provenance (data SHA-256, git commit, seed).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import structlog

from features.contract import Cohort
from features.pointintime import DEFAULT_AT, FEATURE_NAMES, FEATURE_VERSION
from models.base import CalibrationError
from models.expected_risk import ExpectedResponseRisk
from models.neighbours import trajectory_matrix
from training import plots
from training.dataset import HOLDOUT_FRACTION, TrainingRows
from training.evaluate import (
    comparison_table,
    decision_curves,
    deterioration_view,
    same_rows_vs_oracle,
)
from training.external import flags_by_subgroup, risk_by_subgroup
from training.flag_eval import PolicyEvaluation, evaluate_on, oracle_clients, oracle_p
from training.pipeline import (
    LABELS,
    ORACLE_INSTRUMENT,
    Settings,
    TooLittleDataError,
    available_models,
    cross_validate,
    fit_instrument,
    instrument_rows,
    make_bundle,
    oracle_column,
    read_truth,
    split_for_gate,
)
from training.registry import (
    GateDecision,
    champion_version,
    describe_version,
    feature_version_ok,
    gate,
    load_bundle,
    log_bundle,
    register,
    set_champion,
)
from training.tracking import (
    EXPERIMENT,
    MODEL_NAME,
    configure,
    data_sha256,
    evaluation_dataset,
    git_commit,
)

log = structlog.get_logger("ontrack.train")
Progress = Callable[[str], None]


@dataclass
class InstrumentReport:
    instrument: str
    models: list[str]
    notes: list[str]
    comparison: pd.DataFrame
    external: pd.DataFrame | None
    vs_oracle: pd.DataFrame | None
    deterioration: pd.DataFrame
    dropout: pd.DataFrame | None
    subgroups: object | None  # training.fairness.FairnessResult: risk as of session 3, OOF
    flags: PolicyEvaluation | None = None
    flag_subgroups: object | None = None  # the same for the flag policy, on the hold-out
    band_coverage: pd.DataFrame | None = None  # the expected-course bands, on the hold-out


@dataclass
class TrainResult:
    run_id: str
    version: str | None
    decision: GateDecision | None
    reports: dict[str, InstrumentReport] = field(default_factory=dict)


def _metric_name(model: str, metric: str, session: int, suffix: str = "") -> str:
    return f"{metric}_s{session}{suffix}"


def _log_table(frame: pd.DataFrame, name: str) -> None:
    if frame is not None and len(frame):
        mlflow.log_table(frame.reset_index(drop=True), artifact_file=f"tables/{name}.json")
        mlflow.log_text(frame.to_csv(index=False), f"tables/{name}.csv")


def _model_card(reports: dict[str, InstrumentReport], models: dict, provenance: dict) -> dict:
    validation = {}
    for inst, r in reports.items():
        served = "gbm" if "gbm" in r.models else "logistic"
        cmp = r.comparison[(r.comparison["model"] == served)]
        validation[inst] = {
            "model": LABELS[served],
            "method": "5-fold cross-validation grouped by client, on clients outside the "
                      "promotion hold-out; 95% intervals from a client bootstrap",
            "by_session": [
                {k: (None if pd.isna(v) else (float(v) if isinstance(v, float | np.floating)
                                              else v))
                 for k, v in row.items() if k in {
                     "session", "n", "events", "auroc", "auroc_lo", "auroc_hi", "brier",
                     "brier_lo", "brier_hi", "cal_slope", "cal_slope_lo", "cal_slope_hi",
                     "sensitivity", "specificity", "flag_rate"}}
                for row in cmp.to_dict("records")],
            "notes": r.notes,
        }
        pol = models[inst].flag_policy
        if pol is not None:
            validation[inst]["flag_policy"] = {
                "description": pol.describe(),
                "entry_threshold": pol.entry, "exit_threshold": pol.exit,
                "exit_sessions": pol.exit_sessions, "budget": pol.budget,
                "by_session": pol.by_session,
                "achieved_out_of_fold": pol.achieved,
                "held_out": ([] if r.flags is None else [
                    {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                     for k, v in row.items()} for row in r.flags.table.to_dict("records")]),
                "held_out_summary": None if r.flags is None else r.flags.summary,
            }
    population = {inst: m.population.__dict__ for inst, m in models.items()}
    learned = {inst: {**m.recommender.support_, "summary": m.recommender.support_words()}
               for inst, m in models.items()
               if getattr(m, "recommender", None) is not None
               and hasattr(m.recommender, "support_")}
    return {
        "learned_suggestions": learned or "none: the rule-based suggestions only",
        "name": MODEL_NAME,
        "intended_use": (
            "Decision support for therapists using routine outcome monitoring: flags adult "
            "clients who may be heading for no reliable improvement by the end of care (not "
            "on track) and who may end care early, explains what drove the flag and suggests "
            "topics to discuss. A prompt for a conversation with the client and for clinical "
            "judgement, never a diagnosis, a verdict on the therapist or a reason to end or "
            "refuse care."),
        "inputs": ("Session-by-session totals of an outcome questionnaire (e.g. PHQ-9, GAD-7), "
                   "optional item answers (risk items), optional alliance ratings (SRS, WAI-SR), "
                   "session numbers and optional dates. Never identifiers or free text."),
        "logic": (
            "Point-in-time features (features version " + FEATURE_VERSION + ": " +
            ", ".join(FEATURE_NAMES) + ") -> a LightGBM model with monotone constraints and "
            "Platt calibration (logistic regression when too few clients), an expected-response "
            "curve (Finch, Lambert & Schaalje 2001) and the 50 most similar archived clients "
            "(Lutz et al. 2005) for the expected course and signal; SHAP contributions on the "
            "log-odds scale explain each risk. A non-zero risk item raises a safety flag "
            "whatever the model says."),
        "outcome_definition": (
            "failed_nhs = at caseness at the first paired PHQ-9/GAD-7 scores, at least two "
            "paired scores, and not a reliable improvement by the NHS Talking Therapies rule "
            "(PHQ-9 down by 6 or GAD-7 down by 4, neither reliably worse)"
            if provenance.get("target") == "failed_nhs" else
            "failed = intake in the clinical range, at least two scores, and the last score not "
            "a reliable improvement on intake (PHQ-9: not at least 6 points below)")
            + "; dropout = end status 'dropout'. Clients starting below the cut-off get no "
            "risk and are monitored for reliable deterioration only.",
        "flag_policy": ("The not-on-track flag is a policy over the client's history "
                        "(models/flag.py): no flag at intake; it opens when the risk reaches "
                        "the entry threshold, the signal is red twice in a row, or the score "
                        "reliably deteriorates; it clears after calm sessions below a lower "
                        "exit threshold. Thresholds per instrument under validation."),
        "training_population": population,
        "validation": validation,
        "limits": [
            "Trained on the cohort named in provenance; performance elsewhere must be checked "
            "with `ontrack evaluate` before use.",
            "Predictions after session 6 are extrapolated (the model was trained on sessions "
            "1-6).",
            "The nearest-neighbour reference inside the model contains patient-level "
            "trajectories (no identifiers); treat the model file as sensitive.",
            "Subgroups with fewer than 10 clients are not reported.",
            "Simulated training data (if provenance says so) are not evidence of clinical "
            "performance.",
        ],
        "version_date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "provenance": provenance,
    }


def _report_instrument(cohort: Cohort, rows: TrainingRows, settings: Settings, truth,
                       n_boot: int, progress: Progress) -> tuple[InstrumentReport, TrainingRows,
                                                                 TrainingRows, dict]:
    inst = rows.instrument
    dev, hold = split_for_gate(rows)
    names, notes = available_models(dev, "failed")
    traj = trajectory_matrix(cohort.sessions, inst)
    oof = cross_validate(dev, "failed", names, settings, traj, progress=progress)
    oracle = oracle_column(dev, truth)
    cmp = comparison_table(dev, oof, oracle=oracle, n_boot=n_boot, seed=settings.seed)
    external = None
    if "clinic_id" in dev.context and dev.context["clinic_id"].nunique() >= 3:
        lco = cross_validate(dev, "failed", names, settings, traj, by="clinic",
                             progress=progress)
        external = comparison_table(dev, lco, n_boot=n_boot, seed=settings.seed,
                                    sessions=(3,))
    vs_oracle = (same_rows_vs_oracle(dev, oof, oracle, 3, n_boot=n_boot, seed=settings.seed)
                 if oracle is not None else None)
    dropout = None
    if np.isfinite(dev.dropped_out).any():
        try:
            dnames, _ = available_models(dev, "dropped_out")
            dname = ["gbm" if "gbm" in dnames else "logistic"]
            doof = cross_validate(dev, "dropped_out", dname, settings, traj, progress=progress)
            dropout = comparison_table(dev, doof, target="dropped_out", n_boot=n_boot,
                                       seed=settings.seed)
        except (TooLittleDataError, CalibrationError) as err:
            notes.append(f"dropout model not trained: {err}")
    served = "gbm" if "gbm" in names else "logistic"
    report = InstrumentReport(
        instrument=inst, models=names, notes=notes, comparison=cmp, external=external,
        vs_oracle=vs_oracle, deterioration=deterioration_view(dev, oof),
        dropout=dropout, subgroups=risk_by_subgroup(dev, oof[f"p_{served}"].to_numpy(),
                                                    oof[f"flag_{served}"].to_numpy(), n_boot,
                                                    settings.seed))
    extras = {"oof": oof, "oracle": oracle, "traj": traj,
              "curves": decision_curves(dev, oof, oracle)}
    return report, dev, hold, extras


def _log_model_runs(report: InstrumentReport, dev: TrainingRows, extras: dict,
                    settings: Settings) -> None:
    y, t = dev.failed, dev.keys["session"].to_numpy()
    for m in [*report.models, *(["oracle"] if extras["oracle"] is not None else [])]:
        with mlflow.start_run(run_name=f"{report.instrument} · {m}", nested=True):
            mlflow.set_tags({"instrument": report.instrument, "model": m,
                             "label": LABELS.get(m, m)})
            mlflow.log_params({"instrument": report.instrument, "model": m,
                               "seed": settings.seed, "n_folds": settings.n_folds,
                               **({"n_neighbors": settings.n_neighbors}
                                  if m == "neighbours" else {}),
                               **({f"gbm_{k}": v for k, v in settings.gbm.items()}
                                  if m == "gbm" else {})})
            rows = report.comparison[report.comparison["model"] == m]
            for r in rows.to_dict("records"):
                s = int(r["session"])
                for k in ("auroc", "auprc", "brier", "cal_slope", "cal_intercept"):
                    for suf in ("", "_lo", "_hi"):
                        v = r.get(k + suf)
                        if v is not None and np.isfinite(v):
                            mlflow.log_metric(f"{k}_s{s}{suf}", float(v))
                for k in ("sensitivity", "specificity", "flag_rate"):
                    v = r.get(k)
                    if v is not None and np.isfinite(v):
                        mlflow.log_metric(f"{k}_s{s}", float(v))
            det = report.deterioration[report.deterioration["model"] == m]
            if len(det):
                mlflow.log_metric("deteriorators_flagged_by_s3",
                                  float(det["flagged_deteriorators"].iloc[0]))
                mlflow.log_metric("others_flagged_by_s3", float(det["flagged_others"].iloc[0]))
            if m != "oracle":
                oof = extras["oof"][[f"p_{m}", f"flag_{m}"]]
                for name, fig in (("roc_s3", plots.roc_plot(y, t, oof, session=3)),
                                  ("calibration_s3", plots.calibration_plot(y, t, oof,
                                                                            session=3))):
                    mlflow.log_figure(fig, f"plots/{name}.png")
                    plots.close(fig)


def train(cohort: Cohort, data_path: Path | None, settings: Settings | None = None,
          instruments: list[str] | None = None, n_boot: int = 200, register_model: bool = True,
          permute_labels: bool = False, progress: Progress | None = None) -> TrainResult:
    """Train, compare, log, register and gate. Raises `TooLittleDataError` below the minimum
    and `models.base.CalibrationError` when the risk model's calibration fails (nothing is
    registered then)."""
    settings = settings or Settings()
    progress = progress or (lambda _msg: None)
    configure(EXPERIMENT)
    truth = read_truth(data_path)
    rows_by_inst = instrument_rows(cohort, instruments, settings.target)
    if not rows_by_inst:
        raise TooLittleDataError("no outcome instrument with a cut-off and a reliable-change "
                                 "threshold in this cohort")
    if permute_labels:  # negative control: outcomes shuffled between clients
        rng = np.random.default_rng(settings.seed + 99)
        for rows in rows_by_inst.values():
            ids = rows.keys["client_id"]
            uniq = ids.unique()
            per = pd.Series(rows.failed, index=ids).groupby(level=0).first().reindex(uniq)
            shuffled = pd.Series(rng.permutation(per.to_numpy()), index=uniq)
            rows.failed = shuffled.reindex(ids).to_numpy(dtype=float)
    provenance = {
        "data_sha256": data_sha256(data_path) if data_path else "in-memory",
        "data_path_name": data_path.name if data_path else "",
        "git_commit": git_commit(), "seed": str(settings.seed),
        "feature_version": FEATURE_VERSION, "simulated": str(truth is not None),
        "holdout_fraction": str(HOLDOUT_FRACTION), "permuted_labels": str(permute_labels),
        "n_clients": str(cohort.n_clients), "target": settings.target,
        "flag_budget": str(settings.flag_budget),
        **_date_range(cohort),
    }
    reports, fitted, holds = {}, {}, {}
    with mlflow.start_run(run_name=f"train {dt.datetime.now():%Y-%m-%d %H:%M}") as run:
        mlflow.set_tags({"kind": "training",
                         **{f"provenance.{k}": v for k, v in provenance.items()}})
        mlflow.log_params({"seed": settings.seed, "n_folds": settings.n_folds,
                           "target": settings.target, "flag_budget": settings.flag_budget,
                           "n_neighbors": settings.n_neighbors, "n_boot": n_boot,
                           "instruments": ",".join(rows_by_inst),
                           "permute_labels": permute_labels})
        for inst, rows in rows_by_inst.items():
            progress(f"{inst}: cross-validating")
            report, dev, hold, extras = _report_instrument(cohort, rows, settings, truth,
                                                           n_boot, progress)
            _log_model_runs(report, dev, extras, settings)
            progress(f"{inst}: fitting the bundle")
            model = fit_instrument(cohort, dev, settings, extras["traj"])
            reports[inst], fitted[inst], holds[inst] = report, model, (dev, hold)
            progress(f"{inst}: replaying the flag policies on held-out clients")
            report.flags = evaluate_flags(cohort, model, dev, hold, truth, n_boot,
                                          settings.seed)
            _log_flags(report.flags, model, inst)
            progress(f"{inst}: subgroups and band coverage on held-out clients")
            report.flag_subgroups = flags_by_subgroup(hold, report.flags, n_boot,
                                                      settings.seed)
            report.band_coverage = _band_coverage(cohort, model, hold)
            _log_table(report.band_coverage, f"band_coverage_{inst}")
            for name, res in (("subgroups", report.subgroups),
                              ("flag_subgroups", report.flag_subgroups)):
                if res is not None:
                    _log_table(res.table, f"{name}_{inst}")
                    _log_table(res.gaps, f"{name}_gaps_{inst}")
            _log_table(report.comparison, f"comparison_{inst}")
            _log_table(report.external, f"leave_clinics_out_{inst}")
            _log_table(report.vs_oracle, f"vs_oracle_{inst}")
            _log_table(report.deterioration, f"deterioration_{inst}")
            _log_table(report.dropout, f"dropout_{inst}")
            y, t = dev.failed, dev.keys["session"].to_numpy()
            for name, fig in (
                ("roc_s3", plots.roc_plot(y, t, extras["oof"], extras["oracle"], 3)),
                ("calibration_s3", plots.calibration_plot(y, t, extras["oof"],
                                                          extras["oracle"], 3)),
                ("decision_curve_s3", plots.decision_curve_plot(extras["curves"])),
                ("expected_course_fan", plots.fan_plot(model.expected)),
            ):
                mlflow.log_figure(fig, f"plots/{inst}/{name}.png")
                plots.close(fig)
            served = "gbm" if "gbm" in report.models else "logistic"
            row = report.comparison[(report.comparison["model"] == served)
                                    & (report.comparison["session"] == 3)]
            if len(row):
                mlflow.log_metrics({f"{inst}_auroc_s3": float(row["auroc"].iloc[0]),
                                    f"{inst}_brier_s3": float(row["brier"].iloc[0])})
        card = _model_card(reports, fitted, provenance)
        bundle = make_bundle(fitted, card, provenance)
        mlflow.log_dict(card, "model_card.json")
        result = TrainResult(run_id=run.info.run_id, version=None, decision=None,
                             reports=reports)
        if not register_model:
            return result
        progress("logging and registering the bundle")
        example = _input_example(cohort, holds)
        info = log_bundle(bundle, example, params=_model_params(settings, n_boot),
                          tags={"instruments": ",".join(fitted),
                                **{f"provenance.{k}": v for k, v in provenance.items()}})
        version = register(info.model_uri, tags={"feature_version": FEATURE_VERSION,
                                                 "permuted_labels": str(permute_labels)})
        result.version = version
        source = str(data_path) if data_path else "in-memory"
        dev_ds = evaluation_dataset({i: d for i, (d, _) in holds.items()},
                                    "development clients (cross-validated)", source)
        hold_ds = evaluation_dataset({i: h for i, (_, h) in holds.items()},
                                     "promotion hold-out clients", source)
        mlflow.log_input(dev_ds, context="training")
        mlflow.log_input(hold_ds, context="evaluation")
        # the model's own record: cross-validated figures on the development clients, the
        # flag policy's and the gate's on the hold-out, each with its dataset's digest
        mlflow.log_metrics(_headline(reports), model_id=info.model_id, dataset=dev_ds)
        mlflow.log_metrics(_held_out(reports), model_id=info.model_id, dataset=hold_ds)
        decision = _gate(bundle, holds, settings, progress)
        gate_metrics = {k: v for k, v in decision.metrics().items() if np.isfinite(v)}
        mlflow.log_metrics(gate_metrics)
        mlflow.log_metrics(gate_metrics, model_id=info.model_id, dataset=hold_ds)
        mlflow.set_tag("gate.reason", decision.reason)
        describe_version(version, card, decision, info.model_id)
        if decision.promote:
            set_champion(version)
        result.decision = decision
        log.info("trained", run_id=run.info.run_id, version=version,
                 promoted=decision.promote)
    return result


#: Per-session figures of the served risk model logged on its model record.
HEADLINE = ("auroc", "auprc", "brier", "cal_slope", "cal_intercept")
#: The flag policy's figures on the hold-out, logged on the model record.
HELD_OUT_FLAGS = ("deteriorators_s3", "non_improvers_s3", "improvers_s3", "ppv_s3",
                  "flags_per_100")


def _band_coverage(cohort: Cohort, model, hold: TrainingRows) -> pd.DataFrame | None:
    """Coverage of the expected-course bands (empirical and conformal) per session on the
    held-out clients, whose courses the band was not calibrated on."""
    from training.conformal_eval import coverage_table

    if getattr(model, "band", None) is None or not len(hold):
        return None
    ids = set(pd.unique(hold.groups))
    return coverage_table(model, cohort.sessions[cohort.sessions["client_id"].isin(ids)])


def _date_range(cohort: Cohort) -> dict[str, str]:
    """The first and last session date of the cohort (TRIPOD+AI's item 5b), if it has
    dates."""
    if "date" not in cohort.sessions.columns:
        return {}
    d = pd.to_datetime(cohort.sessions["date"], errors="coerce").dropna()
    if not len(d):
        return {}
    return {"first_date": d.min().date().isoformat(), "last_date": d.max().date().isoformat()}


def _model_params(settings: Settings, n_boot: int) -> dict[str, str]:
    return {"seed": settings.seed, "n_folds": settings.n_folds, "target": settings.target,
            "flag_budget": settings.flag_budget, "n_neighbors": settings.n_neighbors,
            "n_boot": n_boot, "feature_version": FEATURE_VERSION,
            **{f"gbm_{k}": v for k, v in settings.gbm.items()}}


def _headline(reports: dict[str, InstrumentReport]) -> dict[str, float]:
    """The served model's cross-validated figures per instrument and session (with their
    95% interval bounds), e.g. ``PHQ-9_auroc_s3``, ``PHQ-9_auroc_s3_lo``."""
    out = {}
    for inst, r in reports.items():
        served = "gbm" if "gbm" in r.models else "logistic"
        for row in r.comparison[r.comparison["model"] == served].to_dict("records"):
            for k in HEADLINE:
                for suf in ("", "_lo", "_hi"):
                    v = row.get(k + suf)
                    if v is not None and np.isfinite(v):
                        out[f"{inst}_{k}_s{int(row['session'])}{suf}"] = float(v)
    return out


def _held_out(reports: dict[str, InstrumentReport]) -> dict[str, float]:
    """The learned flag policy's figures on the hold-out clients, e.g.
    ``PHQ-9_flag_improvers_s3``."""
    out = {}
    for inst, r in reports.items():
        if r.flags is None:
            continue
        t = r.flags.table.set_index("policy")
        if "learned" in t.index:
            for k in HELD_OUT_FLAGS:
                v = t.loc["learned", k]
                if v is not None and np.isfinite(v):
                    out[f"{inst}_flag_{k}"] = float(v)
    return out


def evaluate_flags(cohort: Cohort, model, dev: TrainingRows, hold: TrainingRows, truth,
                   n_boot: int = 200, seed: int = 0) -> PolicyEvaluation | None:
    """The flag policies replayed session by session on the held-out clients (whole
    histories, the fitted bundle's models), with the oracle's ceiling on simulated data (its
    threshold chosen on the development clients, like the model's)."""
    from models.assess import policy_history
    from models.flag import Outcomes, fit_policy

    if model.flag_policy is None or not len(hold):
        return None
    inst = dev.instrument
    hold_ids = set(pd.unique(hold.groups))
    s = cohort.sessions[cohort.sessions["client_id"].isin(hold_ids)]
    clients = (cohort.clients[cohort.clients["client_id"].isin(hold_ids)]
               if len(cohort.clients) else None)
    oracle_policy = None
    if truth is not None and inst == ORACLE_INSTRUMENT and dev.target == "failed":
        ids = pd.Index(sorted(pd.unique(dev.groups)))
        ds = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
        dh, dk = policy_history(model, ds, inst, at=DEFAULT_AT, exclude=ids)
        dp = oracle_p(dk, truth)
        if dp is not None:
            m = oracle_clients(dk, dp)
            oracle_policy = fit_policy(dh.subset(m).with_p(dp[m]),
                                       Outcomes(dev.failed[m], dev.deteriorated[m]),
                                       budget=model.flag_policy.budget, target=dev.target)
    return evaluate_on(model, s, clients, truth, oracle_policy, n_boot=n_boot, seed=seed)


def _log_flags(pe: PolicyEvaluation | None, model, inst: str) -> None:
    if pe is None:
        return
    _log_table(pe.table, f"flag_policies_{inst}")
    _log_table(pe.curves, f"flag_curves_{inst}")
    for r in pe.table.to_dict("records"):
        for k in ("deteriorators_s3", "deteriorators_end", "non_improvers_s3",
                  "improvers_s3", "improvers_end", "ppv_s3", "flags_per_100", "flip_rate"):
            v = r.get(k)
            if v is not None and np.isfinite(v):
                mlflow.log_metric(f"{inst}_flag_{r['policy']}_{k}", float(v))
    if pe.gap_to_oracle is not None:
        mlflow.log_metric(f"{inst}_flag_gap_to_oracle_points", float(pe.gap_to_oracle))
    pol = model.flag_policy
    mlflow.log_params({f"{inst}_flag_entry": round(pol.entry, 4),
                       f"{inst}_flag_exit": round(pol.exit, 4),
                       f"{inst}_flag_budget": pol.budget,
                       f"{inst}_flag_exit_sessions": pol.exit_sessions})
    fig = plots.flag_curve_plot(pe.curves, pe.table, pol.budget)
    mlflow.log_figure(fig, f"plots/{inst}/flag_policy_s3.png")
    plots.close(fig)


def _input_example(cohort: Cohort, holds) -> pd.DataFrame:
    """A few held-out clients' sessions (the simulator's or the cohort's own format)."""
    first = next(iter(holds.values()))[1]
    ids = list(pd.unique(first.keys["client_id"]))[:3]
    s = cohort.sessions
    return s[s["client_id"].isin(ids)].reset_index(drop=True)


def _gate(bundle, holds, settings: Settings, progress: Progress) -> GateDecision:
    """Challenger vs champion (or vs the expected-response rule) on the held-out clients."""
    progress("promotion gate")
    champ = champion_version()
    champion = None
    if champ is not None:
        champion = load_bundle(f"models:/{MODEL_NAME}@champion")
        if not feature_version_ok(champion):
            return GateDecision(False, f"not promoted: champion v{champ} was built with feature "
                                f"version {champion.feature_version}, this code has "
                                f"{FEATURE_VERSION}; compare them by hand", f"champion v{champ}")
    decisions = []
    for inst, (dev, hold) in holds.items():
        challenger_p = bundle.models[inst].failure.predict_proba(hold.X)[:, 1]
        if champion is None:
            base = ExpectedResponseRisk(instrument=inst).fit(dev.X, dev.failed, dev.groups)
            decisions.append(gate(challenger_p, base.predict_proba(hold.X)[:, 1], hold,
                                  "the expected-response rule", settings.seed))
        elif inst in champion.models:
            base_p = champion.models[inst].failure.predict_proba(hold.X)[:, 1]
            decisions.append(gate(challenger_p, base_p, hold, f"champion v{champ}",
                                  settings.seed))
    if not decisions:
        return GateDecision(False, "not promoted: the champion covers none of this model's "
                            f"instruments ({', '.join(holds)})", f"champion v{champ}")
    # every instrument both cover must pass; report the first that does not (or the first)
    failing = [d for d in decisions if not d.promote]
    return failing[0] if failing else decisions[0]


def summary_json(result: TrainResult) -> str:
    return json.dumps({"run_id": result.run_id, "version": result.version,
                       "promoted": None if result.decision is None else result.decision.promote,
                       "reason": None if result.decision is None else result.decision.reason})
