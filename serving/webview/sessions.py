"""The browser session as a request sees it: the session cookie (an opaque random id, HttpOnly;
the key stays on the server) and the lookup of the request's session in the store.

May import: starlette, `serving.webview.store` and `serving.webview.pages` (URLs by route name).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serving.webview.pages import _path
from serving.webview.store import UiSession, _State, _state

COOKIE = "ontrack_ui"


def set_session_cookie(request: Request, resp: Response, sid: str, settings: Any) -> None:
    """The browser session's cookie: HttpOnly, SameSite from ONTRACK_UI_COOKIE_SAMESITE
    (strict unless embedded: an EHR's iframe needs none, which browsers accept only with
    Secure), Secure on https."""
    same = getattr(settings, "ui_cookie_samesite", "strict")
    resp.set_cookie(COOKIE, sid, httponly=True, samesite=same, path=_path(request, "home"),
                    secure=request.url.scheme == "https" or same == "none")


def _session(request: Request) -> tuple[_State | None, UiSession | None]:
    st = _state()
    if st is None:
        return None, None
    return st, st.get(request.cookies.get(COOKIE))
