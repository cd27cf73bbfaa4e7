"""The web view's in-memory state: the browser sessions of one service and the caseload each
holds, kept in this process's memory only (at most ``ONTRACK_UI_MAX_SESSIONS`` sessions, the
oldest evicted; a session ends when idle, when its key is revoked, or at its end time).

May import: the standard library, pandas, `serving.auth` (the key store) and bentoml (the
current service). Nothing of HTTP, pages or assessment: the other modules of the web view build
on this one.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


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
