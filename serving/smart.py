"""SMART App Launch 2.x (EHR launch) of the web view, with PKCE S256 (authlib does the OAuth).

1. The EHR opens ``/ui/smart/launch?iss=<its FHIR base>&launch=<opaque>``. ``iss`` must be on
   the list in ``ONTRACK_SMART_CLIENTS_PATH`` (JSON ``{"clients": [{"iss", "client_id",
   "clinic"}]}``: the client id the EHR registered for OnTrack, and the clinic its assessments
   are audited under). OnTrack reads ``{iss}/.well-known/smart-configuration``, refuses a server
   that does not offer PKCE S256, and sends the browser to the authorisation endpoint with
   ``launch``, ``aud=iss``, a random ``state`` and an S256 code challenge. The state and the
   code verifier stay on the server; the browser holds the state in a short-lived cookie
   (SameSite=Lax: it has to survive the EHR's redirect back).
2. ``/ui/smart/callback?code&state``: the state must match the cookie's; the code is exchanged
   (with the verifier) for an access token and the patient in context; the patient's
   QuestionnaireResponses and survey Observations are read from ``iss`` with that token,
   mapped and assessed like every other input (`serving.fhir.inbound`, ``OnTrack.assess_fhir``,
   the same rules and audit), and the browser session opens on that client's page. No OnTrack
   key is asked for: the EHR's session is the login.

Nothing from the EHR is stored beyond the browser session (in memory, as for uploads); the
session ends when the EHR's access token expires, or earlier when idle. The access token is
never written anywhere and is dropped after the read.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from serving import webview
from serving.audit import AuditUnavailable
from serving.fhir.client import FetchError, patient_measures
from serving.schemas import to_frames

log = logging.getLogger("serving.smart")

SCOPES = ("launch openid fhirUser patient/Patient.rs patient/Observation.rs "
          "patient/QuestionnaireResponse.rs")
QUERIES = ("Observation?subject=Patient/{patient}&category=survey",
           "QuestionnaireResponse?subject=Patient/{patient}")
STATE_COOKIE = "ontrack_smart_state"
PENDING_SECONDS = 600  # OnTrack heuristic: time allowed between launch and callback
DEFAULT_LIFETIME = 3600.0  # OnTrack heuristic: session length when the token has no expires_in
MAX_PENDING = 1000  # OnTrack heuristic: launches in progress kept in memory (oldest dropped)


@dataclass(frozen=True)
class Client:
    iss: str
    client_id: str
    clinic: str


@dataclass
class Pending:
    client: Client
    verifier: str
    token_endpoint: str
    redirect_uri: str
    started: float


def load_clients(path: Path | None) -> dict[str, Client]:
    if path is None or not Path(path).exists():
        return {}
    doc = json.loads(Path(path).read_text())
    return {c["iss"].rstrip("/"): Client(c["iss"].rstrip("/"), c["client_id"],
                                         c.get("clinic") or c["iss"])
            for c in doc.get("clients", [])}


_pending: dict[str, Pending] = {}
_lock = threading.Lock()


def _keep(state: str, p: Pending) -> None:
    now = time.monotonic()
    with _lock:
        for k in [k for k, v in _pending.items() if now - v.started > PENDING_SECONDS]:
            del _pending[k]
        while len(_pending) >= MAX_PENDING:
            del _pending[next(iter(_pending))]
        _pending[state] = p


def _take(state: str) -> Pending | None:
    with _lock:
        p = _pending.pop(state, None)
    if p is None or time.monotonic() - p.started > PENDING_SECONDS:
        return None
    return p


def _oauth(client: Client, redirect_uri: str):
    from authlib.integrations.httpx_client import OAuth2Client

    return OAuth2Client(client.client_id, redirect_uri=redirect_uri, scope=SCOPES,
                        code_challenge_method="S256", timeout=10)


def _message(request: Request, status: int, title: str, message: str) -> Response:
    return webview._page(request, "message.html", status, title=title, message=message)


async def launch(request: Request) -> Response:
    st = webview._state()
    if st is None:
        return webview._unavailable(request)
    iss = (request.query_params.get("iss") or "").rstrip("/")
    launch_id = request.query_params.get("launch") or ""
    clients = load_clients(st.settings.smart_clients_path)
    client = clients.get(iss)
    if client is None or not launch_id:
        return _message(request, 400, "Launch refused", "This launch did not come from an EHR "
                        "registered with OnTrack (iss), or carried no launch context. Ask "
                        "the EHR team to register OnTrack (docs/ehr.md).")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{iss}/.well-known/smart-configuration",
                               headers={"Accept": "application/json"})
        config = r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        config = {}
    auth_url, token_url = config.get("authorization_endpoint"), config.get("token_endpoint")
    if not auth_url or not token_url:
        return _message(request, 502, "EHR not reachable", "The EHR's SMART configuration "
                        "could not be read; try the launch again.")
    if "S256" not in (config.get("code_challenge_methods_supported") or []):
        return _message(request, 502, "Launch refused", "The EHR's authorisation server does "
                        "not offer PKCE with S256, which OnTrack requires.")
    redirect_uri = str(request.url_for("smart_callback"))
    verifier = secrets.token_urlsafe(48)
    url, state = _oauth(client, redirect_uri).create_authorization_url(
        auth_url, code_verifier=verifier, aud=iss, launch=launch_id)
    _keep(state, Pending(client, verifier, token_url, redirect_uri, time.monotonic()))
    resp = RedirectResponse(url, status_code=302)
    resp.set_cookie(STATE_COOKIE, state, max_age=PENDING_SECONDS, httponly=True,
                    samesite="lax", path=webview._path(request, "home"),
                    secure=request.url.scheme == "https")
    resp.headers.update(webview.headers(st.settings))
    return resp


def _lifetime(expires_in: Any) -> float:
    """Seconds the browser session may last: the access token's lifetime, or
    `DEFAULT_LIFETIME` when the EHR does not say."""
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and \
            expires_in > 0:
        return float(expires_in)
    return DEFAULT_LIFETIME


def _exchange(p: Pending, code: str) -> dict[str, Any]:
    with _oauth(p.client, p.redirect_uri) as oauth:
        return dict(oauth.fetch_token(p.token_endpoint, grant_type="authorization_code",
                                      code=code, code_verifier=p.verifier,
                                      client_id=p.client.client_id))


async def callback(request: Request) -> Response:
    st = webview._state()
    if st is None:
        return webview._unavailable(request)
    state = request.query_params.get("state") or ""
    cookie = request.cookies.get(STATE_COOKIE) or ""
    if request.query_params.get("error"):
        return _message(request, 403, "Launch not authorised",
                        "The EHR did not authorise OnTrack for this launch.")
    pending = _take(state) if state and secrets.compare_digest(state, cookie) else None
    code = request.query_params.get("code")
    if pending is None or not code:
        return _message(request, 400, "Launch expired", "This launch is unknown, expired or "
                        "was opened in another browser; start it again from the EHR.")
    try:
        tok = await run_in_threadpool(_exchange, pending, code)
    except Exception as err:  # authlib's OAuth errors and network errors alike
        log.warning("SMART token exchange failed (%s)", type(err).__name__)
        return _message(request, 502, "Launch failed", "The EHR did not issue an access "
                        "token; start the launch again.")
    patient = tok.get("patient")
    access = tok.get("access_token")
    if not isinstance(patient, str) or not patient or "/" in patient or not access:
        return _message(request, 400, "No patient in context", "The EHR launched OnTrack "
                        "without a patient; open it from a patient's record.")
    svc = st.service
    try:
        resources = await run_in_threadpool(patient_measures, pending.client.iss, patient,
                                            access, svc.settings.cds_fetch_timeout, QUERIES)
    except FetchError as err:
        return _message(request, 502, "Measures not readable", str(err))
    lifetime = _lifetime(tok.get("expires_in"))
    del access, tok
    if not resources:
        return _message(request, 404, "No outcome measures", "The EHR holds no outcome or "
                        "alliance measures OnTrack knows for this patient.")
    doc = {"resourceType": "Bundle", "type": "collection",
           "entry": [{"resource": r} for r in resources]}
    try:
        result = await run_in_threadpool(svc.assess_fhir, doc, pending.client.clinic)
    except AuditUnavailable as err:
        return _message(request, 503, "Assessment not possible now", f"{err}; no assessment "
                        "is shown without its audit row. Try again later.")
    if result.status != 200:
        text = "; ".join(f"{i.expression}: {i.message}" for i in result.problems[:5])
        return _message(request, 422, "Measures not assessable",
                        f"The measures in the record break OnTrack's data rules: {text}")
    sessions = to_frames(result.parsed.request).sessions
    caseload = webview.make_caseload("EHR launch", result.assessments, sessions)
    sid = st.new_session(None, pending.client.clinic, caseload,
                         ends=time.monotonic() + lifetime)
    resp = RedirectResponse(webview._path(request, "client", n=0), status_code=303)
    webview.set_session_cookie(request, resp, sid, st.settings)
    resp.delete_cookie(STATE_COOKIE, path=webview._path(request, "home"))
    resp.headers.update(webview.headers(st.settings))
    return resp


routes = [
    Route("/smart/launch", launch, name="smart_launch"),
    Route("/smart/callback", callback, name="smart_callback"),
]
