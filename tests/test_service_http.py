"""The service over HTTP: a real `bentoml serve` subprocess on a free port.

The smoke test of the example call (docs/service.md's curl), bad input over the wire (4xx
naming the field, never a 500), auth, the open routes, and the sentinel client id absent from
everything the server process wrote (BentoML's own logging included).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from serving.schemas import EXAMPLE_INPUT
from tests.service_fixtures import REPO, fit_bundle, make_cohort, register, service_env

SENTINEL = "SENTINEL-9a8b7c6d-http-never-log-me"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    uri = register(fit_bundle(make_cohort(root / "cohort", n=1200, seed=3)), root / "mlflow")
    env = {**os.environ, **service_env(root, uri), "OMP_NUM_THREADS": "1",
           "ONTRACK_MAX_BODY_BYTES": "200000", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    from serving.auth import KeyStore

    store = KeyStore(root / "keys.sqlite")
    key = store.add("clinic-http")
    store.close()
    # the class-scope BentoModel must be in the store for `bentoml serve` (what `ontrack serve`
    # and `ontrack build` do first)
    subprocess.run([sys.executable, "-c", "from serving.settings import ServingSettings;"
                    "from serving.loader import import_to_bentoml;"
                    "import_to_bentoml(ServingSettings())"], env=env, check=True,
                   capture_output=True, cwd=REPO, timeout=300)
    port = _free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                             "serving.service:OnTrack", "--host", "127.0.0.1", "--port",
                             str(port), "--working-dir", str(REPO)],
                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("service not ready: " + (root / "server.log").read_text()[-3000:])
    yield {"url": url, "key": key, "log": root / "server.log", "root": root}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
    assert any(d["field"] == field and d["rule"] == rule for d in r.json()["detail"])


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
