"""Training, comparison, MLflow round trip, the promotion gate and small-data behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.contract import load_cohort
from tests.conftest import small_other_instrument_cohort
from training.cli import app
from training.dataset import build_rows, holdout_mask
from training.pipeline import Settings, TooLittleDataError, cross_validate

runner = CliRunner()
FAST = Settings(seed=0, n_folds=3, n_neighbors=30, gbm={"n_estimators": 60})


@pytest.fixture(autouse=True)
def _this_sessions_store(mlflow_store, monkeypatch):
    """Point MLflow at this test session's store before every test: other test modules in
    the same worker (service, web view) set the process-wide tracking URI to their own, and
    mlflow.set_tracking_uri writes it into MLFLOW_TRACKING_URI, which would win."""
    from training.tracking import configure

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure()


@pytest.fixture(scope="module")
def trained(mlflow_store, sim_cohort_dir):
    """Train once (real labels) -> version 1; then with permuted labels (refused)."""
    from training.registry import champion_version, set_champion
    from training.tracking import configure
    from training.train import train

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set up before `_this_sessions_store`
    configure()
    cohort = load_cohort(sim_cohort_dir)
    first = train(cohort, sim_cohort_dir, FAST, instruments=["PHQ-9"], n_boot=30)
    if champion_version() is None:  # the small cohort may not clear the gate: force it here
        set_champion(first.version)
    champion_before = champion_version()
    from mlflow.tracking import MlflowClient

    from models.base import CalibrationError

    versions_before = len(MlflowClient().search_model_versions("name='ontrack-not-risk'"))
    with pytest.raises(CalibrationError) as refused:
        train(cohort, sim_cohort_dir, FAST, instruments=["PHQ-9"], n_boot=30,
              permute_labels=True)
    return {"cohort": cohort, "first": first, "refused": refused.value,
            "champion_before": champion_before, "versions_before": versions_before}


def test_folds_are_disjoint_by_client(sim_cohort_dir):
    cohort = load_cohort(sim_cohort_dir)
    rows = build_rows(cohort, "PHQ-9")
    oof = cross_validate(rows, "failed", ["expected_response"], FAST, None)
    fold_of = pd.DataFrame({"id": rows.keys["client_id"], "fold": oof["fold"]})
    fold_of = fold_of[fold_of["fold"] >= 0]
    assert (fold_of.groupby("id")["fold"].nunique() == 1).all()
    assert fold_of["fold"].nunique() == 3


def test_holdout_is_client_level_and_deterministic():
    ids = pd.Series([f"C{i}" for i in range(2000)]).repeat(3)
    a, b = holdout_mask(ids), holdout_mask(ids.sample(frac=1, random_state=1).sort_index())
    assert np.array_equal(a, b)
    assert 0.1 < a.mean() < 0.2
    assert pd.Series(a).groupby(ids.to_numpy()).nunique().max() == 1


def test_comparison_has_every_model_and_the_oracle(trained):
    report = trained["first"].reports["PHQ-9"]
    s3 = report.comparison[report.comparison["session"] == 3]
    assert {"expected_response", "neighbours", "gbm", "logistic", "oracle"} <= set(s3["model"])
    for col in ("auroc_lo", "auroc_hi", "brier_lo", "cal_slope_lo"):
        assert s3[col].notna().all()
    assert (s3["auroc_lo"] <= s3["auroc"]).all() and (s3["auroc"] <= s3["auroc_hi"]).all()


def test_permuted_labels_are_refused_and_the_champion_stays(trained):
    """Negative control: with outcomes shuffled between clients the risk model's out-of-fold
    logits do not rank the outcome; its calibration fails, so nothing is registered."""
    from mlflow.tracking import MlflowClient

    from training.registry import champion_version

    assert "Platt slope" in str(trained["refused"]) and "refused" in str(trained["refused"])
    assert champion_version() == trained["champion_before"]
    versions = MlflowClient().search_model_versions("name='ontrack-not-risk'")
    assert len(versions) == trained["versions_before"]


def test_champion_loads_in_a_fresh_process_outside_the_repo(trained, tmp_path):
    cohort = trained["cohort"]
    ids = cohort.sessions["client_id"].unique()[:5]
    sample = cohort.sessions[cohort.sessions["client_id"].isin(ids)]
    sample[["client_id", "session", "instrument", "score"]].to_csv(tmp_path / "in.csv",
                                                                   index=False)
    code = textwrap.dedent("""
        import sys, mlflow, pandas as pd
        m = mlflow.pyfunc.load_model("models:/ontrack-not-risk@champion")
        out = m.predict(pd.read_csv("in.csv", dtype={"client_id": str}))
        assert len(out) == 5 and out["p_failure"].dropna().between(0, 1).all(), out
        assert out["p_failure"].notna().any(), out  # below-cut-off intakes have no risk
        assert out["flag_state"].isin(["new", "continuing", "cleared", "none"]).all(), out
        print("OK", len(out))
    """)
    from training.tracking import tracking_uri

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 5" in proc.stdout


def test_the_registered_pyfunc_takes_the_services_input_and_returns_its_assessment(trained):
    """MLflow's own serving path: item answers are declared in the signature (not dropped),
    so a risk item raises the safety flag; output="assessment" is the service's assessment;
    a broken row is refused with the contract's rule."""
    import json

    import mlflow

    from features.contract import InvalidDataError
    from training.registry import load_bundle

    s = trained["cohort"].sessions
    ids = s["client_id"].unique()[:4]
    x = s[s["client_id"].isin(ids)].reset_index(drop=True)
    x = x.drop(columns=[c for c in x.columns if c.startswith("item_")])
    phq = x["instrument"] == "PHQ-9"
    x["item_9"] = np.where(phq, 0.0, np.nan)
    x.loc[phq & (x["client_id"] == ids[0]), "item_9"] = 2.0
    m = mlflow.pyfunc.load_model("models:/ontrack-not-risk@champion")
    out = m.predict(x)
    by_id = out.set_index("client_id")["safety"]
    assert by_id[ids[0]] == "flag"
    assert (by_id.drop(ids[0]) == "not_endorsed").all()
    full = m.predict(x, params={"output": "assessment"})
    bundle = load_bundle("models:/ontrack-not-risk@champion")
    from features.contract import validate_frames

    typed, _ = validate_frames(x)
    direct = [json.loads(a.model_dump_json()) for a in bundle.assess(typed.sessions)]
    served = [json.loads(j) for j in full["assessment"]]
    for a, b in zip(direct, served, strict=True):
        a["risk"] and a["risk"].pop("model_version")  # the loader's label, not the model
        b["risk"] and b["risk"].pop("model_version")
    assert served == direct
    bad = x.copy()
    bad.loc[0, "score"] = 99.0
    with pytest.raises(InvalidDataError, match="score_out_of_range"):
        m.predict(bad)


def test_the_logged_model_pins_the_lock_files_versions(trained):
    import tomllib

    import mlflow

    from models.registry import REPO_ROOT, model_requirements

    path = mlflow.pyfunc.get_model_dependencies("models:/ontrack-not-risk@champion")
    logged = [ln.strip() for ln in open(path) if "==" in ln]
    lock = {p["name"]: p["version"] for p in
            tomllib.loads((REPO_ROOT / "uv.lock").read_text())["package"] if "version" in p}
    assert set(model_requirements()) <= set(logged)
    for pin in model_requirements():
        name, version = pin.split("==")
        assert lock[name] == version


def test_renaming_ids_changes_no_prediction(trained):
    from training.registry import load_bundle

    bundle = load_bundle("models:/ontrack-not-risk@champion")
    s = trained["cohort"].sessions
    s = s[s["client_id"].isin(s["client_id"].unique()[:40])]
    renamed = s.assign(client_id="X" + s["client_id"].str[::-1])
    a = [np.nan if x.risk is None else x.risk.p_failure for x in bundle.assess(s)]
    b = [np.nan if x.risk is None else x.risk.p_failure for x in bundle.assess(renamed)]
    assert np.isfinite(a).sum() > 20
    assert np.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    fa = [(x.flag.state, x.flag.opened_session) for x in bundle.assess(s)]
    fb = [(x.flag.state, x.flag.opened_session) for x in bundle.assess(renamed)]
    assert fa == fb


def test_worse_latest_score_never_lowers_risk(trained):
    from training.registry import load_bundle

    bundle = load_bundle("models:/ontrack-not-risk@champion")
    s = trained["cohort"].sessions
    ids = s["client_id"].unique()[:60]
    s = s[s["client_id"].isin(ids) & (s["instrument"] == "PHQ-9")].copy()
    # a worse LATEST score with the intake held fixed: clients with two or more scores who
    # started in the clinical range (others have no risk: their outcome is not defined)
    s = s[s.groupby("client_id")["session"].transform("size") >= 2]
    first = s.sort_values("session").groupby("client_id")["score"].transform("first")
    s = s[first.reindex(s.index) >= 10]
    base = np.array([x.risk.p_failure for x in bundle.assess(s)])
    last = s.groupby("client_id")["session"].transform("max") == s["session"]
    worse = s.copy()
    worse.loc[last, "score"] = np.minimum(worse.loc[last, "score"] + 3, 27)
    after = np.array([x.risk.p_failure for x in bundle.assess(worse)])
    assert (after >= base - 1e-12).all()


def test_small_cohort_trains_with_wide_intervals_and_is_not_promoted(mlflow_store, tmp_path):
    from training.registry import champion_version

    before = champion_version()
    path = small_other_instrument_cohort(tmp_path / "small", 100)
    result = runner.invoke(app, ["train", "--data", str(path), "--folds", "3",
                                 "--bootstrap", "30"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "not promoted" in result.output
    assert champion_version() == before
    assert "gradient boosting skipped" in result.output


def test_below_the_minimum_exits_non_zero_with_a_clear_message(mlflow_store, tmp_path):
    path = small_other_instrument_cohort(tmp_path / "tiny", 30)
    result = runner.invoke(app, ["train", "--data", str(path)], terminal_width=200)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "at least 50 clients" in out and "Traceback" not in out


def test_too_little_data_error_names_the_numbers(tmp_path):
    from training.train import train

    cohort = load_cohort(small_other_instrument_cohort(tmp_path / "t", 20))
    with pytest.raises(TooLittleDataError, match=r"\d+ clients"):
        train(cohort, None, FAST, register_model=False)


def test_compare_prints_a_leaderboard_and_writes_a_report(trained, tmp_path):
    result = runner.invoke(app, ["compare", "--run-id", trained["first"].run_id,
                                 "--out", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "Leaderboard" in out and "LightGBM" in out, result.output[-2000:]
    report = next(tmp_path.glob("*/comparison.md")).read_text()
    assert "## PHQ-9" in report and "oracle" in report
    assert "![roc_s3]" in report and "![flag_policy_s3]" in report
    assert "Flag policies replayed" in report and "deteriorators_s3" in report


def test_external_validation_of_the_champion_without_retraining(trained, tmp_path):
    from training.simulate import simulate_cohort

    other = tmp_path / "other"
    simulate_cohort(600, seed=99, oracle_clients=0).write(other, "csv")
    result = runner.invoke(app, ["evaluate", "--model", "models:/ontrack-not-risk@champion",
                                 "--data", str(other), "--bootstrap", "30"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "external validation" in result.output and "AUROC" in result.output
    out = " ".join(result.output.split())
    assert "flag policies replayed" in out and "learned policy:" in out, out[-3000:]


def test_flag_policies_are_replayed_on_held_out_clients_and_logged(trained):
    from mlflow.tracking import MlflowClient

    r = trained["first"].reports["PHQ-9"]
    t = r.flags.table.set_index("policy")
    assert {"learned", "per_row", "lambert", "oracle"} <= set(t.index)
    # the per-session threshold flags most eventual improvers by session 3; the policy not
    assert t.loc["per_row", "improvers_s3"] > t.loc["learned", "improvers_s3"] + 0.2
    for col in ("deteriorators_s3", "improvers_s3", "ppv_s3", "flip_rate"):
        assert t.loc["learned", f"{col}_lo"] <= t.loc["learned", col] <= t.loc["learned",
                                                                               f"{col}_hi"]
    metrics = MlflowClient().get_run(trained["first"].run_id).data.metrics
    assert "PHQ-9_flag_learned_deteriorators_s3" in metrics
    assert "PHQ-9_flag_oracle_improvers_s3" in metrics  # the ceiling, on simulated data


def test_nhs_paired_target_is_a_training_choice(sim_cohort_dir):
    """--target failed_nhs: the PHQ-9 model predicts the NHS paired outcome; rows are the same,
    the labels differ where GAD-7 decides, and the flag policy is evaluated on it too."""
    from dataclasses import replace

    from training.train import train

    cohort = load_cohort(sim_cohort_dir)
    own = build_rows(cohort, "PHQ-9")
    nhs = build_rows(cohort, "PHQ-9", target="failed_nhs")
    assert own.keys.equals(nhs.keys)
    both = np.isfinite(own.failed) & np.isfinite(nhs.failed)
    assert (own.failed[both] != nhs.failed[both]).any()
    result = train(cohort, sim_cohort_dir, replace(FAST, target="failed_nhs"),
                   instruments=["PHQ-9"], n_boot=20, register_model=False)
    flags = result.reports["PHQ-9"].flags
    assert flags is not None and "learned" in set(flags.table["policy"])
    with pytest.raises(ValueError, match="PHQ-9 or GAD-7"):
        build_rows(cohort, "ORS", target="failed_nhs")


def test_report_has_every_tripod_ai_item_and_is_logged_on_the_model(trained, tmp_path):
    from mlflow.tracking import MlflowClient

    from training.registry import logged_model_id
    from training.simulate import simulate_cohort
    from training.tripod import ITEMS, NOT_AVAILABLE, missing_items

    other = tmp_path / "other"
    simulate_cohort(600, seed=99, oracle_clients=0).write(other, "csv")
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", "--model", "models:/ontrack-not-risk@champion",
                                 "--data", str(other), "--out", str(out), "--bootstrap", "30"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert missing_items(md) == []
    for item, topic, _ in ITEMS:
        assert f"### {item}. {topic}" in md
    # the check fails when an item's section is gone
    cut = md.replace("### 14. Fairness", "### 14x. Fairness")
    assert missing_items(cut) == ["14"]
    # filled from the run and the evaluation: intervals, plots, the flag policy, subgroups
    assert "External evaluation" in md and "AUROC" in md and "flag policies replayed" in md
    assert "![PHQ-9 calibration s3]" in md and "Largest" in md
    assert NOT_AVAILABLE + " the study's authors must state ethical approval" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html
    model_id = logged_model_id("models:/ontrack-not-risk@champion")
    names = {a.path for a in MlflowClient().list_logged_model_artifacts(model_id, "reports")}
    assert "reports/report.md" in names and "reports/report.html" in names


def test_the_champions_record_carries_its_metrics_with_the_dataset_digest(trained):
    """MLflow 3: the headline metrics are on the logged model, tied to the dataset they were
    measured on; the registered version says what the gate decided; compare searches the
    logged models."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from training.pipeline import split_for_gate
    from training.registry import logged_model_id
    from training.report import logged_models
    from training.tracking import evaluation_dataset

    cohort = trained["cohort"]
    version = trained["first"].version
    model_id = logged_model_id(f"models:/ontrack-not-risk/{version}")
    champion = mlflow.get_logged_model(logged_model_id("models:/ontrack-not-risk@champion"))
    assert {m.key for m in champion.metrics if m.dataset_digest} >= {
        "PHQ-9_auroc_s3", "PHQ-9_auroc_s3_lo", "PHQ-9_auroc_s3_hi", "gate_auroc_diff"}
    lm = mlflow.get_logged_model(model_id)
    dev, hold = split_for_gate(build_rows(cohort, "PHQ-9"))
    source = str(trained["cohort"].source) if trained["cohort"].source else "in-memory"
    dev_digest = evaluation_dataset({"PHQ-9": dev}, "x", source).digest
    hold_digest = evaluation_dataset({"PHQ-9": hold}, "x", source).digest
    by_key = {(m.key, m.dataset_digest): m.value for m in lm.metrics}
    r = trained["first"].reports["PHQ-9"].comparison
    s3 = r[(r["model"] == "gbm") & (r["session"] == 3)].iloc[0]
    assert by_key[("PHQ-9_auroc_s3", dev_digest)] == pytest.approx(s3["auroc"])
    assert ("gate_auroc_diff", hold_digest) in by_key
    assert ("PHQ-9_flag_improvers_s3", hold_digest) in by_key
    assert lm.params["flag_budget"] == "0.3" and lm.tags["instruments"] == "PHQ-9"
    mv = MlflowClient().get_model_version("ontrack-not-risk", version)
    assert mv.tags["gate.reason"] == trained["first"].decision.reason
    assert "AUROC as of session 3" in mv.description
    models = logged_models(MlflowClient())
    assert model_id in set(models["model_id"])


def test_the_subgroup_tables_are_mlflow_artifacts_of_the_run(trained):
    """The fairness tables (risk and the flag policy, with their largest gaps) are logged on
    the training run as MLflow tables, and hold what the training report holds."""
    import mlflow
    from mlflow.tracking import MlflowClient

    version = trained["first"].version
    run_id = MlflowClient().get_model_version("ontrack-not-risk", version).run_id
    report = trained["first"].reports["PHQ-9"]
    for name, res in (("subgroups", report.subgroups), ("flag_subgroups", report.flag_subgroups)):
        assert res is not None, name
        for suffix, frame in (("", res.table), ("_gaps", res.gaps)):
            logged = mlflow.load_table(f"tables/{name}{suffix}_PHQ-9.json", run_ids=[run_id])
            assert len(logged) == len(frame) > 0, (name, suffix)
            assert set(frame.columns) <= set(logged.columns) | {"run_id"}


def test_a_small_cohort_on_another_instrument_gets_a_too_small_section(trained, tmp_path):
    from pathlib import Path

    bdi = Path(__file__).parent / "fixtures" / "bdi_monthly"
    result = runner.invoke(app, ["evaluate", "--model", "models:/ontrack-not-risk@champion",
                                 "--data", str(bdi), "--bootstrap", "30",
                                 "--out", str(tmp_path / "ev")], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "BDI-II: not evaluated" in out and "Too small for" in out, out
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["report", "--model", "models:/ontrack-not-risk@champion",
                                 "--data", str(bdi), "--out", str(tmp_path / "r"),
                                 "--bootstrap", "30"], terminal_width=200)
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "### Too small, and not covered" in md and "Too small for" in md
    from training.tripod import missing_items

    assert missing_items(md) == []


def test_the_committed_example_report_has_every_item():
    """docs/reports/tripod_example: the `make run` champion's report, as committed."""
    from pathlib import Path

    from training.tripod import missing_items

    folder = Path(__file__).parent.parent / "docs" / "reports" / "tripod_example"
    md = (folder / "report.md").read_text()
    assert missing_items(md) == []
    assert "PHQ-9" in md and "GAD-7" in md  # both instruments of the make-run bundle
    for link in __import__("re").findall(r"\]\((report_files/[^)]+\.png)\)", md):
        assert (folder / link).exists(), link
    assert (folder / "report.html").stat().st_size > 100_000  # plots embedded
