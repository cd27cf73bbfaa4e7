"""The bundle in the MLflow registry: log as a pyfunc, register, alias, and the promotion gate.

Every registration gets the alias ``candidate``. ``champion`` moves only through the gate:
challenger and champion are scored on the same held-out clients, which neither saw (the salted
hash hold-out of `training.dataset`). Promote only if the lower 95% bound of the AUROC
difference (challenger - champion) is above 0 and the Brier score is not worse by more than
0.005. With no champion yet, the challenger must beat the expected-response rule on the same
clients in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from features.pointintime import FEATURE_VERSION
from models.pyfunc import INPUT_COLUMNS, OPTIONAL_COLUMNS, OnTrackModel, signature
from models.registry import (
    load_bundle,  # noqa: F401  (the one loader, re-exported)
    model_requirements,
)
from training.dataset import TrainingRows
from training.metrics import METRICS, paired_difference
from training.tracking import MODEL_NAME, REPO_ROOT

BRIER_TOLERANCE = 0.005
MIN_GATE_CLIENTS = 100  # held-out clients with a known outcome needed to decide anything



def log_bundle(bundle, input_example: pd.DataFrame, params: dict | None = None,
               tags: dict | None = None) -> mlflow.models.model.ModelInfo:
    """Log the bundle as a pyfunc in the active run (signature + example from the cohort:
    every contract column it has, the item answers included). ``params`` and ``tags`` go on
    the logged model's own record (MLflow 3's LoggedModel), which `ontrack compare` searches."""
    model = OnTrackModel(bundle)
    cols = [c for c in (*INPUT_COLUMNS, *OPTIONAL_COLUMNS)
            if c in input_example.columns and input_example[c].notna().any()]
    example = input_example[cols].reset_index(drop=True)
    return mlflow.pyfunc.log_model(
        name="model", python_model=model, signature=signature(model.predict(None, example)),
        input_example=example,
        code_paths=[str(REPO_ROOT / "features"), str(REPO_ROOT / "models")],
        pip_requirements=model_requirements(), params=params, tags=tags,
        model_type="classifier")


def describe_version(version: str, card: dict, decision: GateDecision, model_id: str) -> None:
    """The registered version's description (the model card in short) and its tags (the
    gate's result and the logged model's id), so the registry page says what it is."""
    client = MlflowClient()
    lines = [f"**{card['name']}**: {card['intended_use']}", "",
             f"Outcome: {card['outcome_definition']}", ""]
    for inst, v in card.get("validation", {}).items():
        s3 = [r for r in v.get("by_session", []) if r.get("session") == 3]
        if s3 and s3[0].get("auroc") is not None:
            r = s3[0]
            lines.append(f"- {inst}: {v['model']}, AUROC as of session 3 {r['auroc']:.3f} "
                         f"[{r['auroc_lo']:.3f}, {r['auroc_hi']:.3f}] ({v['method']})")
    lines += ["", f"Gate: {decision.reason}", "",
              "Limits: " + " ".join(card.get("limits", []))]
    client.update_model_version(MODEL_NAME, version, description="\n".join(lines))
    for k, v in {"gate.promote": str(decision.promote), "gate.reason": decision.reason,
                 "gate.baseline": decision.baseline, "model_id": model_id,
                 "gate.auroc_diff": f"{decision.auroc_diff:.4f}",
                 "gate.auroc_diff_lo": f"{decision.auroc_diff_lo:.4f}"}.items():
        client.set_model_version_tag(MODEL_NAME, version, k, v)


def register(model_uri: str, tags: dict[str, str] | None = None) -> str:
    """Register the logged model; alias ``candidate``. Returns the version."""
    mv = mlflow.register_model(model_uri, MODEL_NAME, tags=tags or {})
    client = MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, "candidate", mv.version)
    return str(mv.version)


def champion_version() -> str | None:
    client = MlflowClient()
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


@dataclass
class GateDecision:
    promote: bool
    reason: str
    baseline: str  # "champion vX" or "expected-response rule"
    auroc_diff: float = float("nan")
    auroc_diff_lo: float = float("nan")
    auroc_diff_hi: float = float("nan")
    brier_diff: float = float("nan")
    n_clients: int = 0
    n_rows: int = 0

    def metrics(self) -> dict[str, float]:
        return {"gate_auroc_diff": self.auroc_diff, "gate_auroc_diff_lo": self.auroc_diff_lo,
                "gate_auroc_diff_hi": self.auroc_diff_hi, "gate_brier_diff": self.brier_diff,
                "gate_n_clients": float(self.n_clients), "gate_promote": float(self.promote)}


def gate(challenger_p: np.ndarray, baseline_p: np.ndarray, hold: TrainingRows,
         baseline: str, seed: int = 0) -> GateDecision:
    """Decide on the held-out rows (known outcome) of the instrument both models cover."""
    y = hold.failed
    mask = np.isfinite(y) & np.isfinite(challenger_p) & np.isfinite(baseline_p)
    n_clients = int(pd.unique(hold.groups[mask]).size)
    if n_clients < MIN_GATE_CLIENTS:
        return GateDecision(False, f"not promoted: only {n_clients} held-out clients with a "
                            f"known outcome (the gate needs {MIN_GATE_CLIENTS})", baseline,
                            n_clients=n_clients, n_rows=int(mask.sum()))
    diff = paired_difference(y[mask], challenger_p[mask], baseline_p[mask], "auroc",
                             groups=hold.groups[mask], n_boot=500, seed=seed)
    brier = (METRICS["brier"](y[mask], challenger_p[mask])
             - METRICS["brier"](y[mask], baseline_p[mask]))
    ok_auc, ok_brier = diff.lo > 0, brier <= BRIER_TOLERANCE
    if ok_auc and ok_brier:
        reason = (f"promoted: AUROC {diff.value:+.3f} [{diff.lo:+.3f}, {diff.hi:+.3f}] vs "
                  f"{baseline}, lower bound above 0; Brier {brier:+.4f} (tolerance "
                  f"+{BRIER_TOLERANCE})")
    else:
        why = []
        if not ok_auc:
            why.append(f"the AUROC difference vs {baseline} is {diff.value:+.3f} "
                       f"[{diff.lo:+.3f}, {diff.hi:+.3f}], lower bound not above 0")
        if not ok_brier:
            why.append(f"Brier is worse by {brier:.4f} (> {BRIER_TOLERANCE})")
        reason = "not promoted: " + "; ".join(why)
    return GateDecision(ok_auc and ok_brier, reason + f" ({n_clients} held-out clients)",
                        baseline, diff.value, diff.lo, diff.hi, float(brier), n_clients,
                        int(mask.sum()))


def logged_model_id(model_uri: str) -> str:
    """The logged model's id (``m-...``) behind ``models:/name@alias`` or
    ``models:/name/version``: the registered version's ``model_id`` (its source URI
    ``models:/m-...`` where the store leaves the field empty)."""
    client = MlflowClient()
    ref = model_uri.removeprefix("models:/")
    if ref.startswith("m-"):
        return ref
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, version = ref.rsplit("/", 1)
        mv = client.get_model_version(name, version)
    mid = getattr(mv, "model_id", None) or (mv.source or "").removeprefix("models:/")
    if not mid.startswith("m-"):
        raise LookupError(f"{model_uri} has no logged model record (source {mv.source})")
    return mid


def set_champion(version: str) -> None:
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)


def feature_version_ok(bundle) -> bool:
    return getattr(bundle, "feature_version", None) == FEATURE_VERSION


def artifact_dir(run_id: str, path: str, dst: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                    dst_path=str(dst)))
