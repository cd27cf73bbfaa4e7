"""Request and response schemas of the prediction service, and request validation.

Validation has three layers, all reported the same way (a JSON path naming the field, the rule
and a message; never only the first problem):

1. **Types** (pydantic, strict): wrong types, NaN/Infinity, unknown fields, empty lists.
2. **Request structure** (`request_problems`): what only the nested JSON can get wrong: one
   client id twice, sessions not increasing.
3. **The data contract**: the request becomes a contract-typed sessions frame and runs through
   `features.contract.check_sessions`, the very rules `ontrack validate` applies to files, and
   `features.contract.check_assessable` (too many clients, a client without any
   outcome-instrument score), the rules uploads and the pyfunc apply too; each violation's row
   is mapped back to its place in the request.

`EXAMPLE_INPUT` is the one example used by the OpenAPI docs, the tests, docs/service.md and the
benchmark.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from features.contract import MAX_ITEMS, Rows, check_assessable, check_sessions
from features.instruments import REGISTRY
from models.assess import Assessment

# ------------------------------------------------------------------------------------------
# The one example (OpenAPI docs, tests, docs/service.md, benchmark)
# ------------------------------------------------------------------------------------------
EXAMPLE_INPUT: dict[str, Any] = {
    "clients": [
        {
            "client_id": "example-001",
            "covariates": {"age_band": "26-35"},
            "sessions": [
                {"session": 1, "date": "2025-01-06", "scores": [
                    {"instrument": "PHQ-9", "score": 18, "items": {"9": 0}},
                    {"instrument": "GAD-7", "score": 14},
                    {"instrument": "SRS", "score": 35.5}]},
                {"session": 2, "date": "2025-01-13", "scores": [
                    {"instrument": "PHQ-9", "score": 17, "items": {"9": 0}},
                    {"instrument": "GAD-7", "score": 13},
                    {"instrument": "SRS", "score": 36.0}]},
                {"session": 3, "date": "2025-01-20", "scores": [
                    {"instrument": "PHQ-9", "score": 19, "items": {"9": 0}},
                    {"instrument": "GAD-7", "score": 15},
                    {"instrument": "SRS", "score": 33.0}]},
                {"session": 4, "date": "2025-01-27", "scores": [
                    {"instrument": "PHQ-9", "score": 18, "items": {"9": 0}},
                    {"instrument": "GAD-7", "score": 14},
                    {"instrument": "SRS", "score": 32.5},
                    {"instrument": "CSC", "score": 6,
                     "items": {"1": 2, "2": 0, "3": 3, "4": 1, "5": 0}}]},
            ],
        },
        {
            "client_id": "example-002",
            "sessions": [
                {"session": 1, "scores": [{"instrument": "PHQ-9", "score": 21,
                                           "items": {"9": 1}}]},
                {"session": 2, "scores": [{"instrument": "PHQ-9", "score": 15,
                                           "items": {"9": 1}}]},
            ],
        },
    ]
}


# ------------------------------------------------------------------------------------------
# Request
# ------------------------------------------------------------------------------------------
ItemKey = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]?$")]
# OnTrack rule: the dates a session may carry. No routine outcome record predates 1900, and the
# sessions frame stores dates as datetime64[ns], which ends in 2262.
DATE_MIN, DATE_MAX = dt.date(1900, 1, 1), dt.date(2199, 12, 31)
CovariateKey = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                                pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ScoreIn(BaseModel):
    model_config = _STRICT

    instrument: str = Field(max_length=32, description="Registry code, e.g. PHQ-9, GAD-7, SRS, "
                            "ORS, CORE-10.", examples=["PHQ-9"])
    score: float = Field(description="Total score, inside the instrument's range.",
                         examples=[14])
    items: dict[ItemKey, float] | None = Field(
        None, max_length=MAX_ITEMS, description="Optional item answers by item number "
        "(\"9\" = PHQ-9 item 9, the risk item). When every item is given they must sum to the "
        "score.", examples=[{"9": 0}])


class SessionIn(BaseModel):
    model_config = _STRICT

    session: int = Field(ge=-(2**31), le=2**31, description="Session number, 1 = intake; "
                         "strictly increasing within a client.", examples=[1])
    date: dt.date | None = Field(None, ge=DATE_MIN, le=DATE_MAX,
                                 description="Session date (ISO 8601), optional; from "
                                 f"{DATE_MIN} to {DATE_MAX}.", examples=["2025-01-06"])
    scores: list[ScoreIn] = Field(min_length=1, max_length=len(REGISTRY),
                                  description="Scores given at this session (one per "
                                  "instrument).")


class ClientIn(BaseModel):
    model_config = _STRICT

    client_id: str = Field(min_length=1, max_length=128, description="The caller's id for the "
                           "client; echoed back, never logged, stored in the audit log only as "
                           "an HMAC pseudonym.", examples=["example-001"])
    covariates: dict[CovariateKey, str | int | float | bool | None] | None = Field(
        None, max_length=32, description="Optional covariates (e.g. age_band), used for the "
        "out-of-population check.", examples=[{"age_band": "26-35"}])
    sessions: list[SessionIn] = Field(min_length=1, max_length=500,
                                      description="The session history, oldest first.")


class AssessRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"example": EXAMPLE_INPUT})

    clients: list[ClientIn] = Field(min_length=1, description="One or many clients (at most "
                                    "ONTRACK_MAX_CLIENTS per call, default 1,000).")
    timing: Literal["before_session", "after_session"] = Field(
        "before_session", description="When the assessment is made. before_session (default): "
        "at the start of the latest session, before its alliance rating (SRS, WAI-SR are "
        "given at the end of a session), so the model does not use an alliance rating of the "
        "latest session even if one is sent; it is still shown. after_session: the latest "
        "session's alliance rating was given before this assessment, and the model uses it.")


# ------------------------------------------------------------------------------------------
# Response
# ------------------------------------------------------------------------------------------
class AssessResponse(BaseModel):
    model_version: str = Field(description="Registered model version that produced the risks.")
    feature_version: str
    assessments: list[Assessment] = Field(description="One per client, in request order.")


class Problem(BaseModel):
    field: str = Field(description="JSON path of the offending field, e.g. "
                       "clients[0].sessions[2].scores[0].score (\"body\" for the whole body).")
    rule: str = Field(description="Machine-readable rule, e.g. score_out_of_range.")
    message: str


#: Every problem type the service answers (RFC 9457): code -> (HTTP status, title, what to
#: do). A problem's ``type`` is ``/v1/problems/<code>``, which answers with this entry.
PROBLEM_TYPES: dict[str, tuple[int, str, str]] = {
    "invalid_request": (422, "The request breaks a rule", "Correct the fields named in "
                        "`errors` (each with its rule) and send the request again."),
    "unauthorized": (401, "A valid key or token is needed", "Send `Authorization: Bearer "
                     "<key>` with a key the clinic was given (CDS Hooks: the EHR's signed "
                     "token)."),
    "forbidden": (403, "This key may not call this route", "Ask for a key with the scope "
                  "named in `errors`."),
    "not_found": (404, "No such route", "See the OpenAPI document at /docs.json."),
    "method_not_allowed": (405, "This route does not take that method", "Use a method named "
                           "in the Allow header."),
    "prefetch_missing": (412, "The EHR's data is missing", "Send the prefetch OnTrack asks "
                         "for, or the FHIR server and its access token."),
    "payload_too_large": (413, "The body is too large", "Send fewer clients per call."),
    "unsupported_media_type": (415, "The body is not JSON", "Send the body as "
                               "application/json (FHIR: application/fhir+json)."),
    "rate_limited": (429, "Too many requests for this key", "Wait the seconds in the "
                     "Retry-After header, then send the request again."),
    "internal_error": (500, "The assessment failed", "Nothing was assessed or recorded; the "
                       "error was logged without client data. Try again or report it."),
    "audit_unavailable": (503, "The audit log cannot be written", "No assessment is given "
                          "without its audit row; try again after Retry-After seconds."),
    "not_ready": (503, "The model is not loaded yet", "The service is starting or cannot load "
                  "its model (see /readyz for the reason); try again after Retry-After "
                  "seconds."),
}
PROBLEM_MEDIA = "application/problem+json"
#: The web framework's own refusals (no route matched, a method a route does not take): the
#: problem type and the sentence.
FRAMEWORK_ERRORS: dict[int, tuple[str, str]] = {
    404: ("not_found", "no such route; see /docs.json"),
    405: ("method_not_allowed", "this route does not take that method")}


class ErrorResponse(BaseModel):
    """RFC 9457 problem details, with OnTrack's ``error`` code and the ``errors`` found (each
    naming its field and rule)."""

    type: str = Field(description="The problem type: /v1/problems/<error> (answers with what "
                      "it means and what to do).")
    title: str = Field(description="The problem type in words.")
    status: int = Field(description="The HTTP status of this answer.")
    detail: str = Field(description="What went wrong with this request, in words.")
    error: str = Field(description=" | ".join(PROBLEM_TYPES))
    errors: list[Problem] = Field(default_factory=list, description="Every problem found: "
                                  "field, rule, message.")


def problem(error: str, detail: str, errors: list[Problem] | None = None,
            status: int | None = None) -> ErrorResponse:
    """The problem details of one refusal (``status``: when not the type's usual one, e.g.
    400 for a body that is not JSON)."""
    usual, title, _ = PROBLEM_TYPES[error]
    return ErrorResponse.model_construct(type=f"/v1/problems/{error}", title=title,
                                         status=status or usual, detail=detail, error=error,
                                         errors=list(errors or []))


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------
def json_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def pydantic_problems(err: ValidationError) -> list[Problem]:
    """Type errors as problems (no input values: pydantic's messages name the rule only)."""
    out = []
    for e in err.errors(include_input=False, include_context=False, include_url=False):
        rule = e["type"]
        field = json_path(tuple(e["loc"]))
        if rule == "json_invalid":
            field = "body"
        out.append(Problem(field=field, rule=rule, message=e["msg"]))
    return out


def parse_request(body: bytes) -> tuple[AssessRequest | None, list[Problem]]:
    try:
        return AssessRequest.model_validate_json(body), []
    except ValidationError as err:
        return None, pydantic_problems(err)


def request_problems(req: AssessRequest) -> list[Problem]:
    """Request-structure rules of the nested JSON (before the data contract)."""
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, c in enumerate(req.clients):
        if c.client_id in seen:
            out.append(Problem(field=f"clients[{i}].client_id", rule="duplicate_client",
                               message=f"the same client_id as clients[{seen[c.client_id]}]; "
                               "send each client once with its whole history"))
        else:
            seen[c.client_id] = i
        prev = None
        for j, s in enumerate(c.sessions):
            if prev is not None and s.session <= prev:
                out.append(Problem(field=f"clients[{i}].sessions[{j}].session",
                                   rule="sessions_not_increasing",
                                   message=f"session {s.session} follows session {prev}: "
                                   "sessions must be strictly increasing, oldest first"))
            prev = s.session
    return out


@dataclass
class RequestFrames:
    sessions: pd.DataFrame  # contract-typed sessions frame
    covariates: pd.DataFrame | None  # index = client_id
    paths: list[tuple[int, int, int]]  # frame row -> (client, session, score) in the request


def to_frames(req: AssessRequest) -> RequestFrames:
    """The request as the data contract's typed sessions frame (and a covariates frame)."""
    cid: list[str] = []
    ses: list[int] = []
    ins: list[str] = []
    sco: list[float] = []
    dates: list[dt.date | None] = []
    items: dict[int, dict[int, float]] = {}
    paths: list[tuple[int, int, int]] = []
    any_date = False
    cov_rows: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(req.clients):
        if c.covariates:
            cov_rows[c.client_id] = {k: (None if v is None else str(v))
                                     for k, v in c.covariates.items()}
        for j, s in enumerate(c.sessions):
            any_date = any_date or s.date is not None
            for k, x in enumerate(s.scores):
                r = len(cid)
                cid.append(c.client_id)
                ses.append(s.session)
                ins.append(x.instrument)
                sco.append(x.score)
                dates.append(s.date)
                paths.append((i, j, k))
                if x.items:
                    for key, v in x.items.items():
                        items.setdefault(int(key), {})[r] = v
    n = len(cid)
    data: dict[str, Any] = {
        "client_id": pd.array(cid, dtype="string"),
        "session": pd.array(ses, dtype="Int64"),
        "instrument": pd.array(ins, dtype="string"),
        "score": np.asarray(sco, dtype=np.float64),
    }
    if any_date:
        data["date"] = pd.to_datetime(pd.Series(dates, dtype="object")).astype("datetime64[ns]")
    for key in sorted(items):
        col = np.full(n, np.nan)
        for r, v in items[key].items():
            col[r] = v
        data[f"item_{key}"] = col
    frame = pd.DataFrame(data)
    cov = pd.DataFrame.from_dict(cov_rows, orient="index") if cov_rows else None
    return RequestFrames(frame, cov, paths)


def _field_for(paths: list[tuple[int, int, int]], row: int | None, column: str) -> str:
    if row is None:
        return "clients"
    i, j, k = paths[row - 1]
    if column == "client_id":
        return f"clients[{i}].client_id"
    if column in {"session", "date"}:
        return f"clients[{i}].sessions[{j}].{column}"
    if column.startswith("item_"):
        return f"clients[{i}].sessions[{j}].scores[{k}].items.{column[5:]}"
    return f"clients[{i}].sessions[{j}].scores[{k}].{column}"


def contract_problems(frames: RequestFrames, max_clients: int | None = None
                      ) -> list[Problem]:
    """The contract's rules on the request (`check_sessions`, then `check_assessable`),
    mapped back to JSON paths."""
    rows = Rows(frames.sessions)  # one conversion for both rule sets (a fresh RangeIndex)
    found = check_sessions(frames.sessions, table="request", rows=rows)
    if not found:
        found = check_assessable(frames.sessions, max_clients, table="request", rows=rows)
    out = []
    for v in found:
        field = _field_for(frames.paths, v.row, v.column)
        if v.rule == "no_outcome_score":
            field = f"clients[{frames.paths[v.row - 1][0]}].sessions"
        out.append(Problem(field=field, rule=v.rule, message=v.message))
    return out
