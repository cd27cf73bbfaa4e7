"""Whether the service can assess yet, and if not, why.

The service starts even when its model cannot be loaded (the MLflow store missing or locked,
no registered version, a corrupt artefact): it answers ``/livez``, reports not ready on
``/readyz`` with the reason, refuses the routes that need the model with 503 and
``Retry-After``, and tries again in the background with growing pauses. An orchestrator sees
one live process that is not ready, never a crash loop. May import `serving.settings` only.

The reason given on ``/readyz`` (open to anyone who can reach the port) is a code and a
sentence without file paths or URIs; the server log has the detail.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("serving.readiness")

#: OnTrack heuristic: first pause before a retry (seconds); each failure doubles it.
FIRST_RETRY_SECONDS = 1.0


class NotReady(RuntimeError):
    """The model cannot be loaded now: ``code`` (machine-readable) and a sentence for
    ``/readyz``; the exception's cause carries the detail for the log."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def sqlite_store_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` tracking URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def check_store(uri: str) -> None:
    """Refuse early, with the reason, a SQLite store that is missing or locked (MLflow would
    create an empty store for a missing file, and wait and fail inside its own start-up for
    a locked one)."""
    path = sqlite_store_path(uri)
    if path is None:
        return
    if not path.is_file():
        log.error("MLflow store not found: %s", path)
        raise NotReady("store_missing", "the MLflow tracking store does not exist "
                       "(ONTRACK_TRACKING_URI names a file that is not there)")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as err:
        log.error("MLflow store unreadable (%s): %s", err, path)
        if "locked" in str(err):
            raise NotReady("store_locked", "the MLflow tracking store is locked by another "
                           "process") from err
        raise NotReady("store_unreadable", "the MLflow tracking store cannot be read") from err
    except sqlite3.DatabaseError as err:
        log.error("MLflow store is not a database (%s): %s", err, path)
        raise NotReady("store_unreadable", "the MLflow tracking store is not a readable "
                       "SQLite database") from err


def classify(err: BaseException) -> NotReady:
    """Any failure of loading as a `NotReady` with a reason a person can act on."""
    if isinstance(err, NotReady):
        return err
    text = str(err)
    kind = type(err).__name__
    if "database is locked" in text:
        return NotReady("store_locked", "the MLflow tracking store is locked by another "
                        "process")
    if kind == "ModelNotFoundError":
        return NotReady("model_not_found", "no model is registered under the configured name "
                        "and alias or version (train and promote one: `ontrack train`)")
    if kind == "FeatureMismatchError":
        return NotReady("model_incompatible", "the registered model was built for another "
                        "feature version than this code")
    if kind in ("ConnectionError", "MlflowException") and "connect" in text.lower():
        return NotReady("store_unreachable", "the MLflow tracking server cannot be reached")
    return NotReady("artefact_unreadable", f"the model artefact could not be loaded ({kind})")


@dataclass
class Status:
    ready: bool = False
    code: str = "starting"
    message: str = "the model is being loaded"
    attempts: int = 0
    next_attempt: float = 0.0  # time.monotonic() of the next try

    def as_json(self) -> dict:
        return {"status": "ready" if self.ready else "not_ready", "reason": self.code,
                "message": self.message, "attempts": self.attempts,
                "retry_in_seconds": None if self.ready else
                max(0, round(self.next_attempt - time.monotonic(), 1))}


#: This worker process's readiness (read by `serving.middleware.ReadinessGate`).
STATUS = Status()


def load_until_ready(load: Callable[[], None], max_pause: float,
                     status: Status = STATUS) -> None:
    """Call ``load`` now; when it fails, record why and keep calling it from a daemon thread
    (pauses of 1, 2, 4, ... seconds up to ``max_pause``) until it succeeds."""
    status.ready, status.code, status.message, status.attempts = (
        False, "starting", "the model is being loaded", 0)
    if _attempt(load, status, FIRST_RETRY_SECONDS):
        return

    def retry() -> None:
        pause = FIRST_RETRY_SECONDS
        while True:
            time.sleep(pause)
            pause = min(pause * 2, max_pause)
            if _attempt(load, status, pause):
                return

    threading.Thread(target=retry, name="model-loader", daemon=True).start()


def _attempt(load: Callable[[], None], status: Status, pause: float) -> bool:
    status.attempts += 1
    try:
        load()
    except Exception as err:  # every failure is a reason to report, never a crash
        reason = classify(err)
        status.code, status.message = reason.code, reason.message
        status.next_attempt = time.monotonic() + pause
        log.error("not ready (%s, attempt %d): %s; %s: %s; retrying in %.0f s", reason.code,
                  status.attempts, reason.message, type(err).__name__, str(err)[:300], pause)
        return False
    status.ready, status.code, status.message = True, "ready", "the model is loaded"
    return True
