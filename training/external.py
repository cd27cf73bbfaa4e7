"""External validation: a registered model scored on another cohort, without retraining: the
risk model's discrimination and calibration per session, and the flag policies replayed session
by session on every client of the cohort (docs/flag.md)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from features.contract import Cohort
from training.dataset import build_rows
from training.evaluate import comparison_table
from training.flag_eval import PolicyEvaluation, evaluate_on
from training.pipeline import read_truth
from training.registry import load_bundle
from training.tracking import EXPERIMENT, configure, data_sha256


def external_validation(model_uri: str, cohort: Cohort, data_path: Path | None,
                        n_boot: int = 200) -> tuple[dict[str, pd.DataFrame], str,
                                                    dict[str, PolicyEvaluation]]:
    configure(EXPERIMENT)
    bundle = load_bundle(model_uri)
    bundle.check_compatible()
    present = set(cohort.sessions["instrument"].unique())
    common = [i for i in bundle.instruments if i in present]
    if not common:
        raise ValueError(f"the model covers {', '.join(bundle.instruments)}; the cohort has "
                         f"{', '.join(sorted(present))}")
    frames, flags = {}, {}
    truth = read_truth(data_path)
    with mlflow.start_run(run_name=f"evaluate {model_uri}") as run:
        mlflow.set_tags({"kind": "external_validation", "model_uri": model_uri,
                         "model_version": bundle.version,
                         "provenance.data_sha256": data_sha256(data_path) if data_path else ""})
        for inst in common:
            rows = build_rows(cohort, inst, target=bundle.models[inst].target)
            m = bundle.models[inst].failure
            p = m.predict_proba(rows.X)[:, 1]
            oof = pd.DataFrame({"p_served": p, "flag_served": (p >= m.threshold_).astype(float)})
            frame = comparison_table(rows, oof, n_boot=n_boot)
            frames[inst] = frame
            for r in frame.to_dict("records"):
                for k in ("auroc", "brier", "cal_slope", "cal_intercept"):
                    mlflow.log_metric(f"{inst}_{k}_s{int(r['session'])}", float(r[k]))
            mlflow.log_table(frame, artifact_file=f"tables/external_{inst}.json")
            pe = evaluate_on(bundle.models[inst], cohort.sessions,
                             cohort.clients if len(cohort.clients) else None, truth,
                             n_boot=n_boot)
            if pe is not None:
                flags[inst] = pe
                mlflow.log_table(pe.table, artifact_file=f"tables/external_flags_{inst}.json")
                for r in pe.table.to_dict("records"):
                    for k in ("deteriorators_s3", "improvers_s3", "non_improvers_s3", "ppv_s3"):
                        mlflow.log_metric(f"{inst}_flag_{r['policy']}_{k}", float(r[k]))
        return frames, run.info.run_id, flags
