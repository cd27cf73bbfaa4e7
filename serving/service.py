"""The OnTrack prediction service: ONE BentoML service class.

Start-up (``__init__``) does all the work: settings, log redaction, the bundle from the MLflow
registry (``ontrack-not-risk@champion`` or ``ONTRACK_MODEL_VERSION``) or, inside a Bento, from
the BentoML store; the model card; the audit log; a warm-up assessment. Importing this module
only declares things.

Routes (see docs/service.md):

* ``POST /v1/assess`` (bearer key, scope ``assess``): one or many clients -> one explained
  `models.assess.Assessment` each. Validation: `serving.middleware.RequestGuard` (auth, size,
  JSON, types), then `serving.schemas` (request structure and `features.contract.check_sessions`).
* ``POST /v1/fhir/assess`` (same key and audit): a FHIR R4 Bundle of QuestionnaireResponses
  and Observations in, a Bundle of RiskAssessments and safety Flags out (`serving.fhir`).
* ``/cds-services``: CDS Hooks 2.0, the ``patient-view`` hook (`serving.cdshooks`).
* ``POST /v1/noop`` (same auth): does nothing; the benchmark's baseline.
* ``GET /v1/model`` (open: no client data): the model card. ``GET /v1/health`` (open).
* BentoML's own: ``/`` (Swagger UI), ``/docs.json`` (OpenAPI), ``/readyz``, ``/livez``,
  ``/healthz``, ``/metrics``.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import math
import uuid
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from serving.audit import RETRY_AFTER, AuditUnavailable
from serving.batching import Batcher
from serving.cdshooks import cds
from serving.fhir.inbound import read_bundle
from serving.fhir.outbound import assessment_bundle, operation_outcome, simple_outcome
from serving.middleware import FrameworkErrors, ReadinessGate, RequestGuard, SecurityHeaders
from serving.openapi import OpenAPIDocument
from serving.readiness import STATUS, NotReady, check_store, load_until_ready
from serving.schemas import (
    EXAMPLE_INPUT,
    FRAMEWORK_ERRORS,
    PROBLEM_MEDIA,
    PROBLEM_TYPES,
    AssessRequest,
    AssessResponse,
    ClientIn,
    ErrorResponse,
    Problem,
    contract_problems,
    problem,
    request_problems,
    to_frames,
)
from serving.settings import BENTO_MODEL_TAG, ServingSettings
from serving.ui import webapp

log = logging.getLogger("serving.service")


# ------------------------------------------------------------------------------------------
# Model card and health (response schemas)
# ------------------------------------------------------------------------------------------
class InstrumentCard(BaseModel):
    instrument: str
    failure_model: str
    dropout_model: str | None
    flag_policy: dict[str, Any] | None = Field(
        None, description="The not-on-track flag policy: entry and exit thresholds, budget, "
        "what it achieved in validation, in words.")
    model_size: dict[str, Any] = Field(default_factory=dict,
                                       description="Trees, leaves and depth of the booster.")
    training_population: dict[str, Any]
    validation: dict[str, Any] = Field(description="Validation figures with intervals, as "
                                       "recorded by training.")


class ModelCard(BaseModel):
    name: str
    version: str
    source: str
    date: str | None = Field(description="When the model was trained or registered.")
    feature_version: str
    intended_use: Any = None
    inputs: Any = None
    logic: Any = None
    limits: Any = None
    instruments: list[InstrumentCard]
    card: dict[str, Any] = Field(default_factory=dict,
                                 description="Every field of the bundle's model card.")
    provenance: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    status: str
    model_version: str
    feature_version: str
    instruments: list[str]


def _plain(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dt.date | dt.datetime):
        return x.isoformat()
    if hasattr(x, "__dataclass_fields__"):
        return _plain(dict(x.__dict__))
    return x


def _size(est) -> dict[str, Any]:
    booster = getattr(est, "booster_", None)
    if booster is None:
        return {}
    dump = booster.dump_model()
    trees = dump.get("tree_info", [])

    def depth(node) -> int:
        if "leaf_index" in node or "leaf_value" in node and "split_index" not in node:
            return 0
        return 1 + max(depth(node["left_child"]), depth(node["right_child"]))

    return {"trees": len(trees),
            "max_leaves": max((t["num_leaves"] for t in trees), default=0),
            "max_depth": max((depth(t["tree_structure"]) for t in trees), default=0)}


def _policy_card(policy) -> dict[str, Any] | None:
    if policy is None:
        return None
    return _plain({"description": policy.describe(), "entry_threshold": policy.entry,
                   "exit_threshold": policy.exit, "exit_sessions": policy.exit_sessions,
                   "budget": policy.budget, "by_session": policy.by_session,
                   "target": policy.target, "achieved_out_of_fold": policy.achieved})


def build_card(bundle, source: str, settings: ServingSettings) -> ModelCard:
    card = dict(bundle.card or {})
    instruments = []
    for code, m in bundle.models.items():
        instruments.append(InstrumentCard(
            instrument=code,
            failure_model=type(m.failure).__name__,
            dropout_model=None if m.dropout is None else type(m.dropout).__name__,
            flag_policy=_policy_card(getattr(m, "flag_policy", None)),
            model_size=_size(m.failure),
            training_population=_plain(m.population),
            validation=_plain(m.validation or {})))
    return ModelCard(
        name=settings.model_name, version=bundle.version, source=source,
        date=_plain(card.get("date") or card.get("trained") or
                    bundle.provenance.get("date")),
        feature_version=bundle.feature_version,
        intended_use=_plain(card.get("intended_use")), inputs=_plain(card.get("inputs")),
        logic=_plain(card.get("logic")), limits=_plain(card.get("limits")),
        instruments=instruments, card=_plain(card), provenance=_plain(bundle.provenance))


def _example_frames():
    req = AssessRequest.model_validate_json(json.dumps(EXAMPLE_INPUT))
    return to_frames(req)


def tune_gc(threshold: int) -> None:
    """Freeze everything loaded so far (the bundle, libraries) out of the cyclic garbage
    collector and collect the young generation every ``threshold`` allocations (0: leave
    the collector as Python sets it). A 1,000-client request allocates about half a million
    small objects; with the defaults they trigger repeated full scans of the loaded model,
    which cost more than parsing the request itself (docs/service.md, Speed)."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(threshold, g1, g2)


class AssessInput(bentoml.IODescriptor, AssessRequest):
    """`AssessRequest` as the route's BentoML input. `serving.middleware.RequestGuard` has
    already parsed and type-checked the body (its errors are OnTrack's, naming field and
    rule); the route takes that object instead of parsing the body a second time (which cost
    a third of a 1,000-client request). Without it (a caller inside the process), BentoML
    parses as usual."""

    @classmethod
    async def from_http_request(cls, request, serde):
        parsed = getattr(request.state, "assess_request", None)
        if isinstance(parsed, AssessRequest):
            return cls.model_construct(clients=parsed.clients, timing=parsed.timing)
        return await super().from_http_request(request, serde)


class FhirResult:
    """`OnTrack.assess_fhir`'s answer: the status, the problems (as FHIR issues) or the
    assessments, and the Bundle that was read."""

    __slots__ = ("status", "problems", "assessments", "parsed")

    def __init__(self, status, problems, assessments, parsed) -> None:
        self.status, self.problems = status, problems
        self.assessments, self.parsed = assessments, parsed


def _fhir_json(status: int, doc: dict) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type="application/fhir+json")


def problem_response(body: ErrorResponse, headers: dict[str, str] | None = None) -> JSONResponse:
    """Problem details (RFC 9457) as the answer."""
    return JSONResponse(body.model_dump(mode="json"), status_code=body.status,
                        media_type=PROBLEM_MEDIA, headers=headers)


class ProblemType(BaseModel):
    type: str
    title: str
    status: int = Field(description="The HTTP status it usually comes with.")
    what_to_do: str


# ------------------------------------------------------------------------------------------
api = FastAPI(title="OnTrack information routes", docs_url=None, redoc_url=None,
              openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, method not allowed) as problem details."""
    error, message = FRAMEWORK_ERRORS.get(exc.status_code,
                                          ("invalid_request", "the request was refused"))
    return problem_response(problem(error, message, [Problem(
        field="path", rule=error, message=message)], exc.status_code), exc.headers)


@api.get("/problems/{code}", response_model=ProblemType, tags=["model"])
def problem_type(code: str) -> Any:
    """What a problem type (an error answer's ``type``) means and what to do about it."""
    if code not in PROBLEM_TYPES:
        raise StarletteHTTPException(404)
    status, title, what = PROBLEM_TYPES[code]
    return ProblemType(type=f"/v1/problems/{code}", title=title, status=status,
                       what_to_do=what)


# threads: request threads of a worker (BentoML's default is one, which queues concurrent
# requests before they are parsed); they validate in parallel and wait on the one batcher
@bentoml.service(name="ontrack", traffic={"timeout": 60}, workers=1, threads=32,
                 http={"cors": {"enabled": False}})
@bentoml.asgi_app(api, path="/v1")
@bentoml.asgi_app(webapp, path="/ui")
@bentoml.asgi_app(cds, path="/cds-services")
class OnTrack:
    """Not-on-track risk, expected course, explanations and suggestions for ROM data."""

    # Packaged by `bentoml build` (imported by `ontrack build`); loaded only when
    # ONTRACK_MODEL_SOURCE=bentoml (set in bentofile.yaml), else the MLflow registry is used.
    model_ref = bentoml.models.BentoModel(BENTO_MODEL_TAG)

    def __init__(self) -> None:
        from features.logs import configure_logging
        from serving import logredact
        from serving.audit import AuditLog
        from serving.ehrauth import Verifier, load_issuers

        self.settings = ServingSettings()
        configure_logging()
        logredact.install()
        self.cds_verifier = Verifier(load_issuers(self.settings.cds_issuers_path),
                                     self.settings.cds_replay_path)
        self.audit = AuditLog(self.settings.audit_path,
                              self.settings.audit_secret.get_secret_value())
        self.bundle = self.card = self.batcher = None
        # a model that cannot be loaded (store missing or locked, corrupt artefact) leaves the
        # service live and not ready, with the reason on /readyz, and is tried again
        load_until_ready(self._load_model, self.settings.load_retry_max_seconds)

    def _load_model(self) -> None:
        """Everything the routes need, then (last) readiness; raises on any failure."""
        import sqlite3

        from serving.loader import load, load_from_bentoml

        try:
            self.audit.open()
        except sqlite3.Error as err:
            raise NotReady("audit_unavailable", "the audit log cannot be opened for "
                           "writing") from err
        if self.settings.model_source == "bentoml":
            loaded = load_from_bentoml(self.settings, self.model_ref.stored.path_of(
                "mlflow_model"))
        else:
            check_store(self.settings.resolved_tracking_uri())
            loaded = load(self.settings)
        card = build_card(loaded.bundle, loaded.source, self.settings)
        ex = _example_frames()  # warm-up: first-call costs paid before the first request
        read_bundle({"resourceType": "Bundle", "entry": [{"resource": {  # the FHIR models
            "resourceType": "Patient", "id": "warm-up"}}]})
        loaded.bundle.assess(ex.sessions, ex.covariates, horizon=self.settings.horizon)
        self.batcher = Batcher(loaded.bundle, self.settings.horizon,
                               self.settings.batch_max_clients)
        self.bundle, self.card = loaded.bundle, card
        tune_gc(self.settings.gc_threshold)
        log.info("service ready: model %s from %s", self.bundle.version, loaded.source)

    def __is_ready__(self) -> bool:
        """BentoML's /readyz: true once the model is loaded (`serving.readiness`)."""
        return STATUS.ready

    # -------------------------------------------------------------------------- core logic
    def run(self, request: AssessRequest, clinic: str) -> tuple[int, Any]:
        """(status, body) for one validated-typed request; the HTTP route wraps this."""
        problems = request_problems(request)
        frames = None
        if not problems:
            frames = to_frames(request)
            problems = contract_problems(frames, self.settings.max_clients)
        if problems:
            return 422, problem("invalid_request",
                                f"{len(problems)} problem(s) in the request", problems)
        assessments = self.batcher.assess(  # with concurrent requests, in one pass
            frames.sessions, frames.covariates,
            budget=self.settings.flag_budgets.get(clinic),
            alliance_after=getattr(request, "timing", "before_session") == "after_session")
        self.audit.record(uuid.uuid4().hex, clinic, assessments)
        # the assessments are built (and typed) by models/assess.py: no second validation pass
        return 200, AssessResponse.model_construct(model_version=self.bundle.version,
                                                   feature_version=self.bundle.feature_version,
                                                   assessments=assessments)

    def assess_fhir(self, doc: Any, clinic: str) -> FhirResult:
        """A FHIR Bundle through the FHIR mapping, then `run` (the same rules, assessment and
        audit as /v1/assess); problems at the resource elements they came from."""
        parsed = read_bundle(doc)
        if parsed.request is None:
            status = 400 if parsed.problems and parsed.problems[0].rule == "not_a_bundle" \
                else 422
            return FhirResult(status, parsed.problems, None, parsed)
        status, body = self.run(parsed.request, clinic)
        if status != 200:
            return FhirResult(status, [parsed.locate(p) for p in body.errors], None, parsed)
        return FhirResult(200, [], body.assessments, parsed)

    # -------------------------------------------------------------------------- routes
    @bentoml.api(route="/v1/assess", input_spec=AssessInput, output_spec=AssessResponse)
    def assess(self, clients: list[ClientIn], ctx: bentoml.Context,
               timing: str = "before_session") -> AssessResponse:
        """Assess one or many clients: risk, the not-on-track flag, signal, expected course,
        reliable change, alliance, explained drivers, suggestions, safety and population
        checks."""
        state = ctx.request.state
        request = getattr(state, "assess_request", None)
        if request is None:
            request = AssessRequest.model_construct(clients=clients, timing=timing)
        clinic = getattr(state, "clinic", None) or "unauthenticated"
        try:
            status, body = self.run(request, clinic)
        except AuditUnavailable as err:  # never an assessment without its audit row
            log.error("assessment refused: %s", err)
            ctx.response.status_code = 503
            ctx.response.headers["Retry-After"] = RETRY_AFTER
            return problem_response(problem(
                "audit_unavailable", str(err) + "; no assessment is given without its audit "
                "row, try again later"), {"Retry-After": RETRY_AFTER})
        except Exception as err:  # a bug, never client input: no data in the log or reply
            log.error("assessment failed (%s); request details withheld", type(err).__name__)
            ctx.response.status_code = 500
            return problem_response(problem("internal_error", "the assessment failed; the "
                                            "error was logged without client data"))
        if status != 200:
            ctx.response.status_code = status
            return problem_response(body)
        return body

    @bentoml.api(route="/v1/noop")
    def noop(self) -> dict:
        """Does nothing, behind the same auth as /v1/assess (benchmark baseline)."""
        return {"ok": True}

    @api.post("/fhir/assess", tags=["fhir"])
    async def fhir_assess(self, request: Request) -> Response:
        """A FHIR R4 Bundle (QuestionnaireResponse, Observation) -> a Bundle of
        RiskAssessments and safety Flags; problems as an OperationOutcome (docs/ehr.md)."""
        try:
            doc = json.loads(await request.body())
        except ValueError:
            return _fhir_json(400, simple_outcome("invalid", "json_invalid",
                                                  "the body is not valid JSON"))
        clinic = request.state.clinic if hasattr(request.state, "clinic") else \
            "unauthenticated"
        try:
            result = await run_in_threadpool(self.assess_fhir, doc, clinic)
        except AuditUnavailable as err:
            log.error("FHIR assessment refused: %s", err)
            resp = _fhir_json(503, simple_outcome("transient", "audit_unavailable", str(err) +
                                                  "; no assessment is given without its audit "
                                                  "row, try again later"))
            resp.headers["Retry-After"] = RETRY_AFTER
            return resp
        except Exception as err:  # a bug, never client input: no data in the log or reply
            log.error("FHIR assessment failed (%s); request details withheld",
                      type(err).__name__)
            return _fhir_json(500, simple_outcome("exception", "internal_error",
                                                  "the assessment failed; the error was "
                                                  "logged without client data"))
        if result.status != 200:
            return _fhir_json(result.status, operation_outcome(result.problems))
        return _fhir_json(200, assessment_bundle(result.assessments, result.parsed.basis,
                                                 result.parsed.left_out))

    @api.get("/model", response_model=ModelCard, tags=["model"])
    def model_card(self) -> ModelCard:
        """The model card: intended use, inputs, logic, training population, validation
        figures with intervals, limits, version and date. Open (holds no client data)."""
        return self.card

    @api.get("/health", response_model=Health, tags=["health"])
    def health(self) -> Health:
        return Health(status="ok", model_version=self.bundle.version,
                      feature_version=self.bundle.feature_version,
                      instruments=list(self.bundle.models))


# BentoML wraps the app in the reverse order: SecurityHeaders ends up outermost, so the
# guard's own refusals get the headers too
OnTrack.add_asgi_middleware(SecurityHeaders)
OnTrack.add_asgi_middleware(FrameworkErrors)
OnTrack.add_asgi_middleware(ReadinessGate)
OnTrack.add_asgi_middleware(RequestGuard)
OnTrack.add_asgi_middleware(OpenAPIDocument)

__all__ = ["OnTrack", "EXAMPLE_INPUT", "Problem", "ModelCard"]
