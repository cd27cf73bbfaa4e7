"""The request guard: an ASGI middleware in front of the protected routes.

In this order, before BentoML sees the request: bearer-key authorisation (RFC 6750: 401 / 403
with ``WWW-Authenticate``); media type (JSON only, 415); body size (413, checked on the
declared length and while reading); then, for /v1/assess, JSON syntax and types
(`serving.schemas.parse_request`: 400 for a body that is not JSON, 422 for wrong types, NaN,
unknown fields, empty lists). BentoML's own validation therefore never fails on client input
(it would log the input with the error). The clinic that owns the key travels to the handler in
``scope["state"]``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.auth import KeyStore, www_authenticate
from serving.schemas import Problem, parse_request
from serving.settings import ServingSettings

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Protected routes and the scope each needs; everything else (health, docs, model card) is open.
PROTECTED = {"/v1/assess": "assess", "/v1/noop": "benchmark"}
_JSON_TYPES = {"application/json", ""}


def error_body(error: str, message: str, detail: list[Problem] | None = None) -> bytes:
    return json.dumps({"error": error, "message": message,
                       "detail": [p.model_dump() for p in detail or []]}).encode()


async def _respond(send: Send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, settings: ServingSettings | None = None,
                 keys: KeyStore | None = None) -> None:
        self.app = app
        self.settings = settings or ServingSettings()
        self.keys = keys or KeyStore(self.settings.keys_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in PROTECTED or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        need = PROTECTED[path]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        state = scope.setdefault("state", {})
        if self.settings.require_auth:
            result = self.keys.authorize(headers.get("authorization"), need)
            if not result.ok:
                which = "forbidden" if result.status == 403 else "unauthorized"
                msg = {None: "a bearer key is required: Authorization: Bearer <key>",
                       "invalid_token": "the bearer key is unknown, malformed or revoked",
                       "insufficient_scope": f"this key may not call {path} (scope {need} "
                                             "needed)"}[result.error]
                await _respond(send, result.status,
                               error_body(which, msg, [Problem(field="Authorization",
                                                               rule=result.error or
                                                               "missing_credentials",
                                                               message=msg)]),
                               [(b"www-authenticate", www_authenticate(result, need).encode())])
                return
            state["clinic"], state["key_id"] = result.clinic, result.key_id
        else:
            state["clinic"], state["key_id"] = "unauthenticated", None
        if path != "/v1/assess":
            await self.app(scope, receive, send)
            return

        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in _JSON_TYPES:
            await _respond(send, 415, error_body(
                "unsupported_media_type", "send the request as application/json",
                [Problem(field="Content-Type", rule="json_required",
                         message=f"{media!r} is not accepted; use application/json")]))
            return
        limit = self.settings.max_body_bytes
        too_big = error_body("payload_too_large", f"the body is larger than {limit:,} bytes",
                             [Problem(field="body", rule="body_too_large",
                                      message=f"at most {limit:,} bytes per request; send "
                                      "fewer clients per call")])
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _respond(send, 413, too_big)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _respond(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        request, problems = parse_request(body)
        if problems:
            syntax = any(p.rule == "json_invalid" for p in problems)
            await _respond(send, 400 if syntax else 422, error_body(
                "invalid_request", "the body is not valid JSON" if syntax else
                f"{len(problems)} problem(s) in the request", problems))
            return
        state["assess_request"] = request
        sent = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
