"""The request guard: an ASGI middleware in front of the protected routes.

In this order, before BentoML sees the request: bearer-key authorisation (RFC 6750: 401 / 403
with ``WWW-Authenticate``); media type (JSON only, 415); body size (413, checked on the
declared length and while reading); then, for /v1/assess, JSON syntax and types
(`serving.schemas.parse_request`: 400 for a body that is not JSON, 422 for wrong types, NaN,
unknown fields, empty lists). BentoML's own validation therefore never fails on client input
(it would log the input with the error). The clinic that owns the key travels to the handler in
``scope["state"]``. ``/v1/fhir/assess`` passes the same key, media-type (FHIR JSON too) and
size checks, its refusals written as a FHIR OperationOutcome; its body is read by the route
(`serving.fhir.inbound`); ``/v1/noop`` passes the key, media-type and size checks too. POSTs
under ``/cds-services`` get the size check only (the CDS Hooks routes check the EHR's signed
token themselves, `serving.cdshooks`), and a path there with a control character, which no
route can match, gets the routes' JSON 404.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving import readiness
from serving.auth import KeyStore, www_authenticate
from serving.ratelimit import RateLimiter
from serving.schemas import FRAMEWORK_ERRORS, PROBLEM_MEDIA, Problem, parse_request, problem
from serving.settings import ServingSettings

Scope = MutableMapping[str, Any]
FHIR_PATH = "/v1/fhir/assess"
CDS_PREFIX = "/cds-services"
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Protected routes and the scope each needs; everything else (health, docs, model card) is open.
PROTECTED = {"/v1/assess": "assess", "/v1/noop": "benchmark", FHIR_PATH: "assess"}
_JSON_TYPES = {"application/json", ""}
_FHIR_TYPES = {"application/fhir+json", "application/json", ""}
_FHIR_CODES = {"unauthorized": "login", "forbidden": "forbidden", "payload_too_large": "too-long",
               "unsupported_media_type": "not-supported", "rate_limited": "throttled",
               "not_ready": "transient"}


def error_body(status: int, error: str, message: str, detail: list[Problem] | None = None,
               fhir: bool = False) -> bytes:
    """A refusal as RFC 9457 problem details (`serving.schemas.problem`), or for the FHIR
    route as a FHIR OperationOutcome."""
    if fhir:
        return json.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": _FHIR_CODES.get(error, "invalid"),
             "expression": [p.field], "details": {"text": p.message},
             "diagnostics": f"{p.field}: {p.message} (rule: {p.rule})"}
            for p in detail or []]}).encode()
    return json.dumps(problem(error, message, detail, status).model_dump(mode="json")).encode()


async def _respond(send: Send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]] | None = None,
                   media: bytes = PROBLEM_MEDIA.encode()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media),
                            (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, settings: ServingSettings | None = None,
                 keys: KeyStore | None = None) -> None:
        self.app = app
        self.settings = settings or ServingSettings()
        self.keys = keys or KeyStore(self.settings.keys_path)
        self.limits = RateLimiter(self.settings.rate_limit_per_minute,
                                  self.settings.rate_limit_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(CDS_PREFIX) and any(
                ord(c) < 32 or ord(c) == 127 for c in path):
            # a control character in the path matches no route (and would fall through to
            # the server's plain-text 404): answered in the routes' own JSON shape
            await _respond(send, 404, error_body(404, "not_found", "no such route", [
                Problem(field="path", rule="unknown_service",
                        message="no such CDS Hooks route; see /cds-services")]))
            return
        if path == CDS_PREFIX:  # the discovery URL, served without a redirect to "/"
            scope["path"] = path = CDS_PREFIX + "/"
            scope["raw_path"] = path.encode()
        if scope["type"] != "http" or scope["method"] != "POST" or (
                path not in PROTECTED and not path.startswith(CDS_PREFIX)):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        fhir = path == FHIR_PATH
        media_out = b"application/fhir+json" if fhir else PROBLEM_MEDIA.encode()

        async def respond(status: int, body: bytes, extra=None) -> None:
            await _respond(send, status, body, extra, media_out)

        if path.startswith(CDS_PREFIX):
            body = await self._read(scope, receive, headers, respond, fhir=False)
            if body is not None:
                await self.app(scope, _replay(body, receive), send)
            return
        need = PROTECTED[path]
        state = scope.setdefault("state", {})
        if self.settings.require_auth:
            result = self.keys.authorize(headers.get("authorization"), need)
            if not result.ok:
                which = "forbidden" if result.status == 403 else "unauthorized"
                msg = {None: "a bearer key is required: Authorization: Bearer <key>",
                       "invalid_token": "the bearer key is unknown, malformed or revoked",
                       "insufficient_scope": f"this key may not call {path} (scope {need} "
                                             "needed)"}[result.error]
                await respond(result.status,
                              error_body(result.status, which, msg,
                                         [Problem(field="Authorization",
                                                  rule=result.error or "missing_credentials",
                                                  message=msg)], fhir),
                              [(b"www-authenticate", www_authenticate(result, need).encode())])
                return
            state["clinic"], state["key_id"] = result.clinic, result.key_id
        else:
            state["clinic"], state["key_id"] = "unauthenticated", None
        wait = self.limits.take(str(state["key_id"]))
        if wait:
            msg = (f"this key made more than {self.settings.rate_limit_per_minute} requests "
                   f"a minute; wait {wait} s")
            await respond(429, error_body(429, "rate_limited", msg, [Problem(
                field="Authorization", rule="rate_limit", message=msg)], fhir),
                [(b"retry-after", str(wait).encode())])
            return
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (_FHIR_TYPES if fhir else _JSON_TYPES):
            wanted = "application/fhir+json" if fhir else "application/json"
            await respond(415, error_body(
                415, "unsupported_media_type", f"send the request as {wanted}",
                [Problem(field="Content-Type", rule="json_required",
                         message=f"{media!r} is not accepted; use {wanted}")], fhir))
            return
        body = await self._read(scope, receive, headers, respond, fhir)
        if body is None:
            return
        if path == "/v1/noop" and not _json_object(body):
            await respond(400, error_body(400, "invalid_request", "the body is not a JSON "
                                          "object", [Problem(field="body", rule="json_invalid",
                                                             message="send {} or no body")]))
            return
        if fhir or path == "/v1/noop":
            await self.app(scope, _replay(body, receive), send)
            return
        request, problems = parse_request(body)
        if problems:
            syntax = any(p.rule == "json_invalid" for p in problems)
            status = 400 if syntax else 422
            await respond(status, error_body(
                status, "invalid_request", "the body is not valid JSON" if syntax else
                f"{len(problems)} problem(s) in the request", problems))
            return
        state["assess_request"] = request
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive, headers: dict[str, str], respond,
                    fhir: bool) -> bytes | None:
        """The whole body, or None after answering 413 (checked on the declared length and
        while reading) or on a disconnect."""
        limit = self.settings.max_body_bytes
        too_big = error_body(413, "payload_too_large", f"the body is larger than {limit:,} bytes",
                             [Problem(field="body", rule="body_too_large",
                                      message=f"at most {limit:,} bytes per request; send "
                                      "fewer clients per call")], fhir)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await respond(413, too_big)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await respond(413, too_big)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _json_object(body: bytes) -> bool:
    """An empty body or a JSON object (what the no-op accepts)."""
    if not body.strip():
        return True
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:  # also UnicodeDecodeError
        return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


#: On every response (OWASP secure headers): no MIME sniffing, no referrer. JSON answers also
#: get a CSP that allows nothing (they are never rendered), and answers to POSTs, which carry
#: client data, are not cached. Pages set their own CSP (`serving.webview.headers`); the API
#: docs page (Swagger UI) keeps BentoML's, with framing forbidden.
_ALWAYS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
_STRICT_CSP = b"default-src 'none'; frame-ancestors 'none'"


class _HttpOnly:
    """An ASGI middleware that acts on HTTP requests only (`http`) and passes every other
    scope (lifespan, websocket) straight through."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class SecurityHeaders(_HttpOnly):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        post = scope.get("method") == "POST"

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                media = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                for k, v in _ALWAYS:
                    if k not in have:
                        headers.append((k, v))
                if b"content-security-policy" not in have:
                    html = media.startswith(b"text/html")
                    headers.append((b"content-security-policy",
                                    b"frame-ancestors 'none'" if html else _STRICT_CSP))
                if post and b"cache-control" not in have:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


#: Routes that answer whether or not the model is loaded (everything else needs it).
_OPEN_WHEN_LOADING = ("/livez", "/healthz", "/metrics", "/docs.json", "/v1/problems",
                      "/v1/noop")


class ReadinessGate:
    """While the model is not loaded (`serving.readiness`): ``/readyz`` answers 503 with the
    reason, and the routes that need the model answer 503 ``not_ready`` with
    ``Retry-After`` (problem details; FHIR: an OperationOutcome; web pages: a short page),
    instead of failing inside a route."""

    def __init__(self, app, status: readiness.Status | None = None) -> None:
        self.app = app
        self.status = status or readiness.STATUS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.status.ready:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/readyz":
            await _respond(send, 503, json.dumps(self.status.as_json()).encode(),
                           media=b"application/json")
            return
        if path in ("", "/") or path.startswith(_OPEN_WHEN_LOADING):
            await self.app(scope, receive, send)
            return
        wait = str(max(1, round(self.status.as_json()["retry_in_seconds"] or 1))).encode()
        retry = [(b"retry-after", wait)]
        message = f"the model is not loaded yet: {self.status.message}"
        if path.startswith("/ui"):
            page = ("<!doctype html><html lang=en><meta charset=utf-8><title>OnTrack is "
                    "starting</title><p>OnTrack cannot show clients yet: "
                    f"{self.status.message}. Reload this page in a minute.</p></html>")
            await _respond(send, 503, page.encode(), retry, b"text/html; charset=utf-8")
            return
        fhir = path == FHIR_PATH
        await _respond(send, 503, error_body(503, "not_ready", message, [Problem(
            field="service", rule=self.status.code, message=message)], fhir), retry,
            b"application/fhir+json" if fhir else PROBLEM_MEDIA.encode())


class FrameworkErrors(_HttpOnly):
    """The server's own plain-text refusals (no such route, method not allowed, outside any
    route's own handler) rewritten as problem details, so every 4xx has the one shape."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: dict[str, Any] = {}

        async def rewrite(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                media = next((v for k, v in message.get("headers", [])
                              if k.lower() == b"content-type"), b"")
                if message["status"] in FRAMEWORK_ERRORS and media.startswith(b"text/plain"):
                    held["start"] = message
                    return
            elif "start" in held:
                if message.get("more_body", False):
                    return
                status = held["start"]["status"]
                error, text = FRAMEWORK_ERRORS[status]
                body = error_body(status, error, text, [Problem(field="path", rule=error,
                                                                message=text)])
                keep = [(k, v) for k, v in held["start"].get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length")]
                await _respond(send, status, body, keep)
                return
            await send(message)

        await self.app(scope, receive, rewrite)
