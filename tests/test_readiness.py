"""Readiness and the rate limit as units: the reasons given for a store that is missing,
locked or not a database; retries until the model loads; the token bucket's arithmetic.
(The same behaviour on a real service process: tests/test_faults.py.)"""

from __future__ import annotations

import sqlite3
import time

import pytest

from serving import readiness
from serving.ratelimit import RateLimiter
from serving.readiness import NotReady, Status, check_store, classify, load_until_ready


def test_a_missing_store_is_refused_before_mlflow_could_create_it(tmp_path):
    where = tmp_path / "mlflow.db"
    with pytest.raises(NotReady) as err:
        check_store(f"sqlite:///{where}")
    assert err.value.code == "store_missing" and str(tmp_path) not in err.value.message
    assert not where.exists()


def test_a_locked_store_and_a_file_that_is_no_database(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE t (x)")
    con.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(NotReady) as err:
            check_store(f"sqlite:///{db}")
        assert err.value.code == "store_locked"
    finally:
        con.close()
    check_store(f"sqlite:///{db}")  # free again: no complaint
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(NotReady) as err:
        check_store(f"sqlite:///{junk}")
    assert err.value.code == "store_unreadable"
    check_store("http://mlflow.example:5000")  # a server: checked by MLflow itself


def test_failures_are_classified_by_what_a_person_can_do():
    from features.pointintime import FeatureMismatchError
    from serving.loader import ModelNotFoundError

    assert classify(ModelNotFoundError("x")).code == "model_not_found"
    assert classify(FeatureMismatchError("x")).code == "model_incompatible"
    assert classify(RuntimeError("(sqlite3.OperationalError) database is locked")).code == \
        "store_locked"
    got = classify(EOFError("Ran out of input"))
    assert got.code == "artefact_unreadable" and "EOFError" in got.message


def test_loading_is_retried_in_the_background_until_it_works(monkeypatch):
    monkeypatch.setattr(readiness, "FIRST_RETRY_SECONDS", 0.05)
    calls = []

    def load() -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise EOFError("truncated")

    status = Status()
    load_until_ready(load, max_pause=0.1, status=status)
    assert not status.ready and status.code == "artefact_unreadable"
    assert status.as_json()["status"] == "not_ready"
    deadline = time.monotonic() + 5
    while not status.ready and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status.ready and status.attempts == 3 and len(calls) == 3
    assert status.as_json() == {"status": "ready", "reason": "ready",
                                "message": "the model is loaded", "attempts": 3,
                                "retry_in_seconds": None}


def test_the_token_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    limits = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limits.take("a") for _ in range(3)] == [0, 0, 0]
    assert limits.take("a") == 1  # one a second: wait 1 s
    assert limits.take("b") == 0  # another key has its own bucket
    now[0] = 1.0
    assert limits.take("a") == 0 and limits.take("a") == 1
    now[0] = 100.0  # refills to the burst, never beyond it
    assert [limits.take("a") for _ in range(4)] == [0, 0, 0, 1]
    slow = RateLimiter(per_minute=6, burst=1, clock=lambda: now[0])
    assert slow.take("a") == 0 and slow.take("a") == 10  # one every 10 s
    off = RateLimiter(per_minute=0, burst=1)
    assert not off.enabled and all(off.take("a") == 0 for _ in range(1000))


def test_ontrack_serve_says_why_the_service_is_not_ready():
    import http.server
    import json
    import subprocess
    import sys
    import threading

    from serving.cli import _wait_ready

    class NotReadyYet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "not_ready", "reason": "store_locked",
                               "message": "the MLflow tracking store is locked"}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotReadyYet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ready, reason = _wait_ready(f"http://127.0.0.1:{server.server_port}", alive,
                                    timeout=1.5)
    finally:
        alive.kill()
        server.shutdown()
    assert not ready and reason == "store_locked: the MLflow tracking store is locked"
