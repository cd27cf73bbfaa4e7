"""Faults, on a real service process on loopback: killed with SIGKILL under load (every
acknowledged assessment has its audit row); an audit log that cannot be written (disk full or
read-only: 503 with the reason, never an assessment without its row, and back to normal once
it can be written again); a model that cannot be loaded at start (the MLflow store missing or
locked, a corrupt artefact: live, not ready with the reason, retried, no crash loop); and the
per-key rate limit."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from serving.audit import pseudonym
from serving.schemas import EXAMPLE_INPUT
from tests.service_fixtures import kill_service, served_service, start_service, stop_service

pytestmark = pytest.mark.slow

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    with served_service(root, "clinic-faults") as s:
        yield s
        stop_service(s["proc"])


def _one(cid: str) -> dict:
    client = dict(EXAMPLE_INPUT["clients"][1])
    return {"clients": [{**client, "client_id": cid}]}


def _audited(path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT client_pseudonym FROM assessments")}


def test_a_killed_service_loses_no_acknowledged_assessment(svc):
    url, headers = svc["url"], {"Authorization": f"Bearer {svc['key']}"}
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 30

    def caller() -> None:
        with httpx.Client(timeout=10, headers=headers) as client:
            while time.monotonic() < stop:
                cid = f"k-{uuid.uuid4().hex}"
                try:
                    r = client.post(f"{url}/v1/assess", json=_one(cid))
                except httpx.HTTPError:
                    return  # the service is gone
                if r.status_code == 200:
                    with lock:
                        acknowledged.append(cid)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for t in threads:
        t.start()
    while len(acknowledged) < 40 and time.monotonic() < stop:
        time.sleep(0.05)
    kill_service(svc["proc"])  # SIGKILL to the server and its workers
    for t in threads:
        t.join(timeout=30)
    with pytest.raises(httpx.HTTPError):  # really gone
        httpx.post(f"{url}/v1/assess", json=_one("while-dead"), headers=headers, timeout=5)
    assert len(acknowledged) >= 40
    audited = _audited(svc["root"] / "audit.sqlite")
    missing = [c for c in acknowledged if pseudonym(SECRET.encode(), c) not in audited]
    assert missing == []
    # it starts again on the same files, and goes on writing to the same log
    svc["proc"], _ = start_service(svc["env"], svc["port"], svc["log"])
    r = httpx.post(f"{url}/v1/assess", json=_one("after-restart"), headers=headers, timeout=30)
    assert r.status_code == 200
    assert pseudonym(SECRET.encode(), "after-restart") in _audited(svc["root"] / "audit.sqlite")


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only: skipped where mounting is not allowed)."""
    where = tmp_path / "disk"
    where.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {got.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_refuses_assessments_with_503_until_there_is_room(svc, small_disk):
    stop_service(svc["proc"])
    env = {**svc["env"], "ONTRACK_AUDIT_PATH": str(small_disk / "audit.sqlite")}
    svc["proc"], url = start_service(env, svc["port"], svc["log"])
    headers = {"Authorization": f"Bearer {svc['key']}"}
    assert httpx.post(f"{url}/v1/assess", json=_one("before-full"), headers=headers,
                      timeout=30).status_code == 200
    before = _audited(small_disk / "audit.sqlite")
    filler = small_disk / "filler"
    with filler.open("wb") as f:  # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    r = httpx.post(f"{url}/v1/assess", json=_one("while-full"), headers=headers, timeout=30)
    assert r.status_code == 503
    assert r.json()["error"] == "audit_unavailable" and "audit log" in r.json()["detail"]
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"]
    fhir = {"resourceType": "Bundle", "entry": [{"resource": {
        "resourceType": "QuestionnaireResponse", "status": "completed",
        "questionnaire": "http://loinc.org/q/44249-1", "subject": {"reference": "Patient/f1"},
        "authored": "2025-01-06", "item": [{"linkId": "44261-6",
                                            "answer": [{"valueInteger": 14}]}]}}]}
    r = httpx.post(f"{url}/v1/fhir/assess", json=fhir, timeout=30,
                   headers={**headers, "Content-Type": "application/fhir+json"})
    assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome"
    filler.unlink()  # room again: no restart needed
    assert shutil.disk_usage(small_disk).free > 0
    r = httpx.post(f"{url}/v1/assess", json=_one("after-full"), headers=headers, timeout=30)
    assert r.status_code == 200
    after = _audited(small_disk / "audit.sqlite")
    # the refused requests left no row, not even half of one; the next one has its row
    assert after - before == {pseudonym(SECRET.encode(), "after-full")}


# ------------------------------------------------------------------------------------------
# Start-up without a usable model: live, not ready with the reason, retried, no crash loop
# ------------------------------------------------------------------------------------------
def _worker_pids(proc) -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}


def _wait_ready(url: str, seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        r = httpx.get(f"{url}/readyz", timeout=5)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def _not_ready_then_ready(svc, env: dict[str, str], reason: str, repair) -> None:
    """Start with ``env``: live, /readyz 503 with ``reason``, assessments refused with 503
    and Retry-After, the same worker still there after several retries; then ``repair()``
    and it becomes ready by itself and assesses."""
    stop_service(svc["proc"])
    env = {**svc["env"], "ONTRACK_LOAD_RETRY_MAX_SECONDS": "2", **env}
    svc["proc"], url = start_service(env, svc["port"], svc["log"], wait_for="/livez")
    try:
        r = httpx.get(f"{url}/readyz", timeout=5)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not_ready" and body["reason"] == reason, body
        assert str(svc["root"]) not in r.text  # no paths to whoever can reach the port
        headers = {"Authorization": f"Bearer {svc['key']}"}
        r = httpx.post(f"{url}/v1/assess", json=_one("too-early"), headers=headers, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["error"] == "not_ready" and r.json()["errors"][0]["rule"] == reason
        workers = _worker_pids(svc["proc"])
        first = body["attempts"]
        time.sleep(6)  # several retries later: the same processes, more attempts
        assert svc["proc"].poll() is None and _worker_pids(svc["proc"]) == workers
        assert httpx.get(f"{url}/readyz", timeout=5).json()["attempts"] > first
        assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
        repair()
        assert _wait_ready(url).status_code == 200
        r = httpx.post(f"{url}/v1/assess", json=_one("once-ready"), headers=headers,
                       timeout=30)
        assert r.status_code == 200, r.text
        assert _worker_pids(svc["proc"]) == workers  # no restart was needed
    finally:
        stop_service(svc["proc"])  # each test from here on starts the service it needs
    assert f"not ready ({reason}" in svc["log"].read_text()


def test_a_missing_store_is_reported_and_retried_until_it_appears(svc):
    later = svc["root"] / "later"
    later.mkdir(exist_ok=True)
    store = svc["root"] / "mlflow" / "mlflow.db"
    _not_ready_then_ready(svc, {"ONTRACK_TRACKING_URI": f"sqlite:///{later / 'mlflow.db'}"},
                          "store_missing", lambda: shutil.copy(store, later / "mlflow.db"))
    assert not (svc["root"] / "later" / "mlflow.db-journal").exists()


def test_a_locked_store_is_reported_and_retried_until_it_is_free(svc):
    db = sqlite3.connect(svc["root"] / "mlflow" / "mlflow.db", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # another process holds the store
    try:
        _not_ready_then_ready(svc, {}, "store_locked", lambda: db.execute("COMMIT"))
    finally:
        db.close()


def test_a_corrupt_model_artefact_is_reported_and_retried_until_replaced(svc):
    [artefact] = (svc["root"] / "mlflow" / "artifacts").rglob("python_model.pkl")
    good = artefact.read_bytes()
    artefact.write_bytes(good[: len(good) // 3])  # a truncated copy
    try:
        _not_ready_then_ready(svc, {}, "artefact_unreadable",
                              lambda: artefact.write_bytes(good))
    finally:
        artefact.write_bytes(good)


# ------------------------------------------------------------------------------------------
# Rate limit and a read-only audit log
# ------------------------------------------------------------------------------------------
def test_a_key_over_its_rate_limit_gets_429_with_retry_after(svc):
    from serving.auth import KeyStore

    store = KeyStore(svc["root"] / "keys.sqlite")
    other = store.add("clinic-other", scopes=("benchmark",))
    mine = store.add("clinic-limited", scopes=("benchmark",))
    store.close()
    stop_service(svc["proc"])
    env = {**svc["env"], "ONTRACK_RATE_LIMIT_PER_MINUTE": "30", "ONTRACK_RATE_LIMIT_BURST": "3"}
    svc["proc"], url = start_service(env, svc["port"], svc["log"])
    try:
        def noop(key: str) -> httpx.Response:
            return httpx.post(f"{url}/v1/noop", json={}, timeout=10,
                              headers={"Authorization": f"Bearer {key}"})

        assert [noop(mine).status_code for _ in range(3)] == [200, 200, 200]
        r = noop(mine)
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["error"] == "rate_limited" and r.json()["status"] == 429
        wait = int(r.headers["retry-after"])
        assert 1 <= wait <= 2  # 30 a minute: one token every 2 s
        assert noop(other).status_code == 200  # per key: the other clinic is not held up
        time.sleep(wait)
        assert noop(mine).status_code == 200
    finally:
        stop_service(svc["proc"])  # each test from here on starts the service it needs


def test_a_read_only_audit_log_refuses_with_503_and_never_assesses_unrecorded(svc, small_disk):
    """A running service cannot have its file system made read-only under it (the kernel
    refuses while files are open for writing; a full disk is the running case, above): the
    audit log's volume is read-only when the service starts."""
    stop_service(svc["proc"])
    env = {**svc["env"], "ONTRACK_AUDIT_PATH": str(small_disk / "audit.sqlite"),
           "ONTRACK_LOAD_RETRY_MAX_SECONDS": "2"}
    svc["proc"], url = start_service(env, svc["port"], svc["log"])
    headers = {"Authorization": f"Bearer {svc['key']}"}

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(small_disk)], check=True)

    try:
        assert httpx.post(f"{url}/v1/assess", json=_one("before-ro"), headers=headers,
                          timeout=30).status_code == 200
        stop_service(svc["proc"])
        remount("ro")
        svc["proc"], url = start_service(env, svc["port"], svc["log"], wait_for="/livez")
        r = httpx.get(f"{url}/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["reason"] == "audit_unavailable", r.text
        r = httpx.post(f"{url}/v1/assess", json=_one("while-ro"), headers=headers, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["errors"][0]["rule"] == "audit_unavailable"
        remount("rw")
        assert _wait_ready(url).status_code == 200
        assert httpx.post(f"{url}/v1/assess", json=_one("after-ro"), headers=headers,
                          timeout=30).status_code == 200
        audited = _audited(small_disk / "audit.sqlite")
        assert pseudonym(SECRET.encode(), "while-ro") not in audited
        assert {pseudonym(SECRET.encode(), c) for c in ("before-ro", "after-ro")} <= audited
    finally:
        stop_service(svc["proc"])
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=False)
