"""The fitted bundle in the MLflow registry: its name, where the store is, and the ONE loader.

Training (the gate, external validation, the CLI), the service and the tests all load a bundle
through `load_bundle`, so a loaded bundle always carries the same version string,
``ontrack-not-risk/<registry version>`` (what `risk.model_version` shows), whoever loaded it.
Nothing here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The registered model.
MODEL_NAME = "ontrack-not-risk"


def store_dir() -> Path:
    """The embedded store's folder: ONTRACK_MLFLOW_DIR, else the repository's `mlflow/`."""
    return Path(os.environ.get("ONTRACK_MLFLOW_DIR", REPO_ROOT / "mlflow")).resolve()


def tracking_uri(explicit: str | None = None) -> str:
    """The MLflow tracking and registry URI, by one rule: ``explicit`` (the service's
    ONTRACK_TRACKING_URI), else MLFLOW_TRACKING_URI, else SQLite in `store_dir()`."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


#: The experiments: training runs, and batch scoring jobs (`ontrack score`).
TRAINING_EXPERIMENT = "ontrack-not-on-track"
SCORING_EXPERIMENT = "ontrack-scoring"


def artifact_root(store: Path | None = None) -> str:
    return ((store or store_dir()).resolve() / "artifacts").as_uri()


def configure(experiment: str = TRAINING_EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists with an absolute artifact
    root. Returns the experiment id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        kwargs = {} if not uri.startswith("sqlite") else {"artifact_location": artifact_root()}
        experiment_id = client.create_experiment(experiment, **kwargs)
    else:
        experiment_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


#: What the logged model needs to load and assess (features/ and models/ ship as its code).
MODEL_PACKAGES = ("numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "lightgbm", "mlflow",
                  "pydantic", "pandera", "structlog")


def model_requirements(lock: Path | None = None) -> list[str]:
    """Pinned requirements of the logged model from the one source, ``uv.lock`` (the Bento's
    come from the same file through ``uv export``); where the lock file is not at hand (an
    installed copy), the versions installed here."""
    lock = lock or REPO_ROOT / "uv.lock"
    if lock.exists():
        import tomllib

        pins = {p["name"]: p["version"] for p in tomllib.loads(lock.read_text())["package"]
                if "version" in p}
    else:
        from importlib.metadata import version

        pins = {name: version(name) for name in MODEL_PACKAGES}
    return [f"{name}=={pins[name]}" for name in MODEL_PACKAGES]


def version_label(name: str, version: str) -> str:
    """The one version string of a loaded bundle."""
    return f"{name}/{version}"


def _import_the_installed_code() -> None:
    """MLflow puts the model's logged code folders on ``sys.path`` when it loads it; the
    packages imported first win. Import them first, so every loader assesses with the
    installed code (whose feature version `Bundle.check_compatible` checks)."""
    import features.pointintime  # noqa: F401
    import models.assess  # noqa: F401


def pin_threads(bundle, num_threads: int) -> None:
    """Every booster of the bundle predicts with ``num_threads`` threads (OpenMP would
    otherwise wake every core for a one-row prediction)."""
    for m in bundle.models.values():
        for est in (m.failure, m.dropout):
            if est is not None and "n_jobs" in est.get_params():
                est.set_params(n_jobs=num_threads)


def load_bundle(uri: str, *, num_threads: int | None = None, version: str | None = None):
    """The fitted bundle behind a model URI (``models:/ontrack-not-risk@champion``,
    ``models:/ontrack-not-risk/3``, a run or a folder), checked against this code's feature
    version, its version string set (``version``: the registry version when the caller
    already resolved it, e.g. a Bento's metadata) and, with ``num_threads``, its boosters
    pinned."""
    import mlflow.pyfunc

    _import_the_installed_code()
    bundle = mlflow.pyfunc.load_model(uri).unwrap_python_model().bundle
    name, resolved = MODEL_NAME, version
    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            if resolved is None:
                from mlflow.tracking import MlflowClient

                resolved = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        elif "/" in ref:
            name, number = ref.split("/", 1)
            resolved = resolved or number
    bundle.version = version_label(name, resolved) if resolved else "unregistered"
    bundle.check_compatible()
    if num_threads is not None:
        pin_threads(bundle, num_threads)
    return bundle
