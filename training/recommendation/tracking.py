"""The MLflow runs of the recommender evaluations: one for the exact simulated policy values
(`log_to_mlflow`), one for the doubly robust values on a cohort's records
(`log_off_policy_to_mlflow`).

Imports other training modules (`training.tracking`, `training.plots`, this package); mlflow
only inside the functions.
"""

from __future__ import annotations

import pandas as pd

from training.recommendation.offpolicy import OffPolicyReport
from training.recommendation.picks import CLAIMED, LEARNED, POLICY_LABELS, POLICY_SHORT
from training.recommendation.policy import EvaluationReport


def log_to_mlflow(report: EvaluationReport) -> str:
    """One MLflow run in the OnTrack experiment: ``policy_value_<policy>`` (reliable
    improvement), ``policy_value_recovery_<policy>``, ``top_is_best_<policy>``,
    ``policy_gap_closed[_recovery]_<learned or info_limit>``. Returns the run id."""
    import mlflow

    from training.tracking import configure, git_commit

    configure()
    with mlflow.start_run(run_name="recommend-eval") as run:
        mlflow.set_tags({"kind": "recommender-evaluation", "git_commit": git_commit(),
                         "design": report.design})
        mlflow.log_params({k: v for k, v in report.params.items() if k != "exact_on_known"})
        for r in report.results:
            mlflow.log_metric(f"policy_value_{r.policy}", r.value)
            mlflow.log_metric(f"policy_value_recovery_{r.policy}", r.recovery)
            mlflow.log_metric(f"top_is_best_{r.policy}", r.top_is_best)
            mlflow.log_metric(f"policy_value_diff_vs_rules_{r.policy}", r.diff_vs_rules)
        for name in (*LEARNED, "info_limit"):
            mlflow.log_metric(f"policy_gap_closed_{name}", report.gap_closed(name))
            mlflow.log_metric(f"policy_gap_closed_recovery_{name}",
                              report.gap_closed(name, outcome="recovery"))
            mlflow.log_metric(f"policy_gap_closed_vs_rules_without_checklist_{name}",
                              report.gap_closed(name, "rules_without_checklist"))
        for name in LEARNED:
            mlflow.log_metric(f"fallback_share_{name}", report.fallback_share[name])
        for name in (*LEARNED, CLAIMED):
            mlflow.log_metric(f"information_limit_share_{name}", report.limit_share(name))
        mlflow.log_metric("claim_share_r_learner", report.claim_share)
        for name, bias in report.dr_bias().items():
            mlflow.log_metric(f"dr_bias_{name}", bias)
        mlflow.log_metric("n_flagged", report.n_flagged)
        mlflow.log_table(pd.DataFrame([{
            "policy": r.policy, "label": POLICY_LABELS.get(r.policy, r.policy),
            "policy_value": r.value, "policy_value_recovery": r.recovery,
            "diff_vs_rules": r.diff_vs_rules,
            "diff_se": r.diff_se, "top_is_best": r.top_is_best, "n": r.n}
            for r in report.results]), artifact_file="tables/policy_values.json")
        from training.plots import close, policy_value_plot

        fig = policy_value_plot(report.results, POLICY_SHORT,
                                f"Policy values, {report.design}"[:110])
        mlflow.log_figure(fig, "plots/policy_values.png")
        close(fig)
        return run.info.run_id


def log_off_policy_to_mlflow(report: OffPolicyReport, source: str) -> str:
    """One MLflow run in the OnTrack experiment (tag ``kind=recommender-evaluation-
    observational``): ``policy_value_dr_<policy>``, ``policy_value_dr_se_<policy>``,
    ``policy_value_dr_diff_vs_rules_<policy>`` and the table ``tables/policy_values_dr.json``.
    Returns the run id."""
    import mlflow

    from training.tracking import configure, git_commit

    configure()
    with mlflow.start_run(run_name="recommend-eval-observational") as run:
        mlflow.set_tags({"kind": "recommender-evaluation-observational",
                         "git_commit": git_commit(), "design": report.design,
                         "data": source})
        mlflow.log_params(report.params)
        for r in report.results:
            mlflow.log_metric(f"policy_value_dr_{r.policy}", r.value)
            mlflow.log_metric(f"policy_value_dr_se_{r.policy}", r.se)
            mlflow.log_metric(f"policy_value_dr_diff_vs_rules_{r.policy}", r.diff_vs_rules)
        mlflow.log_metric("n_flagged", report.n_flagged)
        mlflow.log_metric("n_known_outcome", report.n_known)
        mlflow.log_table(pd.DataFrame([{
            "policy": r.policy, "label": POLICY_LABELS.get(r.policy, r.policy),
            "policy_value_dr": r.value, "se": r.se, "ipw": r.ipw,
            "diff_vs_rules": r.diff_vs_rules, "diff_se": r.diff_se, "matched": r.matched,
            "n": r.n} for r in report.results]), artifact_file="tables/policy_values_dr.json")
        return run.info.run_id
