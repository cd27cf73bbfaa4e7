"""A local EHR for the tests: a real FHIR R4 server (SEKMET, a pinned dev dependency) on
loopback, an EHR's signing keys and the JWKS it publishes, and signed CDS Hooks tokens."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.service_fixtures import free_port

FHIR_TOKEN = "local-ehr-access-token-5b1f"


@dataclass
class EhrKey:
    private_pem: bytes
    public_jwk: dict
    alg: str
    kid: str


def make_key(alg: str, kid: str) -> EhrKey:
    if alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return EhrKey(pem, jwk, alg, kid)


def token(key: EhrKey, iss: str, aud: str, headers: dict | None = None, **claims) -> str:
    now = int(time.time())
    body = {"iss": iss, "sub": "ehr-client-1", "aud": aud, "iat": now, "exp": now + 240,
            "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key.private_pem, algorithm=key.alg,
                      headers={"kid": key.kid, "typ": "JWT", **(headers or {})})


@contextmanager
def jwks_server(jwks: dict) -> Iterator[str]:
    """Serves ``jwks`` at http://127.0.0.1:<port>/jwks.json until the block ends."""
    body = json.dumps(jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            status = 200 if self.path == "/jwks.json" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    finally:
        server.shutdown()


@contextmanager
def fhir_server(root: Path) -> Iterator[str]:
    """A SEKMET FHIR R4 server on a free loopback port, bearer token `FHIR_TOKEN`, its store
    under ``root``; yields the FHIR base URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    (root / "settings.yaml").write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {root / 'data'}\n"
        f"server_auth: {{types: [bearer], tokens: [{FHIR_TOKEN}]}}\n"
        "simulator: {enabled: false}\nlog_inbound: false\n")
    exe = shutil.which("sekmet", path=str(Path(sys.executable).parent)) or "sekmet"
    log = (root / "fhir.log").open("w")
    proc = subprocess.Popen([exe, "serve", "-c", str(root / "settings.yaml")], cwd=root,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("FHIR server not ready: " + (root / "fhir.log").read_text())
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def put_resources(base: str, resources: list[dict]) -> None:
    headers = {"Authorization": f"Bearer {FHIR_TOKEN}", "Content-Type": "application/fhir+json"}
    with httpx.Client(timeout=20, headers=headers) as client:
        for r in resources:
            got = client.put(f"{base}/{r['resourceType']}/{r['id']}", json=r)
            assert got.status_code in (200, 201), got.text[:500]
