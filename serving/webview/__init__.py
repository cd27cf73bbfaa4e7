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

The package, one responsibility per module (each imports only those above it in this list):

* `serving.webview.store`: the in-memory state, browser sessions and their caseloads.
* `serving.webview.clinical`: what the pages show about a client, from the assessment's fields.
* `serving.webview.pages`: templates, security headers, URLs, the common answers.
* `serving.webview.sessions`: the session cookie and the request's session.
* `serving.webview.caseload`: a caseload loaded: contract rules, the bundle, the audit row.
* `serving.webview.multipart`: multipart parsing kept in memory.
* `serving.webview.handlers`: the request handlers and `routes`, their Starlette routes.

May import: starlette, pandas, bentoml, features and models (never training), and the serving
modules named above (`serving.auth`, `serving.audit`, `serving.charts`). The names re-exported
here are the ones `serving.smart`, `serving.ui` and the tests use.
"""

from __future__ import annotations

from serving.webview.caseload import make_caseload
from serving.webview.handlers import routes
from serving.webview.pages import _page, _path, _unavailable, headers
from serving.webview.sessions import set_session_cookie
from serving.webview.store import _State, _state

__all__ = ["_State", "_page", "_path", "_state", "_unavailable", "headers", "make_caseload",
           "routes", "set_session_cookie"]
