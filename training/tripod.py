"""`ontrack report`: a TRIPOD+AI report for one registered model and one evaluation cohort.

TRIPOD+AI (Collins GS, Moons KGM, Dhiman P, et al. BMJ 2024;385:e078378) is the reporting
standard for studies that develop or evaluate a clinical prediction model, with or without
machine learning: 27 items, 52 with their parts. `ITEMS` lists them all; the report has one
section per item, filled from what the model's MLflow run logged (development: cross-validated
figures, the promotion hold-out, the model card) and from the evaluation cohort
(`training.external.evaluate_cohort`: discrimination, calibration, decision curve, flag
policies, subgroups, band coverage, sample size). An item that neither can fill says "Not
available" and why (e.g. ethical approval: the study's authors must state it), so a reader
sees what is missing rather than a silent gap. `missing_items` is the check a test runs.

Output: ``report.md`` with its plots beside it, and ``report.html`` (one self-contained file,
plots embedded). The folder is logged on the model's own MLflow record (LoggedModel artifacts,
``reports/``). PDF is not built in: print the HTML to PDF from a browser.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from features.contract import Cohort
from features.pointintime import FEATURE_NAMES
from training import plots
from training.external import AT_SESSION, Evaluation, InstrumentEvaluation
from training.report import _markdown

#: (item, topic, what TRIPOD+AI asks for; paraphrased from Collins et al. 2024, Table 1)
ITEMS: tuple[tuple[str, str, str], ...] = (
    ("1", "Title", "Study as developing or evaluating a prediction model, the target "
     "population and the outcome"),
    ("2", "Abstract", "Structured summary"),
    ("3a", "Background: healthcare context", "Context, rationale and existing models"),
    ("3b", "Background: target population and use", "Population, place in the care pathway "
     "and intended users"),
    ("3c", "Background: health inequalities", "Known inequalities between groups"),
    ("4", "Objectives", "Development, evaluation or both"),
    ("5a", "Data: sources", "Sources of data and their representativeness"),
    ("5b", "Data: dates", "Dates of accrual and end of follow-up"),
    ("6a", "Participants: setting", "Setting, number and location of centres"),
    ("6b", "Participants: eligibility", "Inclusion and exclusion criteria"),
    ("6c", "Participants: treatments", "Treatments received"),
    ("7", "Data preparation", "Pre-processing and data quality checks"),
    ("8a", "Outcome: definition", "Outcome, time horizon, how and when assessed"),
    ("8b", "Outcome: assessors", "Who assessed the outcome"),
    ("8c", "Outcome: blinding", "Blinding of the outcome assessment"),
    ("9a", "Predictors: choice", "How the predictors were chosen"),
    ("9b", "Predictors: definition", "Definition, how and when measured"),
    ("9c", "Predictors: assessors", "Who assessed the predictors; blinding"),
    ("10", "Sample size", "How the study size was arrived at"),
    ("11", "Missing data", "How missing data were handled"),
    ("12a", "Analysis: data use", "How the data were used (development, evaluation, "
     "splits)"),
    ("12b", "Analysis: predictors", "How predictors were handled"),
    ("12c", "Analysis: model", "Model type, building, tuning and internal validation"),
    ("12d", "Analysis: heterogeneity", "Heterogeneity across clusters (clinics)"),
    ("12e", "Analysis: performance measures", "Measures and plots, with the rationale"),
    ("12f", "Analysis: updating", "Model updating (e.g. recalibration)"),
    ("12g", "Analysis: predictions in evaluation", "How predictions were calculated for the "
     "evaluation"),
    ("13", "Class imbalance", "Methods for class imbalance, and recalibration after them"),
    ("14", "Fairness", "Approaches to assess fairness"),
    ("15", "Model output", "Output, thresholds and how they were chosen"),
    ("16", "Training versus evaluation", "Differences between development and evaluation "
     "data"),
    ("17", "Ethical approval", "Ethics committee and consent"),
    ("18a", "Open science: funding", "Sources of funding"),
    ("18b", "Open science: conflicts of interest", "Conflicts of interest"),
    ("18c", "Open science: protocol", "Where the protocol can be read"),
    ("18d", "Open science: registration", "Study registration"),
    ("18e", "Open science: data sharing", "Availability of the data"),
    ("18f", "Open science: code sharing", "Availability of the code"),
    ("19", "Patient and public involvement", "Involvement in design, conduct, reporting"),
    ("20a", "Participants: flow", "Flow of participants, with and without the outcome"),
    ("20b", "Participants: characteristics", "Characteristics overall and per source"),
    ("20c", "Participants: development vs evaluation", "Comparison of the distributions of "
     "important predictors"),
    ("21", "Model development", "Participants and outcome events in each analysis"),
    ("22", "Model specification", "The full model, or how to use it"),
    ("23a", "Model performance", "Performance with intervals, for key subgroups too"),
    ("23b", "Model performance: heterogeneity", "Across clusters"),
    ("24", "Model updating", "Results of any updating"),
    ("25", "Interpretation", "Overall interpretation, fairness included"),
    ("26", "Limitations", "Limitations (non-representative sample, sample size, "
     "overfitting, missing data)"),
    ("27a", "Usability: poor or missing input", "How poor-quality or missing input is "
     "handled"),
    ("27b", "Usability: users", "Interaction and expertise the users need"),
    ("27c", "Usability: future research", "Future research, generalisability"),
)
NOT_AVAILABLE = "*Not available:*"
_HEADING = re.compile(r"^### (\w+)\. ", re.MULTILINE)


def missing_items(markdown: str) -> list[str]:
    """The TRIPOD+AI items with no section (or an empty one) in a report's Markdown."""
    found = {}
    parts = _HEADING.split(markdown)
    for k in range(1, len(parts) - 1, 2):
        body = parts[k + 1].split("\n", 1)[1] if "\n" in parts[k + 1] else ""
        found[parts[k]] = body.strip()
    return [i for i, _, _ in ITEMS if not found.get(i)]


# ---------------------------------------------------------------------------------------------
@dataclass
class ModelRecord:
    """What the model's training run logged, read back from MLflow."""

    uri: str
    version: str | None
    run_id: str | None
    model_id: str | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    card: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    version_tags: dict[str, str] = field(default_factory=dict)
    datasets: list[tuple[str, str]] = field(default_factory=list)  # (name, digest)


def model_record(model_uri: str, bundle, work: Path) -> ModelRecord:
    """The registered version, its run's params, tags, metrics, tables and plots, and the
    model card (the bundle's own when the run is not reachable)."""
    from training.registry import logged_model_id

    client = MlflowClient()
    label = str(getattr(bundle, "version", "") or "")
    rec = ModelRecord(uri=model_uri, version=label.rsplit("/", 1)[-1] or None, run_id=None,
                      model_id=None, card=dict(getattr(bundle, "card", {}) or {}))
    try:
        rec.model_id = logged_model_id(model_uri)
        lm = mlflow.get_logged_model(rec.model_id)
        rec.run_id = lm.source_run_id
        rec.datasets = sorted({(m.dataset_name, m.dataset_digest) for m in lm.metrics
                               if m.dataset_digest})
    except Exception:  # noqa: BLE001  (a model outside the registry: the bundle's card only)
        return rec
    if rec.version and rec.version.isdigit():
        rec.version_tags = dict(client.get_model_version(_registered_name(model_uri),
                                                         rec.version).tags)
    run = client.get_run(rec.run_id)
    rec.params, rec.tags, rec.metrics = dict(run.data.params), dict(run.data.tags), dict(
        run.data.metrics)
    local = work / "run"
    for folder in ("tables", "plots"):
        try:
            mlflow.artifacts.download_artifacts(run_id=rec.run_id, artifact_path=folder,
                                                dst_path=str(local))
        except Exception:  # noqa: BLE001, S112  (an older run without that folder)
            continue
    for p in sorted((local / "tables").glob("*.csv")):
        rec.tables[p.stem] = pd.read_csv(p)
    for p in sorted((local / "plots").glob("*/*.png")):
        rec.plots[f"{p.parent.name}/{p.stem}"] = p
    return rec


def _registered_name(model_uri: str) -> str:
    ref = model_uri.removeprefix("models:/")
    return ref.split("@", 1)[0] if "@" in ref else ref.rsplit("/", 1)[0]


# ---------------------------------------------------------------------------------------------
def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float | np.floating) else str(v)


def _ci(row, key: str, digits: int = 3) -> str:
    v = row.get(key)
    if v is None or not np.isfinite(v):
        return "—"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return _fmt(float(v), digits)
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


_COUNTS = {"n", "events", "clients", "deteriorators", "improvers", "session"}


def _tidy(frame: pd.DataFrame | None, digits: int = 3) -> str:
    """A table as Markdown, each ``x`` with ``x_lo``/``x_hi`` shown as one "x [lo, hi]"
    column, counts as whole numbers, the model's code dropped where its label is there."""
    if frame is None or not len(frame):
        return ""
    f = frame.drop(columns=[c for c in ("model", "note") if c in frame.columns
                            and ("label" in frame.columns or c == "note")])
    out = {}
    for c in f.columns:
        if c.endswith(("_lo", "_hi")) and c[:-3] in f.columns:
            continue
        if c in _COUNTS:
            out[c] = ["—" if pd.isna(v) else f"{int(v)}" for v in f[c]]
        elif f"{c}_lo" in f.columns and f"{c}_hi" in f.columns:
            out[c] = [_ci(r, c, digits) for r in f.to_dict("records")]
        elif pd.api.types.is_float_dtype(f[c]):
            out[c] = [_fmt(float(v), digits) for v in f[c]]
        else:
            out[c] = ["—" if pd.isna(v) else str(v) for v in f[c]]
    return _markdown(pd.DataFrame(out))


def _performance_table(frame: pd.DataFrame, model: str | None = None) -> str:
    if frame is None or not len(frame):
        return ""
    f = frame if model is None else frame[frame["model"] == model]
    out = pd.DataFrame({
        "session": f["session"].astype(int), "n": f["n"].astype(int),
        "events": f["events"].astype(int),
        "AUROC": [_ci(r, "auroc") for r in f.to_dict("records")],
        "Brier": [_ci(r, "brier") for r in f.to_dict("records")],
        "cal. slope": [_ci(r, "cal_slope", 2) for r in f.to_dict("records")],
        "cal. intercept": [_ci(r, "cal_intercept", 2) for r in f.to_dict("records")],
        "flagged": [_fmt(r.get("flag_rate"), 2) for r in f.to_dict("records")]})
    return _markdown(out)


def _served(frame: pd.DataFrame) -> str:
    return "gbm" if "gbm" in set(frame["model"]) else "logistic"


def _flag_table(table: pd.DataFrame) -> str:
    if table is None or not len(table):
        return ""
    out = pd.DataFrame({
        "policy": table["label"] if "label" in table else table["policy"],
        "clients": table["clients"].astype(int),
        "deteriorators flagged by s3": [_ci(r, "deteriorators_s3", 2)
                                        for r in table.to_dict("records")],
        "non-improvers flagged by s3": [_ci(r, "non_improvers_s3", 2)
                                        for r in table.to_dict("records")],
        "improvers flagged by s3 (false alarms)": [_ci(r, "improvers_s3", 2)
                                                   for r in table.to_dict("records")],
        "PPV by s3": [_ci(r, "ppv_s3", 2) for r in table.to_dict("records")]})
    return _markdown(out)


def _fairness_md(result, title: str) -> str:
    if result is None:
        return ""
    lines = [f"**{title}** (cells of fewer than 10 clients suppressed; 95% bootstrap "
             "intervals)", "", _tidy(result.table, 2), ""]
    lines += [f"- {s}" for s in result.sentences()]
    return "\n".join(lines)


#: The gaps the interpretation names (the full list is in the subgroup sections).
_KEY_GAPS = ("Largest AUROC", "Largest sensitivity", "Largest false-alarm", "Not shown")


def _sample_size_md(checks) -> str:
    if not checks:
        return ""
    lines = []
    for c in checks:
        lines.append(f"- {c.sentence}")
    return "\n".join(lines)


def _too_small(checks) -> list:
    return [c for c in checks if not c.meets]


# ---------------------------------------------------------------------------------------------
def evaluation_markdown(ev: Evaluation, plot_dir: Path, rel: Path | None = None,
                        level: int = 2) -> str:
    """The evaluation's sections (discrimination, calibration with the plot, decision curve,
    recalibration, flag policies, subgroups, band coverage, sample size) as Markdown, headed
    at ``level`` (2: ``##``); the plots are written to ``plot_dir`` and linked relative to
    ``rel``."""
    h = "#" * level
    plot_dir.mkdir(parents=True, exist_ok=True)
    rel = rel or plot_dir.parent
    lines = [f"Model `{ev.model_uri}` (version {ev.model_version}) on {ev.n_clients:,} "
             f"clients (data SHA-256 `{ev.data_sha256[:12]}…`), without retraining.", ""]
    for inst, why in ev.not_covered.items():
        lines += [f"**{inst}: not evaluated.** {why[0].upper()}{why[1:]}.", ""]
    if not ev.instruments:
        lines += [f"{h} Too small, and not covered", "",
                  "Nothing in this cohort can be scored by this model. Had it been, this is "
                  "how precise a validation on this many clients could be (Riley et al. "
                  "2024), assuming the development share not improved (the events in "
                  "brackets are that share of the clients) and the development AUROC:", "",
                  _sample_size_md(ev.sample_size), ""]
    for e in ev.instruments.values():
        lines += _instrument_sections(e, plot_dir, rel, level)
    return "\n".join(lines)


def _instrument_sections(e: InstrumentEvaluation, plot_dir: Path, rel: Path,
                         level: int) -> list[str]:
    inst = e.instrument
    h, h2 = "#" * level, "#" * (level + 1)
    lines = [f"{h} {inst}", "",
             f"{e.n_clients:,} clients scored; {e.n_known:,} with a known outcome as of "
             f"session {AT_SESSION} ({e.events:,} not reliably improved by the end of care).",
             ""]
    small = _too_small(e.sample_size)
    if small:
        lines += [f"{h2} {inst}: too small for a precise validation", "",
                  _sample_size_md(small), "",
                  "Read the figures below with their intervals; they are estimates from few "
                  "clients.", ""]
    lines += [f"{h2} {inst}: discrimination and calibration by session", "",
              _performance_table(e.comparison) or "No session with at least 20 clients with a "
              "known outcome and both outcomes present: nothing can be estimated.", ""]
    for name, fig in e.figures().items():
        path = plot_dir / f"{inst}_{name}.png"
        fig.savefig(path, dpi=110)
        plots.close(fig)
        lines += [f"![{inst} {name.replace('_', ' ')}]({path.relative_to(rel).as_posix()})", ""]
    if e.recalibration is not None:
        lines += [f"{h2} {inst}: recalibration", "", _tidy(e.recalibration), ""]
    if e.flags is not None:
        lines += [f"{h2} {inst}: flag policies replayed session by session", "",
                  _flag_table(e.flags.table), "", e.flags.summary + ".", ""]
    if e.fairness is not None:
        lines += [f"{h2} {inst}: subgroups", "",
                  _fairness_md(e.fairness, f"Risk as of session {AT_SESSION}"), ""]
    if e.flag_fairness is not None:
        lines += [_fairness_md(e.flag_fairness, "The flag policy, by session 3"), ""]
    if e.coverage is not None:
        lines += [f"{h2} {inst}: coverage of the expected-course bands", "",
                  _tidy(e.coverage), ""]
    if not small and e.sample_size:
        lines += [f"{h2} {inst}: sample size", "", _sample_size_md(e.sample_size), ""]
    return lines


# ---------------------------------------------------------------------------------------------
def _na(reason: str) -> str:
    return f"{NOT_AVAILABLE} {reason}"


def _dev_tables(rec: ModelRecord, prefix: str) -> dict[str, pd.DataFrame]:
    return {k.removeprefix(prefix + "_"): v for k, v in rec.tables.items()
            if k.startswith(prefix + "_")}


def _plot(rec: ModelRecord, key: str, out: Path, files: Path) -> str | None:
    src = rec.plots.get(key)
    if src is None:
        return None
    dst = files / f"development_{key.replace('/', '_')}.png"
    dst.write_bytes(src.read_bytes())
    return f"![development {key}]({dst.relative_to(out).as_posix()})"


def build_items(rec: ModelRecord, ev: Evaluation, cohort: Cohort, out: Path,
                files: Path) -> dict[str, str]:
    """Each TRIPOD+AI item's text (Markdown), filled or "Not available" with the reason."""
    card, prov = rec.card, rec.card.get("provenance", {})
    comparisons = _dev_tables(rec, "comparison")
    flags_dev = _dev_tables(rec, "flag_policies")
    lco = _dev_tables(rec, "leave_clinics_out")
    instruments = list(card.get("validation", {})) or list(comparisons)
    simulated = prov.get("simulated") == "True"
    version = rec.version or "unregistered"
    evaluated = ", ".join(ev.instruments) or "none of its instruments"
    eval_md = evaluation_markdown(ev, files / "evaluation", out, level=4)
    items: dict[str, str] = {}
    pop = card.get("training_population", {})

    items["1"] = (f"Development and external evaluation of the OnTrack not-on-track model "
                  f"(`{_registered_name(rec.uri)}` version {version}): gradient boosting "
                  "(LightGBM, with a logistic-regression fallback) predicting no reliable "
                  "improvement by the end of care for adult psychotherapy clients, from "
                  f"session-by-session outcome questionnaires ({', '.join(instruments)}).")
    s3 = {i: _s3(comparisons.get(i)) for i in instruments}
    ev_s3 = {i: _s3(e.comparison, served="served") for i, e in ev.instruments.items()}
    n_dev = prov.get("n_clients", "?")
    n_dev = f"{int(n_dev):,}" if str(n_dev).isdigit() else n_dev
    abstract = [f"Routine outcome monitoring data, {n_dev} clients "
                f"({'simulated' if simulated else 'real'} development data). Outcome: "
                f"{_outcome(card).split(';')[0] or 'see item 8a'}."]
    for i, r in s3.items():
        if r:
            abstract.append(f"{i}: cross-validated AUROC as of session 3 {_ci(r, 'auroc')}, "
                            f"calibration slope {_ci(r, 'cal_slope', 2)}.")
    for i, r in ev_s3.items():
        if r:
            abstract.append(f"External evaluation, {i}: AUROC {_ci(r, 'auroc')} on "
                            f"{int(r['n']):,} clients with a known outcome as of session 3.")
    for i, why in ev.not_covered.items():
        abstract.append(f"{i} in the evaluation cohort was not evaluated ({why}).")
    items["2"] = " ".join(abstract)
    items["3a"] = (
        "Therapists are poor at noticing when a client is not improving; routine outcome "
        "monitoring with feedback reduces deterioration and non-improvement (Lambert et al. "
        "2018, Psychotherapy 55:520; de Jong et al. 2021). Existing models: the expected "
        "treatment response (Finch, Lambert & Schaalje 2001) and nearest-neighbour expected "
        "courses (Lutz et al. 2005), both compared here.")
    items["3b"] = (card.get("intended_use", "") + " Users: therapists (web view), clinics "
                   "(the prediction service, often from an EHR) and researchers.")
    items["3c"] = (
        "Access to and outcomes of psychological therapy differ between groups: NHS Talking "
        "Therapies' annual reports publish recovery rates by age, gender, ethnicity and "
        "deprivation, and they differ. A model trained on one population may carry such "
        "differences into its flags; item 14 says how subgroups were checked and item 23a "
        "shows them.")
    items["4"] = ("Both: develop the model (cross-validation grouped by client, a promotion "
                  "hold-out) and evaluate it on a cohort it was not trained on "
                  f"(`ontrack report --data`): {evaluated}.")
    items["5a"] = (f"Development: `{prov.get('data_path_name') or 'in-memory'}` (SHA-256 "
                   f"`{prov.get('data_sha256', '?')[:16]}…`), "
                   + ("simulated by OnTrack's simulator (docs/simulator.md): not evidence of "
                      "clinical performance. " if simulated else "")
                   + f"Evaluation: {ev.n_clients:,} clients (SHA-256 `{ev.data_sha256[:16]}…`)."
                   + (" Datasets on the model's MLflow record: "
                      + "; ".join(f"{n} (digest `{d}`)" for n, d in rec.datasets) + "."
                      if rec.datasets else ""))
    dates = _dates(cohort)
    dev_dates = (f"Development sessions from {prov['first_date']} to {prov['last_date']}."
                 if prov.get("first_date") else None)
    items["5b"] = " ".join(x for x in (
        dev_dates, f"Evaluation sessions from {dates[0]} to {dates[1]}." if dates else None)
        if x) or _na("neither cohort has session dates.")
    clinics_eval = (cohort.sessions["clinic_id"].nunique()
                    if "clinic_id" in cohort.sessions.columns else 0)
    items["6a"] = ("Outpatient psychological therapy. Development clinics per instrument: "
                   + ", ".join(f"{i} {p.get('clinics', 0)}" for i, p in pop.items())
                   + f"; evaluation clinics: {clinics_eval}. Locations are not recorded in "
                   "the data contract.")
    items["6b"] = ("Adults with at least two scores on the instrument; the not-on-track risk "
                   "is defined for clients whose intake is in the clinical range (below it: "
                   "monitored for reliable deterioration only). Clients still in care "
                   "(end_status ongoing) have no outcome.")
    items["6c"] = _na("treatments are not part of the data contract; clients received "
                      "psychotherapy as usual in their clinic (adaptations, when recorded, are "
                      "used by the suggestion model only).")
    items["7"] = ("Every file passes the contract's one rule set (types, ranges per "
                  "instrument, duplicates, session order; each problem named with its row and "
                  "rule) before anything is computed; features are computed point in time, "
                  "from what was known at each session (docs/features.md).")
    items["8a"] = (_outcome(card) + " Time horizon: the end of care; "
                   "assessed from the client's own questionnaire scores (first vs last).")
    items["8b"] = ("Self-report questionnaires completed by the client; no clinician "
                   "assessed the outcome.")
    items["8c"] = ("Not blinded: the outcome and the predictors come from the same "
                   "questionnaire series (the predictors only from sessions up to the "
                   "assessed one, the outcome from the last score).")
    items["9a"] = ("Chosen from the routine outcome monitoring literature before modelling "
                   "(severity, early change, variability, alliance, attendance), not by "
                   "data-driven selection: " + ", ".join(f"`{f}`" for f in FEATURE_NAMES) + ".")
    items["9b"] = ("Point-in-time features as of each session 1-6 (docs/features.md): only "
                   "scores, alliance ratings and dates known at that session.")
    items["9c"] = "Self-report by the client; predictors were not blinded to anything."
    ss_eval = [c for e in ev.instruments.values() for c in e.sample_size] or ev.sample_size
    items["10"] = ("Development: every eligible client of the cohort (no sample-size "
                   "calculation; the intervals in items 21 and 23a show the precision "
                   "reached). Evaluation (Riley et al. BMJ 2024;384:e074821):\n\n"
                   + (_sample_size_md(ss_eval) or "no outcome to size."))
    items["11"] = ("Missed sessions are not imputed: features use the scores that exist "
                   "(LightGBM routes missing values natively). Clients with fewer than two "
                   "scores have no outcome and are excluded from risk evaluation; item "
                   "answers and alliance ratings are optional.")
    items["12a"] = ("Development: 15% of clients (a salted hash of the client id) held out "
                    "for the promotion gate; the rest cross-validated in 5 folds grouped by "
                    "client; leave-clinics-out folds where there are three clinics or more. "
                    "Evaluation: every client of the evaluation cohort, the registered model "
                    "unchanged.")
    items["12b"] = ("No transformation for the trees; monotone constraints where the "
                    "direction is known (a worse latest score never lowers the risk); the "
                    "logistic fallback standardises its inputs.")
    params = {k: v for k, v in rec.params.items() if not k.startswith(tuple(instruments))}
    items["12c"] = ("LightGBM gradient boosting with Platt calibration on out-of-fold "
                    "predictions, compared with logistic regression, nearest neighbours (Lutz "
                    "et al. 2005) and the expected-response rule (Finch et al. 2001). "
                    "Parameters logged: "
                    + (", ".join(f"`{k}={v}`" for k, v in sorted(params.items()))
                       if params else "none found in the run") + ".")
    items["12d"] = ("Leave-clinics-out cross-validation (item 23b); subgroup figures by "
                    "clinic (item 23a).")
    items["12e"] = ("AUROC (discrimination), Brier score, calibration slope and "
                    "calibration-in-the-large (Van Calster et al. 2019), calibration plots, "
                    "decision curves (Vickers & Elkin 2006), and the flag policy's cumulative "
                    "figures: share of eventual reliable deteriorators, non-improvers and "
                    "improvers flagged by session 3 (docs/flag.md); 95% client-bootstrap "
                    "intervals.")
    recal = [e for e in ev.instruments.values() if e.recalibration is not None]
    items["12f"] = ("Logistic recalibration (intercept and slope) on the evaluation cohort, "
                    "judged in folds grouped by client (item 24)." if recal else
                    "No updating in this report (`ontrack evaluate --recalibrate` fits a "
                    "logistic recalibration on the cohort).")
    items["12g"] = ("The registered bundle scored the evaluation cohort's point-in-time rows "
                    "with the same code the service uses; nothing was refitted.")
    items["13"] = ("None: no resampling or weighting, so the predicted risks keep their "
                   "calibration; the share not improved was "
                   + ", ".join(f"{i} {p.get('failure_rate', float('nan')):.2f}"
                               for i, p in pop.items()) + " in development.")
    items["14"] = ("Discrimination, calibration-in-the-large, flag rate, sensitivity and "
                   "false-alarm rate per age band, gender, diagnosis group and clinic "
                   "(fairlearn MetricFrame), with bootstrap intervals; cells under 10 clients "
                   "suppressed; the largest gap per measure named (item 23a).")
    items["15"] = _output_item(card)
    items["16"] = _differences(pop, ev)
    items["17"] = _na("the study's authors must state ethical approval and consent; "
                      + ("the development data are simulated (no participants)."
                         if simulated else "this report cannot know it."))
    items["18a"] = _na("to be stated by the study's authors.")
    items["18b"] = _na("to be stated by the study's authors.")
    items["18c"] = _na("no protocol is generated by OnTrack; the study's authors should link "
                       "theirs.")
    items["18d"] = _na("to be stated by the study's authors (e.g. a registry entry).")
    items["18e"] = ("Simulated development data are reproducible from the seed "
                     f"({prov.get('seed', '?')}) with `ontrack simulate`." if simulated else
                     _na("the data owner decides; OnTrack logs only digests."))
    items["18f"] = (f"OnTrack is open source; the model was trained at commit "
                    f"`{prov.get('git_commit', 'unknown')}`.")
    items["19"] = _na("to be stated by the study's authors.")
    items["20a"] = _flow(rec, comparisons, ev)
    items["20b"] = _characteristics(pop, cohort)
    items["20c"] = items["16"]
    items["21"] = "\n\n".join(
        f"**{i}** (cross-validated, development clients; n and events per session):\n\n"
        + _performance_table(f, _served(f)) for i, f in comparisons.items()) or _na(
        "the training run's comparison tables were not found.")
    items["22"] = (f"The full model is the registered MLflow model `{rec.uri}` (a pyfunc: "
                   "`mlflow.pyfunc.load_model(...).predict(sessions)`), served by "
                   "`ontrack serve` (`POST /v1/assess`); trees are not printable. "
                   + (f"Logged model `{rec.model_id}`." if rec.model_id else ""))
    perf = []
    for i, f in comparisons.items():
        perf.append(f"**Development, {i}** (all compared models, session 3, "
                    "cross-validated):\n\n"
                    + _tidy(f[f["session"] == 3][["label", "n", "events", "auroc", "auroc_lo",
                                                  "auroc_hi", "brier", "brier_lo", "brier_hi",
                                                  "cal_slope", "cal_slope_lo",
                                                  "cal_slope_hi"]]))
        for key in (f"{i}/roc_s3", f"{i}/calibration_s3", f"{i}/decision_curve_s3",
                    f"{i}/flag_policy_s3"):
            img = _plot(rec, key, out, files)
            if img:
                perf.append(img)
        if i in flags_dev:
            perf.append(f"**Flag policies on the promotion hold-out, {i}:**\n\n"
                        + _flag_table(flags_dev[i]))
        for name, title in (("subgroups", "Subgroups, risk as of session 3 "
                                          "(cross-validated)"),
                            ("subgroups_gaps", "Largest subgroup gaps, risk"),
                            ("flag_subgroups", "Subgroups, the flag policy by session 3 "
                                               "(promotion hold-out)"),
                            ("flag_subgroups_gaps", "Largest subgroup gaps, flag policy"),
                            ("band_coverage", "Coverage of the expected-course bands "
                                              "(promotion hold-out)")):
            t = rec.tables.get(f"{name}_{i}")
            if t is not None:
                perf.append(f"**{title}, {i}:**\n\n" + _tidy(t, 2 if "subgroups" in name
                                                              else 3))
    perf.append("**External evaluation:**\n\n" + eval_md)
    items["23a"] = "\n\n".join(perf)
    items["23b"] = ("\n\n".join(f"**Leave-clinics-out cross-validation, {i}** (session "
                                "3):\n\n" + _tidy(f[["label", "n", "events", "auroc",
                                                       "auroc_lo", "auroc_hi", "brier",
                                                       "cal_slope", "cal_slope_lo",
                                                       "cal_slope_hi"]])
                                for i, f in lco.items())
                    or _na("fewer than three clinics in the development data."))
    items["24"] = ("\n\n".join(f"**{e.instrument}:**\n\n" + _markdown(e.recalibration)
                               for e in recal) if recal else
                   _na("no updating was done (item 12f)."))
    items["25"] = _interpretation(s3, ev_s3, ev)
    limits = list(card.get("limits", []))
    for c in ss_eval:
        if not c.meets:
            limits.append(c.sentence)
    items["26"] = "\n".join(f"- {x}" for x in limits) or _na("no limits were logged.")
    items["27a"] = ("Input failing the contract is refused with the field and rule named; a "
                    "client outside the training population (intake range, sessions) is "
                    "marked out of population and the risk says it is an extrapolation; a "
                    "risk item raises a safety flag whatever the model says.")
    items["27b"] = ("Therapists see the flag with its drivers in clinical language and "
                    "suggestions as prompts for a conversation (docs/webview.md); no "
                    "statistical expertise is needed, clinical judgement is.")
    items["27c"] = ("External validation on real clinics' data with `ontrack evaluate` "
                    "before use; a study of whether the flags change outcomes.")
    return items


def _outcome(card: dict) -> str:
    """The card's outcome definition in words (its first clause names the target's code)."""
    text = card.get("outcome_definition", "")
    for code in ("failed_nhs = ", "failed = "):
        if text.startswith(code):
            return "not reliably improved by the end of care: " + text.removeprefix(code)
    return text


def _s3(frame: pd.DataFrame | None, served: str | None = None) -> dict | None:
    if frame is None or not len(frame):
        return None
    m = served or _served(frame)
    f = frame[(frame["model"] == m) & (frame["session"] == AT_SESSION)]
    return f.iloc[0].to_dict() if len(f) else None


def _dates(cohort: Cohort) -> tuple[str, str] | None:
    if "date" not in cohort.sessions.columns:
        return None
    d = pd.to_datetime(cohort.sessions["date"], errors="coerce").dropna()
    return (d.min().date().isoformat(), d.max().date().isoformat()) if len(d) else None


def _output_item(card: dict) -> str:
    lines = ["A probability of not reliably improving by the end of care and of ending care "
             "early, per client and session, with its drivers (SHAP, in words); the "
             "not-on-track flag is a policy over the client's history (no flag at intake; "
             "opens when the risk reaches the entry threshold, the signal is red twice or "
             "the score reliably deteriorates; clears below a lower exit threshold)."]
    for inst, v in card.get("validation", {}).items():
        fp = v.get("flag_policy")
        if fp:
            lines.append(f"- {inst}: entry {fp['entry_threshold']:.3f}, exit "
                         f"{fp['exit_threshold']:.3f}, chosen for a budget of "
                         f"{100 * fp['budget']:.0f}% of eventual reliable improvers flagged by "
                         "session 3 on out-of-fold risks.")
    return "\n".join(lines)


def _differences(pop: dict, ev: Evaluation) -> str:
    rows = []
    for inst, p in pop.items():
        e = ev.instruments.get(inst)
        row = {"instrument": inst, "development clients": p.get("n_clients"),
               "development share not improved": _fmt(p.get("failure_rate"), 2),
               "development intake range": "–".join(_fmt(x, 0) for x in p.get("intake_range",
                                                                             ()))}
        if e is not None:
            intake = e.rows.X["intake_score"].to_numpy(float)
            row.update({"evaluation clients": e.n_clients,
                        "evaluation share not improved": _fmt(
                            e.events / e.n_known if e.n_known else float("nan"), 2),
                        "evaluation intake range": f"{np.nanmin(intake):.0f}–"
                                                   f"{np.nanmax(intake):.0f}"})
        else:
            row.update({"evaluation clients": 0, "evaluation share not improved": "—",
                        "evaluation intake range": "—"})
        rows.append(row)
    text = _markdown(pd.DataFrame(rows)) if rows else ""
    for inst, why in ev.not_covered.items():
        text += f"\n\n{inst}: {why}."
    return text or _na("no development population was logged.")


def _flow(rec: ModelRecord, comparisons: dict, ev: Evaluation) -> str:
    lines = []
    n = rec.card.get("provenance", {}).get("n_clients")
    if n:
        lines.append(f"Development cohort: {n} clients; 15% held out for the gate.")
    for inst, p in rec.card.get("training_population", {}).items():
        lines.append(f"- {inst}: {p.get('n_clients')} development clients with scores, "
                     f"{p.get('n_rows')} client-session rows (sessions "
                     f"{p.get('sessions')}).")
    for inst, e in ev.instruments.items():
        lines.append(f"- Evaluation, {inst}: {e.n_clients} clients scored, {e.n_known} with "
                     f"a known outcome as of session {AT_SESSION}, {e.events} not reliably "
                     "improved.")
    for inst, why in ev.not_covered.items():
        lines.append(f"- Evaluation, {inst}: not scored ({why}).")
    return "\n".join(lines) or _na("no counts were logged.")


def _characteristics(pop: dict, cohort: Cohort) -> str:
    lines = []
    for inst, p in pop.items():
        levels = "; ".join(f"{k}: {', '.join(v)}" for k, v in
                           p.get("covariate_levels", {}).items())
        lines.append(f"- Development, {inst}: intake {p.get('intake_range')}, share not "
                     f"improved {_fmt(p.get('failure_rate'), 2)}, dropout "
                     f"{_fmt(p.get('dropout_rate'), 2)}; covariates {levels or 'none'}.")
    s = cohort.sessions
    per = s.groupby(["client_id", "instrument"]).size()
    lines.append(f"- Evaluation: {cohort.n_clients} clients; instruments "
                 f"{', '.join(sorted(s['instrument'].astype(str).unique()))}; median "
                 f"{float(per.median()):.0f} scored sessions per client and instrument.")
    if len(cohort.clients):
        for c in ("age_band", "gender", "diagnosis_group"):
            if c in cohort.clients.columns:
                counts = cohort.clients[c].value_counts()
                shown = ", ".join(f"{k} {v}" if v >= 10 else f"{k} <10"
                                  for k, v in counts.items())
                lines.append(f"  - {c}: {shown}")
    return "\n".join(lines)


def _interpretation(s3: dict, ev_s3: dict, ev: Evaluation) -> str:
    lines = []
    for inst, r in s3.items():
        e = ev_s3.get(inst)
        if r and e:
            lines.append(f"{inst}: AUROC as of session 3 {r['auroc']:.3f} in development and "
                         f"{e['auroc']:.3f} [{e['auroc_lo']:.3f}, {e['auroc_hi']:.3f}] on the "
                         "evaluation cohort; calibration slope there "
                         f"{_ci(e, 'cal_slope', 2)} (1 is ideal; below 1, risks too "
                         "extreme).")
        elif r:
            lines.append(f"{inst}: developed (AUROC as of session 3 {r['auroc']:.3f}); "
                         "not evaluated on this cohort.")
    for e in ev.instruments.values():
        if e.flags is not None:
            lines.append(f"{e.instrument}: {e.flags.summary}.")
        if e.fairness is not None:
            lines += [x for x in e.fairness.sentences() if x.startswith(_KEY_GAPS)]
    lines.append("The flag is a prompt for a conversation, never a verdict; simulated data "
                 "are not evidence of clinical performance.")
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
def render_markdown(rec: ModelRecord, items: dict[str, str]) -> str:
    title = items["1"]
    lines = [f"# TRIPOD+AI report: {_registered_name(rec.uri)} version "
             f"{rec.version or 'unregistered'}", "",
             f"Generated by `ontrack report` on "
             f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Items follow TRIPOD+AI "
             "(Collins et al. BMJ 2024;385:e078378); an item OnTrack cannot fill says *Not "
             "available* and why.", "", f"> {title}", ""]
    section = None
    groups = {"1": "Title and abstract", "3a": "Introduction", "5a": "Methods",
              "18a": "Open science", "19": "Patient and public involvement",
              "20a": "Results", "25": "Discussion"}
    for item, topic, asks in ITEMS:
        if item in groups and groups[item] != section:
            section = groups[item]
            lines += [f"## {section}", ""]
        lines += [f"### {item}. {topic}", "", f"*TRIPOD+AI asks:* {asks}.", "",
                  items.get(item) or _na("nothing was logged for this item."), ""]
    return "\n".join(lines)


def to_html(markdown: str, base: Path, title: str) -> str:
    """One self-contained HTML file: tables styled, images embedded as data URIs."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def embed(m: re.Match) -> str:
        path = base / m.group(1)
        if not path.exists():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
             "padding:0 1rem;line-height:1.45;color:#1a1a1a}table{border-collapse:collapse;"
             "font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.2rem .4rem;"
             "text-align:left}th{background:#f3f3f3}img{max-width:100%}h3{margin-top:2rem;"
             "border-top:1px solid #eee;padding-top:.6rem}blockquote{border-left:4px solid "
             "#888;margin-left:0;padding-left:1rem}")
    from html import escape

    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>"
            f"{escape(title)}</title><style>{style}</style></head><body>{body}</body></html>")


@dataclass
class ReportPaths:
    folder: Path
    markdown: Path
    html: Path | None
    evaluation: Evaluation
    missing: list[str]
    model_id: str | None


def write_report(model_uri: str, cohort: Cohort, data_path: Path | None, out: Path,
                 formats=("md", "html"), n_boot: int = 200, recalibrate: bool = False,
                 log_to_model: bool = True, progress=None) -> ReportPaths:
    """The whole report for ``model_uri`` on a validated cohort (read from ``data_path``;
    see module docstring). Raises `LookupError` for a model the registry does not have."""
    from training.external import external_validation
    from training.registry import load_bundle
    from training.tracking import EXPERIMENT, configure

    configure(EXPERIMENT)
    bundle = load_bundle(model_uri)
    final = Path(out)
    # built in a side folder and moved into place at the end: never a half-written report
    out = final.parent / f".{final.name}.partial"
    _remove(out)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    progress = progress or (lambda _msg: None)
    progress("reading the model's MLflow run")
    rec = model_record(model_uri, bundle, out / "_work")
    ev = external_validation(model_uri, cohort, data_path, n_boot=n_boot,
                             recalibrate=recalibrate, bundle=bundle, progress=progress)
    progress("writing the report")
    items = build_items(rec, ev, cohort, out, files)
    md = render_markdown(rec, items)
    missing = missing_items(md)
    mpath = out / "report.md"
    mpath.write_text(md)
    hpath = None
    if "html" in formats:
        hpath = out / "report.html"
        hpath.write_text(to_html(md, out, f"TRIPOD+AI report: {rec.uri}"))
    _remove(out / "_work")
    _remove(final)
    out.rename(final)
    mpath = final / mpath.name
    hpath = final / hpath.name if hpath else None
    if log_to_model and rec.model_id:
        MlflowClient().log_model_artifacts(rec.model_id, str(final), artifact_path="reports")
    return ReportPaths(final, mpath, hpath, ev, missing, rec.model_id)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def summary_json(paths: ReportPaths) -> str:
    return json.dumps({"markdown": str(paths.markdown),
                       "html": str(paths.html) if paths.html else None,
                       "missing_items": paths.missing, "model_id": paths.model_id})
