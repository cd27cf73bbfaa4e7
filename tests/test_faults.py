"""Faults, on a real service process on loopback: killed with SIGKILL under load (every
acknowledged assessment has its audit row), and an audit log that cannot be written (disk
full: 503 with the reason, never an assessment without its row, and back to normal once there
is room again)."""

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
    assert r.json()["error"] == "audit_unavailable" and "audit log" in r.json()["message"]
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
