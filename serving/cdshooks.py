"""CDS Hooks 2.0 at ``/cds-services``, in the same service (docs/ehr.md).

* ``GET /cds-services``: the discovery document (open; it holds no client data).
* ``POST /cds-services/ontrack-patient-view``: the ``patient-view`` hook. The patient's
  QuestionnaireResponses and survey Observations come from ``prefetch``; a prefetch key that is
  missing or null is fetched from the EHR's ``fhirServer`` with its ``fhirAuthorization``
  bearer token, when the issuer allows OnTrack to fetch from that server; otherwise 412. The
  measures go through the FHIR mapping and the same assessment as ``/v1/assess``
  (`serving.fhir.inbound`, ``OnTrack.assess_fhir``), and come back as cards: ``critical`` for a
  safety flag (whatever the model says), ``warning`` for a new or continuing not-on-track
  flag, ``info`` otherwise (``ONTRACK_CDS_INFO_CARDS=false``: no card).
* ``POST /cds-services/ontrack-patient-view/feedback``: accepted / overridden, written to the
  audit log with the client's pseudonym (`serving.audit`).

Every POST needs the EHR's signed JWT (`serving.ehrauth`); 401 without detail otherwise. CORS is
enabled on these routes only (browser-based CDS clients call them directly).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from features.instruments import CODE_SYSTEM
from serving.audit import RETRY_AFTER, AuditUnavailable
from serving.ehrauth import Caller, Refused
from serving.fhir.client import FetchError, search
from serving.fhir.inbound import reference
from serving.fhir.outbound import ASSESSMENT_SYSTEM
from serving.schemas import FRAMEWORK_ERRORS, PROBLEM_MEDIA, Problem, problem, pydantic_problems

log = logging.getLogger("serving.cdshooks")

SERVICE_ID = "ontrack-patient-view"
SUMMARY_MAX = 139  # CDS Hooks 2.0: the summary SHOULD be under 140 characters
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "responses": "QuestionnaireResponse?subject=Patient/{{context.patientId}}",
    "observations": "Observation?subject=Patient/{{context.patientId}}&category=survey",
}
MEASURE_KEYS = ("responses", "observations")
OVERRIDE_SYSTEM = CODE_SYSTEM.rsplit("/", 1)[0] + "/override-reason"
OVERRIDE_REASONS = [
    {"system": OVERRIDE_SYSTEM, "code": "already-discussed",
     "display": "Already discussed with the client"},
    {"system": OVERRIDE_SYSTEM, "code": "context-known",
     "display": "Explained by something the measures do not show"},
    {"system": OVERRIDE_SYSTEM, "code": "data-incomplete",
     "display": "The measures are incomplete or out of date"},
    {"system": OVERRIDE_SYSTEM, "code": "other", "display": "Other reason"},
]


# ------------------------------------------------------------------------------------------
# The CDS Hooks 2.0 objects (the specification's field names)
# ------------------------------------------------------------------------------------------
class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")
    system: str | None = None
    code: str
    display: str | None = None


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")
    access_token: str = Field(min_length=1, max_length=8192)
    token_type: Literal["Bearer", "bearer"]
    expires_in: int
    scope: str
    subject: str


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    hook: str
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = Field(None, max_length=2048)
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class Source(BaseModel):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Card(BaseModel):
    uuid: str
    summary: str = Field(max_length=SUMMARY_MAX)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    overrideReasons: list[Coding] = []
    links: list[Link] = []


class Feedback(BaseModel):
    model_config = ConfigDict(extra="allow")
    card: str = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] = []
    overrideReason: dict[str, Any] | None = None
    outcomeTimestamp: str | None = Field(None, max_length=64)


class FeedbackRequest(BaseModel):
    feedback: list[Feedback] = Field(min_length=1, max_length=100)


def discovery() -> dict[str, Any]:
    return {"services": [{
        "hook": "patient-view",
        "id": SERVICE_ID,
        "title": "OnTrack: is the client on track in therapy?",
        "description": "Not-on-track flag, safety flag and prompts for a conversation from the "
                       "client's routine outcome measures (PHQ-9, GAD-7 and other instruments "
                       "OnTrack knows), with the reasons in words.",
        "prefetch": PREFETCH,
        "usageRequirements": "The EHR signs each call (ES384 or RS384) with a key OnTrack's "
                             "issuer list names; see docs/ehr.md.",
    }]}


# ------------------------------------------------------------------------------------------
# Cards
# ------------------------------------------------------------------------------------------
def _short(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _source(public_url: str) -> Source:
    return Source(label="OnTrack", url=f"{public_url}/v1/model",
                  topic=Coding(system=ASSESSMENT_SYSTEM, code="not-on-track",
                               display="Not-on-track assessment (routine outcome monitoring)"))


def _detail(a: Any) -> str:
    lines = []
    if a.risk is not None:
        lines.append(f"**Risk of not reliably improving by the end of care:** "
                     f"{a.risk.p_failure:.0%} (model {a.risk.model_version}).")
    lines += [f"**Flag:** {a.flag.reason}", f"**Signal:** {a.signal.reason}",
              f"**Change so far:** {a.change.summary}", f"**Alliance:** {a.alliance.message}"]
    drivers = a.explanation.drivers[:3] if a.explanation is not None else []
    if drivers:
        lines.append("**What drove the risk:**")
        lines += [f"- {d.sentence}" for d in drivers]
    if a.suggestions:
        lines.append("**Prompts for a conversation:**")
        lines += [f"- {s.prompt} ({s.rationale})" for s in a.suggestions]
    lines.append(f"_{a.flag.context}_")
    return "\n\n".join(lines)


def cards_for(assessments: list[Any], public_url: str, info_cards: bool,
              smart: bool = False) -> list[tuple[Card, Any]]:
    """(card, the assessment it is about): safety first (critical), then not-on-track flags
    (warning), then the rest (info). With ``smart`` (a SMART launch is configured), each card
    links to the web view's client page, launched by the EHR for the patient in context."""
    source = _source(public_url)
    links = [Link(label="Open the client in OnTrack", url=f"{public_url}/ui/smart/launch",
                  type="smart")] if smart else []
    cards: list[tuple[Card, Any]] = []
    safety = [a for a in assessments if a.safety.status == "flag"]
    seen: set[str] = set()
    for a in safety:
        if a.safety.message in seen:
            continue
        seen.add(a.safety.message)
        cards.append((Card(uuid=str(uuid.uuid4()), indicator="critical", source=source,
                           summary=_short(f"Risk item answered on {a.instrument}: review risk "
                                          "with the client today"),
                           detail=a.safety.message, overrideReasons=OVERRIDE_REASONS,
                           links=links), a))
    for a in assessments:
        if a.flag.flagged:
            state = "new" if a.flag.state == "new" else "continuing"
            cards.append((Card(uuid=str(uuid.uuid4()), indicator="warning", source=source,
                               summary=_short(f"Not on track on {a.instrument} ({state} "
                                              f"flag, session {a.session})"),
                               detail=_detail(a), overrideReasons=OVERRIDE_REASONS,
                               links=links), a))
        elif info_cards:
            summary = f"{a.instrument}: no not-on-track flag at session {a.session}"
            if a.flag.state == "cleared":
                summary += " (flag cleared)"
            detail = _detail(a)
            if safety:  # safety wording wins over reassurance
                summary += "; see the risk-item card"
                detail = "**A risk item was answered: see the critical card first.**\n\n" + detail
            cards.append((Card(uuid=str(uuid.uuid4()), indicator="info", source=source,
                               summary=_short(summary), detail=detail, links=links), a))
    return cards


# ------------------------------------------------------------------------------------------
# Prefetch, or fetch from the EHR
# ------------------------------------------------------------------------------------------
class MissingData(Exception):
    pass


def measures(req: HookRequest, caller: Caller, patient: str, timeout: float
             ) -> list[dict[str, Any]]:
    """The patient's measure resources, from prefetch or fetched; MissingData when neither."""
    prefetch = req.prefetch or {}
    resources: list[dict[str, Any]] = []
    for key in MEASURE_KEYS:
        value = prefetch.get(key)
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in value.get("entry") or []
                          if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
            continue
        if req.fhirServer is None or req.fhirAuthorization is None:
            raise MissingData(f"prefetch {key!r} is missing and no fhirServer with "
                              "fhirAuthorization was given")
        if not caller.issuer.may_fetch_from(req.fhirServer):
            raise MissingData("this issuer's fhirServer is not on OnTrack's list for it")
        query = PREFETCH[key].replace("{{context.patientId}}", patient.split("/", 1)[1])
        try:
            resources += search(req.fhirServer, query, req.fhirAuthorization.access_token,
                                timeout)
        except FetchError as err:
            raise MissingData(str(err)) from None
    return [r for r in resources if reference(r.get("subject"), {}) == patient]


# ------------------------------------------------------------------------------------------
# Routes
# ------------------------------------------------------------------------------------------
cds = FastAPI(title="OnTrack CDS Hooks", docs_url=None, redoc_url=None, openapi_url=None)
cds.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"],
                   allow_headers=["Authorization", "Content-Type"])


@cds.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, method not allowed) in the same JSON shape."""
    words = {**FRAMEWORK_ERRORS, 404: ("unknown_service", "no such CDS Hooks route; see the "
                                       "discovery document at /cds-services")}
    rule, message = words.get(exc.status_code, ("invalid_request", "the request was refused"))
    resp = _bad(exc.status_code, rule, message, "path")
    resp.headers.update(exc.headers or {})  # e.g. Allow on a 405 (RFC 9110)
    return resp


def _service() -> Any:
    import bentoml

    return bentoml.get_current_service()


_ERRORS = {404: "not_found", 405: "method_not_allowed", 412: "prefetch_missing",
           503: "audit_unavailable"}


def _problem(status: int, message: str, problems: list[Problem]) -> JSONResponse:
    """Problem details (RFC 9457), as the API's refusals."""
    body = problem(_ERRORS.get(status, "invalid_request"), message, problems, status)
    return JSONResponse(body.model_dump(mode="json"), status_code=status,
                        media_type=PROBLEM_MEDIA,
                        headers={"Retry-After": RETRY_AFTER} if status == 503 else None)


def _unauthorized() -> JSONResponse:
    """The same answer whatever was wrong with the token (the log has the rule)."""
    message = "a valid signed token from a registered EHR is needed"
    body = problem("unauthorized", message, [Problem(field="Authorization",
                                                     rule="invalid_token", message=message)])
    return JSONResponse(body.model_dump(mode="json"), status_code=401, media_type=PROBLEM_MEDIA,
                        headers={"WWW-Authenticate": "Bearer"})


def _bad(status: int, rule: str, message: str, field: str = "body") -> JSONResponse:
    return _problem(status, message, [Problem(field=field, rule=rule, message=message)])


def _caller(svc: Any, request: Request) -> Caller | None:
    audience = f"{svc.settings.public_url.rstrip('/')}{request.url.path.removesuffix('/feedback')}"
    try:
        return svc.cds_verifier.verify(request.headers.get("authorization"), audience)
    except Refused as err:
        log.warning("CDS Hooks call refused (rule: %s)", err.rule)
        return None


async def _admit(service_id: str, request: Request
                 ) -> tuple[Any, Caller | None, JSONResponse | None]:
    """(service, caller, None), or a refusal: 404 for a service OnTrack does not have, 401
    without a valid EHR token."""
    svc = _service()
    if service_id != SERVICE_ID:
        return svc, None, _bad(404, "unknown_service", f"no CDS Service {service_id!r} here; "
                               "see the discovery document at /cds-services")
    caller = await run_in_threadpool(_caller, svc, request)  # may fetch a JWKS
    if caller is None:
        return svc, None, _unauthorized()
    return svc, caller, None


async def _json(request: Request, model: type[BaseModel]):
    try:
        return model.model_validate_json(await request.body()), None
    except ValidationError as err:
        problems = pydantic_problems(err)
        return None, _problem(400, f"{len(problems)} problem(s) in the request", problems)


@cds.get("/")
async def discovery_route() -> dict[str, Any]:
    return discovery()


@cds.post("/{service_id}")
async def service_route(service_id: str, request: Request):
    svc, caller, refusal = await _admit(service_id, request)
    if refusal is not None:
        return refusal
    req, error = await _json(request, HookRequest)
    if error is not None:
        return error
    if req.hook != "patient-view":
        return _bad(400, "unsupported_hook", "this service answers the patient-view hook",
                    "hook")
    patient_id = req.context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id or "/" in patient_id:
        return _bad(400, "patient_required", "context.patientId is required", "context")
    if req.fhirAuthorization is not None and req.fhirServer is None:
        return _bad(400, "fhir_server_required", "fhirAuthorization needs a fhirServer",
                    "fhirServer")
    patient = f"Patient/{patient_id}"
    try:
        resources = await run_in_threadpool(measures, req, caller, patient,
                                            svc.settings.cds_fetch_timeout)
    except MissingData as err:
        return _bad(412, "prefetch_missing", str(err), "prefetch")
    if not resources:
        return {"cards": []}
    doc = {"resourceType": "Bundle", "type": "collection",
           "entry": [{"resource": r} for r in resources]}
    try:
        result = await run_in_threadpool(svc.assess_fhir, doc, caller.issuer.clinic)
    except AuditUnavailable as err:  # no cards without their audit rows
        log.error("CDS Hooks call refused: %s", err)
        return _bad(503, "audit_unavailable", f"{err}; try again later")
    public = svc.settings.public_url.rstrip("/")
    if result.status != 200:
        issues = result.problems[:3]
        text = "; ".join(f"{i.expression}: {i.message}" for i in issues)
        card = Card(uuid=str(uuid.uuid4()), indicator="info", source=_source(public),
                    summary=_short(f"OnTrack could not assess the outcome measures "
                                   f"({len(result.problems)} problem(s) in the record)"),
                    detail=f"The measures in the record break OnTrack's data rules: {text}")
        return {"cards": [card.model_dump(exclude_none=True)]}
    cards = cards_for(result.assessments, public, svc.settings.cds_info_cards,
                      smart=svc.settings.smart_clients_path.exists())
    try:
        await run_in_threadpool(svc.audit.record_cards, caller.issuer.clinic, [
            (c.uuid, patient, a.instrument, c.indicator, a.flag.state) for c, a in cards])
    except AuditUnavailable as err:
        log.error("CDS Hooks call refused: %s", err)
        return _bad(503, "audit_unavailable", f"{err}; try again later")
    return {"cards": [c.model_dump(exclude_none=True) for c, _ in cards]}


@cds.post("/{service_id}/feedback")
async def feedback_route(service_id: str, request: Request):
    svc, caller, refusal = await _admit(service_id, request)
    if refusal is not None:
        return refusal
    body, error = await _json(request, FeedbackRequest)
    if error is not None:
        return error
    rows = []
    for n, f in enumerate(body.feedback):
        owner = svc.audit.card_owner(f.card, caller.issuer.clinic)
        if owner is None:
            return _bad(400, "unknown_card", "OnTrack did not issue this card to this EHR",
                        f"feedback[{n}].card")
        reason = (f.overrideReason or {}).get("reason") or {}
        code = reason.get("code") if isinstance(reason, dict) else None
        comment = bool((f.overrideReason or {}).get("userComment"))
        rows.append((f.card, owner, f.outcome, code if isinstance(code, str) else None,
                     comment, f.outcomeTimestamp))
    try:
        n = await run_in_threadpool(svc.audit.record_feedback, caller.issuer.clinic, rows)
    except AuditUnavailable as err:
        log.error("CDS Hooks feedback refused: %s", err)
        return _bad(503, "audit_unavailable", f"{err}; send it again later")
    return {"recorded": n}
