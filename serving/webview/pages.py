"""Rendering the web view's pages: the Jinja2 templates (serving/templates/, autoescaped), the
security headers every page carries, URLs by route name, and the common answers (the sign-in
redirect, "service starting").

The templates and the stylesheet stay in serving/templates/ and serving/static/ (one level
above this package), where the package data and the Bento include them.

May import: starlette, `serving.webview.store` and `serving.webview.clinical` (the legends the
templates use); nothing of models or training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from serving.webview.clinical import FLAGS, SAFETY, SIGNALS
from serving.webview.store import _state

#: serving/: its templates/ and static/ are the web view's.
SERVING_DIR = Path(__file__).resolve().parents[1]

templates = Jinja2Templates(directory=str(SERVING_DIR / "templates"))  # autoescapes .html

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


def _unavailable(request: Request) -> Response:
    return _page(request, "message.html", 503, title="Service starting",
                 message="The service is not ready yet; try again in a moment.")


# ------------------------------------------------------------------------------------------
# Model card labels (the card holds no client data)
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
