"""Load the fitted bundle for serving: from the MLflow registry (development) or from the
BentoML model store (inside a Bento), both through `models.registry.load_bundle` (the one
loader, the one version string). Never imports `training/`; configures the MLflow URI itself,
from settings, only when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from models.registry import load_bundle
from serving.settings import ServingSettings


class ModelNotFoundError(RuntimeError):
    """The requested model is not in the registry / store (with what to do about it)."""


@dataclass
class Loaded:
    bundle: Any  # models.bundle.Bundle
    source: str  # e.g. "models:/ontrack-not-risk@champion (version 3)"
    version: str  # registry version number, as a string
    model_uri: str


def mlflow_client(settings: ServingSettings):
    """An MlflowClient on the configured store (sets the tracking and registry URIs)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = settings.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def resolve_version(settings: ServingSettings):
    """The registry ModelVersion named by settings (explicit version, else the alias)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    name = settings.model_name
    try:
        if settings.model_version:
            return client.get_model_version(name, settings.model_version)
        return client.get_model_version_by_alias(name, settings.model_alias)
    except MlflowException as err:
        which = (f"version {settings.model_version}" if settings.model_version
                 else f"alias @{settings.model_alias}")
        raise ModelNotFoundError(
            f"no registered model {name!r} {which} in {settings.resolved_tracking_uri()}: "
            "train and promote one first (`ontrack train`), or set ONTRACK_MODEL_VERSION"
        ) from err


def load_from_registry(settings: ServingSettings) -> Loaded:
    mv = resolve_version(settings)
    uri = f"models:/{settings.model_name}/{mv.version}"
    bundle = load_bundle(uri, num_threads=settings.num_threads)
    which = (f"@{settings.model_alias}" if not settings.model_version else "")
    return Loaded(bundle, f"models:/{settings.model_name}{which} (version {mv.version})",
                  str(mv.version), uri)


def load_from_bentoml(settings: ServingSettings, path: str | None = None) -> Loaded:
    """From the BentoML store (or a stored model's folder, inside a Bento)."""
    import bentoml

    model = bentoml.models.get(settings.bento_model_tag)
    meta = dict(model.info.metadata)
    folder = path or model.path_of("mlflow_model")
    version = str(meta.get("registry_version", model.tag.version))
    bundle = load_bundle(folder, num_threads=settings.num_threads, version=version)
    return Loaded(bundle, f"bentoml:{model.tag}", version, str(meta.get("model_uri", "")))


def load(settings: ServingSettings) -> Loaded:
    if settings.model_source == "bentoml":
        return load_from_bentoml(settings)
    return load_from_registry(settings)


def import_to_bentoml(settings: ServingSettings):
    """`ontrack build`: copy the registry model named by settings into the BentoML store."""
    import bentoml

    mv = resolve_version(settings)
    uri = f"models:/{settings.model_name}/{mv.version}"
    return bentoml.mlflow.import_model(
        settings.model_name, uri,
        labels={"registry_version": str(mv.version)},
        metadata={"registry_version": str(mv.version), "model_uri": uri,
                  "tracking_uri": settings.resolved_tracking_uri(),
                  "run_id": str(mv.run_id or "")})
