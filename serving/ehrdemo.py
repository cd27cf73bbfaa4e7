"""A local EHR beside OnTrack, for the demo (`ontrack ehr-demo`), the tests and the benchmark:
a real FHIR R4 server (SEKMET, from the dev dependency group) on loopback holding simulated
patients' measures as survey Observations, an EHR signing key trusted by OnTrack's CDS Hooks
issuer list, and tokens signed with it. Development only: the key is written in clear under
the demo folder, and the FHIR server takes one fixed bearer token."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

FHIR_TOKEN = "local-ehr-access-token-5b1f"
DEMO_ISSUER = "https://ehr-demo.ontrack.local"


@dataclass
class EhrKey:
    private_pem: bytes
    public_jwk: dict
    alg: str
    kid: str


def make_key(alg: str, kid: str) -> EhrKey:
    """A new EHR signing key (ES384 or RS384) and its public JWK."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
    """A CDS Hooks token as an EHR signs it: 4 minutes, a fresh jti; a claim given as None is
    left out."""
    now = int(time.time())
    body = {"iss": iss, "sub": "ehr-client-1", "aud": aud, "iat": now, "exp": now + 240,
            "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key.private_pem, algorithm=key.alg,
                      headers={"kid": key.kid, "typ": "JWT", **(headers or {})})


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def fhir_server(root: Path, port: int | None = None) -> Iterator[str]:
    """A SEKMET FHIR R4 server on loopback (bearer token `FHIR_TOKEN`, its store under
    ``root``) until the block ends; yields the FHIR base URL."""
    exe = shutil.which("sekmet", path=str(Path(sys.executable).parent)) or shutil.which("sekmet")
    if exe is None:
        raise RuntimeError("the local FHIR server (sekmet-fhir) is not installed: it comes with "
                           "the dev dependencies (`make setup`)")
    root.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    (root / "settings.yaml").write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {root / 'data'}\n"
        f"server_auth: {{types: [bearer], tokens: [{FHIR_TOKEN}]}}\n"
        "simulator: {enabled: false}\nlog_inbound: false\n")
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
    """Create or replace each resource (by id) on the FHIR server."""
    headers = {"Authorization": f"Bearer {FHIR_TOKEN}", "Content-Type": "application/fhir+json"}
    with httpx.Client(timeout=20, headers=headers) as client:
        for r in resources:
            got = client.put(f"{base}/{r['resourceType']}/{r['id']}", json=r)
            if got.status_code not in (200, 201):
                raise RuntimeError(f"the FHIR server refused {r['resourceType']} "
                                   f"({got.status_code})")


def demo_patients(sessions_csv: Path, n: int) -> list[tuple[str, dict[str, Any]]]:
    """The first ``n`` clients of a sessions file as (patient id, ``/v1/assess`` client)."""
    import pandas as pd

    from features.contract import read_table

    s = read_table(sessions_csv)
    keep = list(pd.unique(s["client_id"].dropna()))[:n]
    out = []
    for cid in keep:
        d = s[s["client_id"] == cid].sort_values("session")
        sessions = []
        for sess, g in d.groupby("session", sort=True):
            scores = []
            for r in g.to_dict("records"):
                x: dict[str, Any] = {"instrument": r["instrument"], "score": float(r["score"])}
                if r["instrument"] == "PHQ-9" and pd.notna(r.get("item_9")):
                    x["items"] = {"9": float(r["item_9"])}
                scores.append(x)
            day = g["date"].iloc[0] if "date" in g and pd.notna(g["date"].iloc[0]) else None
            sessions.append({"session": int(sess), "scores": scores,
                             **({"date": str(day)[:10]} if day is not None else {})})
        out.append((f"demo-{len(out) + 1}", {"client_id": str(cid), "sessions": sessions}))
    return out


def prepare(root: Path, public_url: str, fhir_base: str) -> EhrKey:
    """The demo EHR's key (kept in ``root``) and OnTrack's issuer list trusting it."""
    root.mkdir(parents=True, exist_ok=True)
    pem, jwk = root / "ehr_es384.pem", root / "ehr_es384.jwk.json"
    if pem.exists() and jwk.exists():
        key = EhrKey(pem.read_bytes(), json.loads(jwk.read_text()), "ES384", "demo-1")
    else:
        key = make_key("ES384", "demo-1")
        pem.write_bytes(key.private_pem)
        pem.chmod(0o600)
        jwk.write_text(json.dumps(key.public_jwk))
    (root / "cds_issuers.json").write_text(json.dumps({"issuers": [
        {"iss": DEMO_ISSUER, "clinic": "ehr-demo", "jwks": {"keys": [key.public_jwk]},
         "fhir_servers": [fhir_base]}]}, indent=1))
    return key


def hook_request(patient_id: str, fhir_base: str) -> dict[str, Any]:
    """A patient-view call without prefetch: OnTrack reads the measures from the EHR."""
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "fhirServer": fhir_base,
            "fhirAuthorization": {"access_token": FHIR_TOKEN, "token_type": "Bearer",
                                  "expires_in": 3600, "scope": "patient/Observation.rs",
                                  "subject": "ontrack"},
            "context": {"userId": "Practitioner/demo", "patientId": patient_id}}
