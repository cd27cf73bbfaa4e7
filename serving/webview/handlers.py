"""The web view's request handlers and its Starlette routes (sign-in, caseload, upload, demo,
client page, model card, static files); `serving.ui` composes `routes` with the SMART launch
into the app mounted at ``/ui``.

May import: starlette, pandas, `features.contract`, `serving.charts` and the other modules of
this package; the assessment comes from the service's bundle (models/), never from training.
"""

from __future__ import annotations

import logging

import pandas as pd
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from features.contract import read_table
from serving import charts
from serving.webview.caseload import Problem, _assess_cohort, _status
from serving.webview.clinical import _charts, _checklist, _fmt
from serving.webview.multipart import _InMemoryParser
from serving.webview.pages import SERVING_DIR, _page, _path, _to_login, _unavailable
from serving.webview.sessions import COOKIE, _session, set_session_cookie

log = logging.getLogger("serving.webview")


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
async def caseload(request: Request) -> Response:
    st, s = _session(request)
    if s is None:
        return _to_login(request) if st else _unavailable(request)
    return _page(request, "caseload.html", session=s, caseload=s.caseload, problems=[],
                 demo=st.settings.demo_path)


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
    Mount("/static", StaticFiles(directory=str(SERVING_DIR / "static")), name="static"),
]
