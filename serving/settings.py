"""Service and web view settings (pydantic-settings, environment prefix ``ONTRACK_``): one
object, read once. The store rule and the model name come from `models.registry` (the same for
training); training's own choices (folds, model sizes, the flag budget) are arguments of
`training.pipeline.Settings`, not environment settings.

Read once by each entry point (`ontrack serve`, the service's start-up); importing this module
reads nothing, creates nothing and sets no tracking URI. A placeholder secret is refused outside
development (the full-stack-fastapi-template rule: fail fast, never run production on a
default secret).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.registry import MODEL_NAME, REPO_ROOT, tracking_uri

BENTO_MODEL_TAG = f"{MODEL_NAME}:latest"
PLACEHOLDER_SECRET = "development-only-change-me"


class ServingSettings(BaseSettings):
    """Everything the service reads from its environment (``ONTRACK_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="ONTRACK_", extra="ignore",
                                      protected_namespaces=())

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses the placeholder audit secret and "
        "never creates development keys.")
    # ---- which model
    model_name: str = Field(MODEL_NAME, description="Registered model name in MLflow.")
    model_alias: str = Field("champion", description="Registry alias loaded at start-up.")
    model_version: str | None = Field(
        None, description="A registry version number; overrides model_alias when set.")
    model_source: Literal["registry", "bentoml"] = Field(
        "registry", description="registry: MLflow registry (development); bentoml: the model "
        "packaged in the Bento (set by bentofile.yaml).")
    bento_model_tag: str = Field(BENTO_MODEL_TAG, description="BentoML store tag.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default MLFLOW_TRACKING_URI, else "
        "sqlite:///<repo>/mlflow/mlflow.db.")
    bentoml_home: Path = Field(REPO_ROOT / "bentoml_home",
                               description="BENTOML_HOME used by `ontrack build`/`serve`.")
    # ---- state files
    keys_path: Path = Field(REPO_ROOT / "var" / "keys.sqlite",
                            description="API keys (hashes only).")
    audit_path: Path = Field(REPO_ROOT / "var" / "audit.sqlite",
                             description="Append-only audit log (SQLite, WAL).")
    audit_secret: SecretStr = Field(
        SecretStr(PLACEHOLDER_SECRET), description="Deployment secret for client pseudonyms "
        "(HMAC-SHA256 of the client id). Set a long random value in production.")
    require_auth: bool = Field(True, description="Bearer keys on /v1/assess, /v1/noop.")
    # ---- request limits
    max_clients: int = Field(1000, ge=1, description="Most clients in one request.")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request body.")
    horizon: int = Field(4, ge=1, le=12, description="Sessions ahead in the expected course.")
    batch_max_clients: int = Field(64, ge=1, description="Most clients of concurrent requests "
                                   "assessed in one pass (serving.batching).")
    num_threads: int = Field(1, ge=1, description="LightGBM threads on the request path.")
    workers: int = Field(1, ge=1, le=64, description="Service worker processes (`ontrack "
                         "serve`): each loads the bundle and answers requests on its own core; "
                         "one per core serves concurrent callers (docs/service.md, Speed).")
    gc_threshold: int = Field(
        50_000, ge=0, description="Allocations between young-generation garbage collections "
        "on the request path (Python's default is 700). After start-up the loaded bundle is "
        "frozen out of collection (gc.freeze), so a request's many small objects no longer "
        "trigger scans of the model; 0 leaves the collector alone. docs/service.md (Speed).")
    rate_limit_per_minute: int = Field(
        1200, ge=0, description="Requests per minute each key may make to the protected "
        "routes, per worker process (0: no limit). OnTrack heuristic: 20 a second is far "
        "above an EHR's steady use and stops one caller from starving the others.")
    rate_limit_burst: int = Field(100, ge=1, description="Requests a key may make at once "
                                  "before the per-minute rate applies (token bucket size; "
                                  "OnTrack heuristic).")
    load_retry_max_seconds: float = Field(
        30.0, gt=0, le=600, description="Longest pause between attempts to load the model "
        "when it cannot be loaded at start (the pauses grow 1, 2, 4, ... seconds up to this; "
        "OnTrack heuristic).")
    # ---- the flag
    flag_budgets: dict[str, float] = Field(
        default_factory=dict, description="Per clinic (key name), its own flag budget: the "
        "share of eventual reliable improvers the not-on-track flag may reach by session 3 "
        "(JSON, e.g. {\"clinic-a\": 0.2}). Clinics not listed use the bundle's budget "
        "(chosen at training, default 0.30). The entry threshold comes from the curve stored "
        "with the bundle; nothing is refitted.")
    # ---- the web view
    demo_path: Path = Field(REPO_ROOT / "data" / "demo" / "sessions.csv",
                            description="The demo cohort's sessions file (written by "
                            "`ontrack demo`); a clients file next to it is used too.")
    demo_clients: int = Field(200, ge=1, description="Clients of the demo file shown (the "
                              "first ones in the file).")
    ui_max_sessions: int = Field(100, ge=1, description="Browser sessions kept in memory "
                                 "(each with at most one caseload); the oldest is evicted.")
    ui_idle_minutes: int = Field(480, ge=1, description="A browser session ends after this "
                                 "long without a request.")
    ui_max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                     description="Largest upload (all files together).")
    # ---- the EHR (FHIR, CDS Hooks; docs/ehr.md)
    public_url: str = Field("http://127.0.0.1:3000", description="The service's URL as the "
                            "EHR calls it: the audience a CDS Hooks token must name, and the "
                            "base of links on cards.")
    cds_issuers_path: Path = Field(REPO_ROOT / "var" / "cds_issuers.json",
                                   description="The EHRs trusted to call CDS Hooks (JSON: "
                                   "issuer, clinic, JWKS or its URL, allowed jku and FHIR "
                                   "servers; serving/ehrauth.py). No file: every call is "
                                   "refused.")
    cds_replay_path: Path = Field(REPO_ROOT / "var" / "cds_jti.sqlite",
                                  description="Token ids seen (replay protection), until "
                                  "each token expires.")
    cds_info_cards: bool = Field(True, description="An info card when a client has no "
                                 "not-on-track flag (false: no card).")
    cds_fetch_timeout: float = Field(10.0, gt=0, le=60, description="Seconds per request "
                                     "when fetching from the EHR's FHIR server.")
    smart_clients_path: Path = Field(REPO_ROOT / "var" / "smart_clients.json",
                                     description="EHRs that may launch the web view with SMART "
                                     "on FHIR (JSON: iss, client_id, clinic; serving/smart.py). "
                                     "No file: no SMART launch.")
    ui_frame_ancestors: str = Field("'none'", pattern=r"^[A-Za-z0-9 :/.*'\-]+$",
                                    description="CSP frame-ancestors of the web view's pages "
                                    "('none': never in a frame; an EHR that embeds the view: "
                                    "its origin, e.g. https://ehr.example.org).")
    ui_cookie_samesite: Literal["strict", "lax", "none"] = Field(
        "strict", description="SameSite of the web view's session cookie (none when "
        "embedded in an EHR's frame; it is then sent only over https).")
    # ---- server
    host: str = "127.0.0.1"
    port: int = 3000

    @model_validator(mode="after")
    def _no_placeholder_in_production(self) -> ServingSettings:
        if (self.environment == "production"
                and self.audit_secret.get_secret_value() == PLACEHOLDER_SECRET):
            raise ValueError("ONTRACK_AUDIT_SECRET must be set in production (the placeholder "
                             "secret would make client pseudonyms guessable)")
        if len(self.audit_secret.get_secret_value()) < 16:
            raise ValueError("ONTRACK_AUDIT_SECRET must be at least 16 characters")
        return self

    @model_validator(mode="after")
    def _budgets_are_shares(self) -> ServingSettings:
        bad = {k: v for k, v in self.flag_budgets.items() if not 0.0 < v < 1.0}
        if bad:
            raise ValueError(f"ONTRACK_FLAG_BUDGETS: every budget must be a share between 0 "
                             f"and 1 (exclusive); got {bad}")
        return self

    def resolved_tracking_uri(self) -> str:
        """ONTRACK_TRACKING_URI, else the rule of `models.registry.tracking_uri`
        (MLFLOW_TRACKING_URI, else SQLite under ONTRACK_MLFLOW_DIR, default <repo>/mlflow/)."""
        return tracking_uri(self.tracking_uri)
