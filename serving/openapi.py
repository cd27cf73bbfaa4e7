"""The OpenAPI document at ``/docs.json``, completed with what the service really answers.

BentoML builds the document from the service's APIs and mounted apps, but it knows nothing of
the request guard (401, 403, 413, 415, 429 and the 400/422 of its parsing), of the problem
details media type of every refusal, of the 503 when the audit log cannot be written or the
model is not loaded, of the FHIR route's media types and OperationOutcomes, or of
the CDS Hooks routes' bodies and statuses. `complete` adds them, so a client generated from
the document (and the property-based fuzzing in tests/test_fuzz.py) sees every status a route
can give with the body it has. The middleware rewrites the document on its way out; nothing
else is touched.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import MutableMapping
from typing import Any

from serving.schemas import ErrorResponse

log = logging.getLogger("serving.openapi")

_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
_OUTCOME = {"type": "object", "required": ["resourceType", "issue"],
            "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                           "issue": {"type": "array", "items": {"type": "object"}}}}
_BUNDLE = {"type": "object", "required": ["resourceType"],
           "properties": {"resourceType": {"type": "string"}}}
_PROBLEM = "application/problem+json"

_WORDS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 412: "Precondition Failed", 413: "Content Too Large",
          415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
          500: "Internal Server Error", 503: "Service Unavailable"}


def _answers(schema: dict, codes: tuple[int, ...], media: str = "application/json") -> dict:
    return {str(c): {"description": _WORDS[c], "content": {media: {"schema": schema}}}
            for c in codes}


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in error.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas["ErrorResponse"] = error
    paths = spec.get("paths", {})
    guarded = (400, 401, 403, 413, 415, 422, 429, 500)

    op = paths.get("/v1/assess", {}).get("post")
    if op is not None:
        op["responses"].update(_answers(_ERROR, (*guarded, 503), _PROBLEM))
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        if "schema" in body:
            body["schema"].setdefault("additionalProperties", False)

    op = paths.get("/v1/noop", {}).get("post")
    if op is not None:
        op["responses"].update(_answers(_ERROR, (400, 401, 403, 413, 415, 429), _PROBLEM))

    for path in ("/v1/model", "/v1/health"):  # 503 until the model is loaded
        op = paths.get(path, {}).get("get")
        if op is not None:
            op["responses"].update(_answers(_ERROR, (503,), _PROBLEM))
    op = paths.get("/v1/problems/{code}", {}).get("get")
    if op is not None:
        op["responses"].pop("422", None)  # FastAPI's default; a path string never fails
        op["responses"].update(_answers(_ERROR, (404,), _PROBLEM))

    op = paths.get("/v1/fhir/assess", {}).get("post")
    if op is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/fhir+json": {"schema": _BUNDLE},
            "application/json": {"schema": _BUNDLE}}}
        op["responses"] = {**_answers(_BUNDLE, (200,), "application/fhir+json"),
                           **_answers(_OUTCOME, (*guarded, 503), "application/fhir+json")}

    hook_body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": "A CDS Hooks 2.0 request (hook, hookInstance, "
        "context, prefetch or fhirServer with fhirAuthorization); docs/ehr.md"}}}}
    for path, ok in (("/cds-services/{service_id}",
                      {"type": "object", "required": ["cards"],
                       "properties": {"cards": {"type": "array"}}}),
                     ("/cds-services/{service_id}/feedback",
                      {"type": "object", "required": ["recorded"],
                       "properties": {"recorded": {"type": "integer"}}})):
        op = paths.get(path, {}).get("post")
        if op is None:
            continue
        op["requestBody"] = hook_body
        op["responses"] = {**_answers(ok, (200,)),
                           **_answers(_ERROR, (400, 401, 404, 412, 413, 500, 503), _PROBLEM)}
    return spec


class OpenAPIDocument:
    """ASGI middleware: ``GET /docs.json`` answered by BentoML, then completed."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/docs.json" or \
                scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            if start.get("status") == 200:
                try:
                    body = json.dumps(complete(json.loads(body))).encode()
                except (ValueError, KeyError, TypeError) as err:  # keep BentoML's document
                    log.error("the OpenAPI document could not be completed (%s)",
                              type(err).__name__)
            headers = [(k, v) for k, v in start.get("headers", [])
                       if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
