"""A local EHR for the tests: the FHIR server, keys and tokens of `serving.ehrdemo` (the one
`ontrack ehr-demo` runs), plus what only tests need: a JWKS published over HTTP and a SMART
on FHIR authorisation server."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from serving.ehrdemo import (  # noqa: F401  (re-exported for the tests)
    FHIR_TOKEN,
    EhrKey,
    fhir_server,
    make_key,
    put_resources,
    token,
)
from tests.service_fixtures import free_port


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


# ------------------------------------------------------------------------------------------
# A SMART on FHIR EHR: authorisation server + FHIR endpoint (reads passed on to SEKMET)
# ------------------------------------------------------------------------------------------
@dataclass
class SmartEhr:
    iss: str  # the FHIR base URL the EHR launches with
    client_id: str
    launches: dict  # launch id -> patient id
    pkce_checked: list  # one entry per token request whose S256 challenge verified
    log: list  # what the authorisation server was asked, for the test's assertions
    issued: list  # access tokens issued


@contextmanager
def smart_ehr(fhir_base: str, client_id: str = "ontrack-web") -> Iterator[SmartEhr]:
    """An EHR's SMART App Launch 2 authorisation server (authorisation code + PKCE S256 only,
    auto-approving its registered client) whose FHIR endpoint passes reads with its own access
    tokens on to the SEKMET server at ``fhir_base``."""
    import base64
    import hashlib
    import secrets as _secrets

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    port = free_port()
    root = f"http://127.0.0.1:{port}"
    ehr = SmartEhr(iss=f"{root}/fhir", client_id=client_id, launches={}, pkce_checked=[],
                   log=[], issued=[])
    codes: dict[str, dict] = {}
    tokens: dict[str, str] = {}
    redirect: dict[str, str] = {}

    async def config(request: Request):
        return JSONResponse({
            "issuer": root, "authorization_endpoint": f"{root}/auth/authorize",
            "token_endpoint": f"{root}/auth/token", "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code"], "response_types_supported": ["code"],
            "capabilities": ["launch-ehr", "client-public", "context-ehr-patient",
                             "permission-v2"],
            "scopes_supported": ["launch", "openid", "fhirUser", "patient/*.rs"]})

    async def authorize(request: Request):
        q = request.query_params
        ehr.log.append(("authorize", dict(q)))
        ok = (q.get("response_type") == "code" and q.get("client_id") == client_id
              and q.get("aud") == ehr.iss and q.get("launch") in ehr.launches
              and q.get("code_challenge_method") == "S256" and q.get("code_challenge")
              and q.get("state") and "launch" in (q.get("scope") or "").split())
        if not ok:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = _secrets.token_urlsafe(16)
        codes[code] = {"challenge": q["code_challenge"], "patient": ehr.launches[q["launch"]],
                       "redirect_uri": q["redirect_uri"]}
        redirect[code] = q["redirect_uri"]
        return RedirectResponse(f"{q['redirect_uri']}?code={code}&state={q['state']}",
                                status_code=302)

    async def token_route(request: Request):
        form = await request.form()
        ehr.log.append(("token", {k: v for k, v in form.items() if k != "code_verifier"}))
        grant = codes.pop(str(form.get("code")), None)
        verifier = str(form.get("code_verifier") or "")
        if grant is None or form.get("grant_type") != "authorization_code" or \
                form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if not verifier or digest.rstrip(b"=").decode() != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant",
                                 "error_description": "PKCE"}, status_code=400)
        ehr.pkce_checked.append(True)
        access = _secrets.token_urlsafe(24)
        tokens[access] = grant["patient"]
        ehr.issued.append(access)
        return JSONResponse({"access_token": access, "token_type": "Bearer",
                             "expires_in": 3600, "scope": "launch patient/*.rs",
                             "patient": grant["patient"]})

    async def fhir(request: Request):
        auth = request.headers.get("authorization", "")
        if auth[7:] not in tokens:
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        url = f"{fhir_base}/{request.path_params['path']}"
        r = httpx.get(url, params=request.query_params,
                      headers={"Authorization": f"Bearer {FHIR_TOKEN}"}, timeout=20)
        return Response(r.content, status_code=r.status_code,
                        media_type="application/fhir+json")

    app = Starlette(routes=[
        Route("/fhir/.well-known/smart-configuration", config),
        Route("/auth/authorize", authorize), Route("/auth/token", token_route, methods=["POST"]),
        Route("/fhir/{path:path}", fhir)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield ehr
    finally:
        server.should_exit = True
        thread.join(timeout=10)
