"""The service over HTTP: a real `bentoml serve` subprocess on a free port.

The smoke test of the example call (docs/service.md's curl), bad input over the wire (4xx
naming the field, never a 500), auth, the open routes, and the sentinel client id absent from
everything the server process wrote (BentoML's own logging included).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest

from serving.schemas import EXAMPLE_INPUT
from tests.service_fixtures import served_service

SENTINEL = "SENTINEL-9a8b7c6d-http-never-log-me"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    with served_service(root, "clinic-http", {"ONTRACK_MAX_BODY_BYTES": "200000"}) as srv:
        yield srv


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_curl_example_returns_explained_assessment(server):
    """The call printed by `ontrack serve` and shown in docs/service.md."""
    example = server["root"] / "example_request.json"
    example.write_text(json.dumps(EXAMPLE_INPUT))
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "-X", "POST", f"{server['url']}/v1/assess", "-H",
                              f"Authorization: Bearer {server['key']}", "-H",
                              "Content-Type: application/json", "--data", f"@{example}"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        body = json.loads(out)
    else:
        body = httpx.post(f"{server['url']}/v1/assess", json=EXAMPLE_INPUT,
                          headers=_auth(server["key"]), timeout=60).json()
    a = body["assessments"][0]
    assert a["risk"]["p_failure"] is not None and a["explanation"]["drivers"]
    assert a["explanation"]["drivers"][0]["sentence"]


def test_python_client_example(server):
    """docs/service.md's Python example (BentoML's client, bearer key)."""
    import bentoml

    with bentoml.SyncHTTPClient(server["url"], token=server["key"],
                                server_ready_timeout=60) as client:
        out = client.assess(clients=EXAMPLE_INPUT["clients"])
    assessments = out["assessments"] if isinstance(out, dict) else out.assessments
    assert len(assessments) == 2


@pytest.mark.parametrize("body,status,field,rule", [
    (b'{"clients": [', 400, "body", "json_invalid"),
    (json.dumps({"clients": [{"client_id": SENTINEL, "sessions": [{"session": 1, "scores": [
        {"instrument": "PHQ-9", "score": 40}]}]}]}).encode(), 422,
     "clients[0].sessions[0].scores[0].score", "score_out_of_range"),
    (json.dumps({"clients": [{"client_id": SENTINEL, "sessions": [{"session": SENTINEL,
                                                                   "scores": []}]}]}).encode(),
     422, "clients[0].sessions[0].session", "int_type"),
    (b'{"clients": [{"client_id": "x", "sessions": [{"session": 1, "scores": [{"instrument": '
     b'"PHQ-9", "score": NaN}]}]}]}', 422, "clients[0].sessions[0].scores[0].score",
     "finite_number"),
    (b'{"clients": []' + b" " * 300_000 + b"}", 413, "body", "body_too_large"),
])
def test_bad_input_over_http(server, body, status, field, rule):
    r = httpx.post(f"{server['url']}/v1/assess", content=body, timeout=60,
                   headers={**_auth(server["key"]), "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert any(d["field"] == field and d["rule"] == rule for d in r.json()["errors"])


def test_auth_over_http(server):
    r = httpx.post(f"{server['url']}/v1/assess", json=EXAMPLE_INPUT, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(f"{server['url']}/v1/assess", json=EXAMPLE_INPUT, timeout=30,
                   headers=_auth("otk_abcdefabcdef_nope"))
    assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
    for path in ("/v1/model", "/v1/health", "/docs.json", "/healthz"):
        assert httpx.get(f"{server['url']}{path}", timeout=30).status_code == 200


def test_sentinel_never_reaches_server_logs(server):
    """Valid, invalid and unauthenticated requests carrying the sentinel; then the whole
    server output is searched (runs last in this module: pytest keeps file order)."""
    good = {"clients": [{"client_id": SENTINEL, "sessions": [
        {"session": 1, "scores": [{"instrument": "PHQ-9", "score": 12, "items": {"9": 1}}]}]}]}
    for body, headers in ((good, _auth(server["key"])), (good, {}),
                          ({"clients": [{"client_id": SENTINEL, "sessions": []}]},
                           _auth(server["key"]))):
        httpx.post(f"{server['url']}/v1/assess", json=body, headers=headers, timeout=30)
    httpx.post(f"{server['url']}/v1/assess", content=json.dumps(good).encode()[:-5],
               headers=_auth(server["key"]), timeout=30)
    time.sleep(0.5)
    text = server["log"].read_text()
    assert "/v1/assess" in text, "the access log is captured"
    assert SENTINEL not in text


def test_every_answer_carries_the_security_headers(server):
    url, key = server["url"], server["key"]
    calls = [("GET", "/v1/health", None, {}), ("GET", "/v1/model", None, {}),
             ("GET", "/docs.json", None, {}), ("GET", "/readyz", None, {}),
             ("GET", "/cds-services", None, {}), ("GET", "/ui/login", None, {}),
             ("GET", "/", None, {}),
             ("POST", "/v1/assess", EXAMPLE_INPUT, _auth(key)),
             ("POST", "/v1/assess", EXAMPLE_INPUT, {}),  # 401 from the guard
             ("POST", "/v1/assess", {"clients": []}, _auth(key)),  # 422
             ("POST", "/v1/fhir/assess", {"resourceType": "Patient"}, _auth(key)),  # 400
             ("POST", "/cds-services/ontrack-patient-view", {}, {})]  # 401
    for method, path, body, headers in calls:
        r = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=60)
        where = f"{method} {path} ({r.status_code})"
        assert r.headers.get("x-content-type-options") == "nosniff", where
        assert r.headers.get("referrer-policy") == "no-referrer", where
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors" in csp, where
        if r.headers.get("content-type", "").startswith("application/"):
            assert csp.startswith("default-src 'none'"), where
        if method == "POST":
            assert r.headers.get("cache-control") == "no-store", where


def test_what_fuzzing_found_stays_fixed(server):
    """Each answer was once a 500 or a plain-text page outside the OpenAPI document."""
    url, key = server["url"], server["key"]
    r = httpx.post(f"{url}/v1/noop", content=b"{}", timeout=30,
                   headers={**_auth(key), "Content-Type": "multipart/form-data"})
    assert r.status_code == 415 and r.json()["errors"][0]["rule"] == "json_required"
    r = httpx.post(f"{url}/cds-services/a%0Ab", json={}, timeout=30)
    assert r.status_code == 404 and r.json()["errors"][0]["rule"] == "unknown_service"
    r = httpx.request("TRACE", f"{url}/cds-services/ontrack-patient-view", timeout=30)
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert r.json()["errors"][0]["rule"] == "method_not_allowed"
    doc = httpx.get(f"{url}/docs.json", timeout=30).json()
    for path, codes in (("/v1/assess", {"401", "413", "415", "422", "503"}),
                        ("/v1/fhir/assess", {"200", "400", "401", "422", "503"}),
                        ("/cds-services/{service_id}", {"200", "401", "412"})):
        assert codes <= set(doc["paths"][path]["post"]["responses"]), path
