"""The web view: a small Starlette app mounted on the prediction service at ``/ui``
(``@bentoml.asgi_app(webapp, path="/ui")`` in serving/service.py; the app is composed in
`serving.ui` from these routes and the SMART launch of `serving.smart`).

It renders what the API returns; it computes nothing of its own. Every assessment comes from
the service's loaded bundle (``bentoml.get_current_service().bundle.assess``), after the data
contract's rules (`features.contract.validate_frames`, the rule set of ``ontrack validate``),
and is written to the same audit log as ``POST /v1/assess``. The signal reason, risk,
agreement, drivers and suggestions on the pages are the assessment's own fields.

Routes (relative to ``/ui``; see docs/webview.md):

* ``GET /login``, ``POST /login``, ``POST /logout``: the clinic's bearer key, asked once per
  browser session and checked by `serving.auth.KeyStore.authorize` exactly as the API checks it
  (scope ``assess``). The browser gets an opaque random session id in an HttpOnly, SameSite=Strict
  session cookie; the key stays on the server (in memory) and is re-checked on every request,
  so a revoked key ends the session.
* ``GET /caseload``, ``POST /caseload/upload`` (multipart: ``sessions`` file, optional
  ``clients`` file), ``POST /caseload/demo``: every client of the file, safety flags first,
  then open not-on-track flags, then by risk.
* ``GET /client/{n}``: the n-th client of the session's caseload (an index, so that no client
  id ever appears in a URL or an access log).
* ``GET /model``: the model card as a page (open, like ``GET /v1/model``: no client data).
* ``GET /static/...``: the stylesheet (no scripts, fonts or chart libraries from anywhere).

Uploaded files are parsed in memory (never spooled to disk), assessed, and kept only in this
process's memory under the browser session's id, at most one caseload per session and at most
``ONTRACK_UI_MAX_SESSIONS`` sessions (oldest evicted); nothing is written to disk except the
audit rows the API writes too (pseudonyms, no scores). The service runs one worker
(``workers=1``), so the memory is shared by all requests.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from features.contract import check_assessable, read_table, validate_frames
from features.instruments import REGISTRY, Role
from serving import charts
from serving.audit import AuditUnavailable

log = logging.getLogger("serving.webview")

HERE = Path(__file__).resolve().parent
COOKIE = "ontrack_ui"
_ALLIANCE = frozenset(c for c, i in REGISTRY.items() if i.role is Role.ALLIANCE)
_SUPPORT = frozenset(c for c, i in REGISTRY.items() if i.role is Role.SUPPORT)

#: Signal colour -> (words, shape): the colour is never the only cue.
SIGNALS: dict[str, tuple[str, str]] = {
    "red": ("Not on track", "■"),
    "yellow": ("Less progress than expected", "▲"),
    "green": ("On track", "●"),
    "white": ("In the functional range", "○"),
    "grey": ("Too few scores to compare", "◌"),
}
SAFETY: dict[str, tuple[str, str]] = {
    "flag": ("Risk item above zero", "⚠"),
    "not_assessed": ("Risk not assessed", "?"),
    "not_endorsed": ("Not endorsed", "–"),
}
#: Flag state -> (words, shape).
FLAGS: dict[str, tuple[str, str]] = {
    "new": ("Not on track: new", "■"),
    "continuing": ("Not on track", "■"),
    "cleared": ("Flag cleared", "□"),
    "none": ("Not flagged", "·"),
}


# ------------------------------------------------------------------------------------------
# In-memory state: browser sessions and their caseload
# ------------------------------------------------------------------------------------------
@dataclass
class Caseload:
    source: str
    assessments: list[Any]  # models.assess.Assessment, in caseload order (_caseload_order)
    rows: list[dict[str, Any]]
    sessions: pd.DataFrame  # the validated sessions of these clients (memory only)
    n_flags: int = 0


@dataclass
class UiSession:
    key: str | None  # re-checked on every request (revocation ends the session); None for a
    # session opened by a SMART launch, which ends when the EHR's access token expires
    clinic: str
    seen: float = field(default_factory=time.monotonic)
    caseload: Caseload | None = None
    ends: float | None = None  # time.monotonic() at which the session ends, if set


class _State:
    def __init__(self, service: Any) -> None:
        from serving.auth import KeyStore

        self.service = service
        self.settings = service.settings  # one settings object (serving/settings.py)
        self.keys = KeyStore(service.settings.keys_path)
        self.sessions: OrderedDict[str, UiSession] = OrderedDict()
        self.lock = threading.Lock()

    def new_session(self, key: str | None, clinic: str, caseload: Caseload | None = None,
                    ends: float | None = None) -> str:
        sid = secrets.token_urlsafe(32)
        with self.lock:
            self.sessions[sid] = UiSession(key=key, clinic=clinic, caseload=caseload, ends=ends)
            while len(self.sessions) > self.settings.ui_max_sessions:
                self.sessions.popitem(last=False)
        return sid

    def get(self, sid: str | None) -> UiSession | None:
        if not sid:
            return None
        now = time.monotonic()
        with self.lock:
            s = self.sessions.get(sid)
            if s is None:
                return None
            if now - s.seen > self.settings.ui_idle_minutes * 60 or (
                    s.ends is not None and now >= s.ends):
                del self.sessions[sid]
                return None
            s.seen = now
            self.sessions.move_to_end(sid)
        if self.service.settings.require_auth and s.key is not None:
            if not self.keys.authorize(f"Bearer {s.key}", "assess").ok:
                self.drop(sid)
                return None
        return s

    def drop(self, sid: str | None) -> None:
        with self.lock:
            self.sessions.pop(sid or "", None)


_states: dict[int, _State] = {}
_states_lock = threading.Lock()


def _service() -> Any | None:
    import bentoml

    try:
        return bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return None


def _state() -> _State | None:
    svc = _service()
    if svc is None:
        return None
    with _states_lock:
        st = _states.get(id(svc))
        if st is None or st.service is not svc:
            st = _states[id(svc)] = _State(svc)
    return st


# ------------------------------------------------------------------------------------------
# Rendering helpers
# ------------------------------------------------------------------------------------------
templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes .html

_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def headers(settings: Any = None) -> dict[str, str]:
    """Security headers of every page; ``frame-ancestors`` from ONTRACK_UI_FRAME_ANCESTORS
    ('none' unless the web view is embedded in an EHR)."""
    ancestors = getattr(settings, "ui_frame_ancestors", None) or "'none'"
    return {"Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' "
            f"data:; form-action 'self'; frame-ancestors {ancestors}; base-uri 'none'",
            **_HEADERS}


def set_session_cookie(request: Request, resp: Response, sid: str, settings: Any) -> None:
    """The browser session's cookie: HttpOnly, SameSite from ONTRACK_UI_COOKIE_SAMESITE
    (strict unless embedded: an EHR's iframe needs none, which browsers accept only with
    Secure), Secure on https."""
    same = getattr(settings, "ui_cookie_samesite", "strict")
    resp.set_cookie(COOKIE, sid, httponly=True, samesite=same, path=_path(request, "home"),
                    secure=request.url.scheme == "https" or same == "none")


def _path(request: Request, name: str, **params: Any) -> str:
    return request.url_for(name, **params).path


def _page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    st = _state()
    context.setdefault("session", None)
    resp = templates.TemplateResponse(request, template, {
        "u": lambda name, **kw: _path(request, name, **kw), "SIGNALS": SIGNALS,
        "SAFETY": SAFETY, "FLAGS": FLAGS, "model_version": st.service.bundle.version if st else None,
        **context}, status_code=status)
    resp.headers.update(headers(st.settings if st else None))
    return resp


def _to_login(request: Request) -> Response:
    resp = RedirectResponse(_path(request, "login"), status_code=303)
    st = _state()
    resp.headers.update(headers(st.settings if st else None))
    return resp


def _session(request: Request) -> tuple[_State | None, UiSession | None]:
    st = _state()
    if st is None:
        return None, None
    return st, st.get(request.cookies.get(COOKIE))


def _unavailable(request: Request) -> Response:
    return _page(request, "message.html", 503, title="Service starting",
                 message="The service is not ready yet; try again in a moment.")


# ------------------------------------------------------------------------------------------
# Access
# ------------------------------------------------------------------------------------------
async def home(request: Request) -> Response:
    _, s = _session(request)
    return RedirectResponse(_path(request, "caseload" if s else "login"), status_code=303)


async def login(request: Request) -> Response:
    st, s = _session(request)
    if st is None:
        return _unavailable(request)
    if request.method == "GET":
        if s is not None:
            return RedirectResponse(_path(request, "caseload"), status_code=303)
        return _page(request, "login.html", error=None)
    form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
    key = str(form.get("key") or "").strip()
    if st.service.settings.require_auth:
        result = st.keys.authorize(f"Bearer {key}" if key else None, "assess")
        if not result.ok:
            msg = ("Enter the clinic's key." if not key else
                   "This key may not view assessments (scope assess needed)."
                   if result.status == 403 else
                   "That key is not valid: unknown, malformed or revoked.")
            return _page(request, "login.html", status=result.status, error=msg)
        clinic = result.clinic or "unknown"
    else:
        clinic = "unauthenticated"
    sid = st.new_session(key, clinic)
    resp = RedirectResponse(_path(request, "caseload"), status_code=303)
    set_session_cookie(request, resp, sid, st.settings)
    return resp


async def logout(request: Request) -> Response:
    st, _ = _session(request)
    if st is not None:
        st.drop(request.cookies.get(COOKIE))
    resp = RedirectResponse(_path(request, "login"), status_code=303)
    resp.delete_cookie(COOKIE, path=_path(request, "home"))
    return resp


# ------------------------------------------------------------------------------------------
# Caseload
# ------------------------------------------------------------------------------------------
@dataclass
class Problem:
    table: str
    row: int | None
    rule: str
    message: str


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _trend(a: Any) -> dict[str, str]:
    inst = REGISTRY.get(a.instrument)
    first, last = a.change.intake_score, a.change.latest_score
    delta = last - first
    better = (delta > 0) == bool(inst and inst.higher_is_better) if delta else None
    arrow = "↑" if delta > 0 else "↓" if delta < 0 else "→"
    return {"arrow": arrow, "words": a.change.summary,
            "from_to": f"{_fmt(first)} → {_fmt(last)}", "better": "" if better is None else
            ("better" if better else "worse")}


def _row(i: int, a: Any, last_dates: dict[str, str]) -> dict[str, Any]:
    r = a.risk
    return {"n": i, "client_id": a.client_id, "instrument": a.instrument, "session": a.session,
            "date": last_dates.get(a.client_id, ""), "colour": a.signal.colour,
            "p_failure": None if r is None else r.p_failure,
            "risk_pct": "–" if r is None else f"{100 * r.p_failure:.0f}%",
            "flag": a.flag.state, "flagged": a.flag.flagged, "eligible": a.flag.eligible,
            "safety": a.safety.status, "safety_session": a.safety.assessed_session,
            "trend": _trend(a), "oop": a.population.out_of_population}


def _caseload_order(a: Any) -> tuple:
    """Safety flags first, then open flags (new before continuing), then by risk."""
    rank = {"new": 0, "continuing": 1, "cleared": 2, "none": 2}[a.flag.state]
    return (a.safety.status != "flag", rank, -(a.risk.p_failure if a.risk else -1.0))


def _assess_cohort(st: _State, clinic: str, sessions: pd.DataFrame,
                   clients: pd.DataFrame | None, source: str
                   ) -> tuple[Caseload | None, list[Problem], int]:
    """Validate with the contract's rules, then assess with the service's bundle."""
    cohort, report = validate_frames(sessions, clients)
    problems = [Problem(v.table, v.row, v.rule, v.message) for v in report.violations]
    if problems:
        return None, problems, 0
    s = cohort.sessions
    ids = pd.unique(s["client_id"])
    problems = [Problem(v.table, v.row, v.rule, v.message)
                for v in check_assessable(s, st.service.settings.max_clients)]
    if problems:
        return None, problems, 0
    cov = None
    if len(cohort.clients):
        extra = [c for c in cohort.clients.columns if c not in {"client_id", "end_status"}]
        if extra:
            cov = cohort.clients.set_index("client_id")[extra].astype("string")
    svc = st.service
    assessments = svc.bundle.assess(s, cov, horizon=svc.settings.horizon)
    try:
        svc.audit.record(uuid.uuid4().hex, clinic, assessments)
    except AuditUnavailable as err:  # never a caseload without its audit rows
        return None, [Problem("audit", None, "audit_unavailable",
                              f"{err}; nothing is shown without its audit row, try again "
                              "later")], 0
    return make_caseload(source, assessments, s), [], len(ids)


def make_caseload(source: str, assessments: list[Any], s: pd.DataFrame) -> Caseload:
    """The caseload of assessed clients: safety and open flags first (`_caseload_order`),
    with the sessions frame their charts are drawn from."""
    assessments = sorted(assessments, key=_caseload_order)
    last_dates: dict[str, str] = {}
    if "date" in s.columns and s["date"].notna().any():
        last = s.dropna(subset=["date"]).groupby("client_id")["date"].max()
        last_dates = {str(k): v.date().isoformat() for k, v in last.items()}
    rows = [_row(i, a, last_dates) for i, a in enumerate(assessments)]
    return Caseload(source, assessments, rows, s, sum(a.safety.status == "flag"
                                                      for a in assessments))


def _status(problems: list[Problem]) -> int:
    """503 when the audit log is down (try again), else 422 (the data break a rule)."""
    return 503 if any(p.rule == "audit_unavailable" for p in problems) else 422


async def caseload(request: Request) -> Response:
    st, s = _session(request)
    if s is None:
        return _to_login(request) if st else _unavailable(request)
    return _page(request, "caseload.html", session=s, caseload=s.caseload, problems=[],
                 demo=st.settings.demo_path)


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with file parts kept in memory (its default spools any
    part over 1 MB to a temporary file on disk: an upload must never touch the disk)."""

    spool_max_size = 2**62


async def upload(request: Request) -> Response:
    st, s = _session(request)
    if s is None:
        return _to_login(request) if st else _unavailable(request)
    cap = st.settings.ui_max_upload_bytes
    declared = request.headers.get("content-length", "")
    problems: list[Problem] = []
    if declared.isdigit() and int(declared) > cap:
        problems = [Problem("upload", None, "upload_too_large",
                            f"the upload is larger than {cap:,} bytes")]
    else:
        received = 0

        async def stream():
            nonlocal received
            async for chunk in request.stream():
                received += len(chunk)
                if received > cap:
                    raise MultiPartException(f"the upload is larger than {cap:,} bytes")
                yield chunk

        try:
            form = await _InMemoryParser(request.headers, stream(), max_files=2,
                                         max_fields=4).parse()
        except MultiPartException as err:
            problems = [Problem("upload", None, "upload_invalid", str(err.message))]
            form = None
    if not problems:
        files = {k: v for k, v in form.multi_items() if isinstance(v, UploadFile) and v.filename}
        if "sessions" not in files:
            problems = [Problem("upload", None, "file_missing",
                                "choose a sessions file (CSV in the data contract's format)")]
        else:
            try:
                tables = {k: read_table(await f.read(), f.filename or "") for k, f in files.items()}
            except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
                tables = None
                problems = [Problem("upload", None, "unreadable",
                                    f"the file could not be read as CSV ({type(err).__name__})")]
            finally:
                for f in files.values():
                    await f.close()
            if tables is not None:
                name = files["sessions"].filename or "upload"
                cl, problems, _ = _assess_cohort(st, s.clinic, tables["sessions"],
                                                 tables.get("clients"), f"upload: {name}")
                if cl is not None:
                    s.caseload = cl
    if problems:
        return _page(request, "caseload.html", status=_status(problems), session=s,
                     caseload=s.caseload, problems=problems[:100], n_problems=len(problems),
                     demo=st.settings.demo_path)
    return RedirectResponse(_path(request, "caseload"), status_code=303)


async def demo(request: Request) -> Response:
    st, s = _session(request)
    if s is None:
        return _to_login(request) if st else _unavailable(request)
    from features.contract import read_table

    path = st.settings.demo_path
    if not path.exists():
        problems = [Problem("demo", None, "demo_missing", f"no demo cohort at {path}: run "
                            "`uv run ontrack demo` first (or set ONTRACK_DEMO_PATH)")]
        return _page(request, "caseload.html", status=404, session=s, caseload=s.caseload,
                     problems=problems, n_problems=1, demo=path)
    sessions = read_table(path)
    keep = pd.unique(sessions["client_id"].dropna())[: st.settings.demo_clients]
    sessions = sessions[sessions["client_id"].isin(keep)]
    clients = None
    for ext in (".csv", ".parquet"):
        cpath = path.with_name(f"clients{ext}")
        if cpath.exists():
            clients = read_table(cpath)
            clients = clients[clients["client_id"].isin(keep)]
            break
    cl, problems, _ = _assess_cohort(st, s.clinic, sessions, clients,
                                     f"demo cohort (first {len(keep)} clients)")
    if cl is None:
        return _page(request, "caseload.html", status=_status(problems), session=s,
                     caseload=s.caseload, problems=problems[:100], n_problems=len(problems),
                     demo=path)
    s.caseload = cl
    return RedirectResponse(_path(request, "caseload"), status_code=303)


# ------------------------------------------------------------------------------------------
# Client page
# ------------------------------------------------------------------------------------------
def _checklist(a: Any, history: pd.DataFrame) -> dict[str, Any] | None:
    """The latest clinical-support checklist at or before the assessed session, one line per
    domain in words (a table, not a chart: the total of a checklist is not a course)."""
    from models.explain import TEMPLATES
    from models.suggestions import CHECKLIST_CUTOFF

    h = history[history["instrument"].isin(_SUPPORT) & (history["session"] <= a.session)]
    if h.empty:
        return None
    last = h.sort_values("session").iloc[-1]
    inst = REGISTRY[last["instrument"]]
    rows = []
    for k, domain in enumerate(inst.domains, start=1):
        v = last.get(f"item_{k}")
        v = float(v) if v is not None and pd.notna(v) else float("nan")
        text = TEMPLATES[f"checklist_{domain}"].template(v, REGISTRY[a.instrument], {})
        rows.append({"domain": domain, "rating": v, "text": text,
                     "flag": bool(v >= CHECKLIST_CUTOFF.get(domain, float("inf")))})
    return {"code": inst.code, "name": inst.name, "session": int(last["session"]),
            "rows": rows, "cutoff": inst.item_cutoff}


def _charts(st: _State, a: Any, history: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    order = [a.instrument] + sorted(set(history["instrument"]) - {a.instrument} - _SUPPORT,
                                    key=lambda c: (c in _ALLIANCE, c))
    for code in order:
        inst = REGISTRY.get(code)
        h = history[history["instrument"] == code].sort_values("session")
        observed = [(int(x), float(y)) for x, y in zip(h["session"], h["score"], strict=True)]
        if inst is None or not observed:
            continue
        uid = f"chart-{code.lower().replace('-', '')}"
        if code in _ALLIANCE:
            svg = charts.alliance_svg(uid, code, observed, y_min=inst.score_min,
                                      y_max=inst.score_max, cutoff=inst.cutoff)
            note = (f"Cut-off {_fmt(inst.cutoff)}: a rating below it signals a possible "
                    "alliance problem worth raising with the client." if inst.cutoff
                    is not None else "No published cut-off for this instrument.")
            out.append({"code": code, "name": inst.name, "kind": "alliance", "svg": svg,
                        "note": note, "observed": observed, "course": []})
            continue
        course: list[charts.CoursePoint] = []
        note = ""
        if code == a.instrument and a.course:
            course = [charts.CoursePoint(c.session, c.expected, c.lower, c.upper,
                                         c.failure_boundary, c.band_lower, c.band_upper)
                      for c in (*a.course_so_far, *a.course)]
            note = ("Past sessions: the band and boundary expected from the sessions before "
                    f"each one; sessions {a.course[0].session}–{a.course[-1].session}: the "
                    "expected course from today's assessment.")
        elif code == a.instrument:
            note = "No expected course is available for this client."
        else:
            note = (f"The assessment is based on {a.instrument}; {code} is shown as observed "
                    "scores only.")
        svg = charts.trajectory_svg(uid, code, observed, course, y_min=inst.score_min,
                                    y_max=inst.score_max, cutoff=inst.cutoff,
                                    higher_is_better=inst.higher_is_better)
        out.append({"code": code, "name": inst.name, "kind": "outcome", "svg": svg,
                    "note": note, "observed": observed, "course": course})
    return out


async def client_page(request: Request) -> Response:
    st, s = _session(request)
    if s is None:
        return _to_login(request) if st else _unavailable(request)
    n = request.path_params["n"]
    cl = s.caseload
    if cl is None or not 0 <= n < len(cl.assessments):
        return _page(request, "message.html", 404, session=s, title="No such client",
                     message="This client is not in the caseload loaded in this browser "
                     "session. Load a caseload first.")
    a = cl.assessments[n]
    history = cl.sessions[cl.sessions["client_id"] == a.client_id]
    drivers = a.explanation.drivers if a.explanation else []
    bars = [charts.Bar(d.concept, d.percentage_points) for d in drivers]
    return _page(request, "client.html", session=s, a=a, row=cl.rows[n], n=n,
                 total=len(cl.assessments), charts=_charts(st, a, history),
                 checklist=_checklist(a, history),
                 drivers_svg=charts.drivers_svg("chart-drivers", bars) if bars else None,
                 drivers=sorted(drivers, key=lambda d: -abs(d.percentage_points)),
                 fmt=_fmt)


# ------------------------------------------------------------------------------------------
# Model card (open: no client data)
# ------------------------------------------------------------------------------------------
_LABELS = {
    "failure_model": "risk model (not improving)", "dropout_model": "dropout model",
    "failure_rate": "share not improving", "dropout_rate": "share dropping out",
    "n_clients": "clients", "n_rows": "rows", "intake_range": "intake range",
    "covariate_levels": "covariate levels", "auroc": "AUROC", "brier": "Brier score",
    "cal_slope": "calibration slope", "lo": "lower 95%", "hi": "upper 95%",
}


def label(key: Any) -> str:
    """A card key in words ("not improving", never "failure")."""
    k = str(key)
    if k in _LABELS:
        return _LABELS[k]
    return k.replace("p_failure", "risk").replace("failure", "not improving").replace("_", " ")


templates.env.filters["label"] = label


async def model_page(request: Request) -> Response:
    st, s = _session(request)
    if st is None:
        return _unavailable(request)
    card = st.service.card.model_dump()
    return _page(request, "model.html", session=s, card=card)


# ------------------------------------------------------------------------------------------
#: The web view's routes; `serving.ui` composes them with the SMART launch into the app.
routes = [
    Route("/", home, name="home"),
    Route("/login", login, methods=["GET", "POST"], name="login"),
    Route("/logout", logout, methods=["POST"], name="logout"),
    Route("/caseload", caseload, name="caseload"),
    Route("/caseload/upload", upload, methods=["POST"], name="upload"),
    Route("/caseload/demo", demo, methods=["POST"], name="demo"),
    Route("/client/{n:int}", client_page, name="client"),
    Route("/model", model_page, name="model"),
    Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
]
