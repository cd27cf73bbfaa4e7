"""Assessments as FHIR R4 resources, and problems as an OperationOutcome.

Each `models.assess.Assessment` becomes one ``RiskAssessment``:

* ``subject`` the patient, ``occurrenceDateTime`` when the assessment was made, ``basis`` the
  QuestionnaireResponses and Observations it read, ``method`` the model and its version,
  ``code`` OnTrack's not-on-track assessment of the instrument;
* ``prediction[0]``: not reliably improving by the end of care (``probabilityDecimal`` the
  calibrated risk, ``qualitativeRisk`` high while the not-on-track flag is open, low otherwise,
  ``whenRange`` from the next session on, ``rationale`` why the flag is in its state);
  ``prediction[1]``, when the bundle has a dropout model: ending care early;
* ``mitigation``: the suggestions, as prompts for a conversation;
* ``note``: the signal, the change so far, and each driver of the risk in words.

A safety flag (a risk item answered above zero, whatever the model says) is a ``Flag`` with the
LOINC code of the item where it has one. `read_bundle`'s left-out resources travel back as an
information-only ``OperationOutcome`` in the same Bundle.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from features.instruments import CODE_SYSTEM, LOINC
from serving.fhir.inbound import Issue

RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
ASSESSMENT_SYSTEM = CODE_SYSTEM.rsplit("/", 1)[0] + "/assessment"
MODEL_SYSTEM = CODE_SYSTEM.rsplit("/", 1)[0] + "/model"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [
        {"severity": i.severity, "code": i.code, "expression": [i.expression],
         "details": {"coding": [{"system": CODE_SYSTEM.rsplit("/", 1)[0] + "/rule",
                                 "code": i.rule}], "text": i.message},
         "diagnostics": f"{i.expression}: {i.message}" + (
             "" if "(rule:" in i.message else f" (rule: {i.rule})")}
        for i in issues]}


def simple_outcome(code: str, rule: str, message: str, where: str = "Bundle") -> dict[str, Any]:
    return operation_outcome([Issue("error", code, where, rule, message)])


def risk_assessment(a: Any, basis: list[str], when: str) -> dict[str, Any]:
    subject = {"reference": a.client_id}
    out: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": subject,
        "occurrenceDateTime": when,
        "code": {"coding": [{"system": ASSESSMENT_SYSTEM, "code": "not-on-track",
                             "display": "Not-on-track assessment (routine outcome monitoring)"}],
                 "text": f"OnTrack not-on-track assessment on {a.instrument} at session "
                 f"{a.session}"},
        "basis": [{"reference": r} for r in basis],
    }
    r = a.risk
    notes = [f"Signal {a.signal.colour}: {a.signal.reason}", f"Change: {a.change.summary}",
             f"Alliance: {a.alliance.message}"]
    if r is not None:
        out["method"] = {"coding": [{"system": MODEL_SYSTEM, "code": r.model,
                                     "version": r.model_version}],
                         "text": f"{r.model}, model version {r.model_version}, features "
                         f"{r.feature_version}"}
        prediction = [{
            "outcome": {"text": f"Not reliably improved by the end of care on {a.instrument} "
                        f"({r.definition})"},
            "probabilityDecimal": round(float(r.p_failure), 6),
            "qualitativeRisk": {"coding": [{
                "system": RISK_PROBABILITY, "code": "high" if a.flag.flagged else "low",
                "display": "High likelihood" if a.flag.flagged else "Low likelihood"}],
                "text": f"not-on-track flag: {a.flag.state}"},
            "whenRange": {"low": {"value": a.session + 1, "unit": "session"}},
            "rationale": a.flag.reason,
        }]
        if r.p_dropout is not None:
            prediction.append({"outcome": {"text": "Ends care early (drop-out)"},
                               "probabilityDecimal": round(float(r.p_dropout), 6),
                               "whenRange": {"low": {"value": a.session + 1,
                                                     "unit": "session"}}})
        out["prediction"] = prediction
    else:
        notes.insert(0, "No model covers this instrument: no risk was computed.")
    if a.explanation is not None:
        notes += [f"Driver ({d.direction} the risk by about {abs(d.percentage_points):.0f} "
                  f"percentage points): {d.sentence}" for d in a.explanation.drivers]
    notes += list(a.notes)
    out["note"] = [{"text": t} for t in notes if t]
    if a.suggestions:
        out["mitigation"] = " ".join(f"{s.prompt} ({s.rationale})" for s in a.suggestions)
    return out


def safety_flag(a: Any, when: str) -> dict[str, Any] | None:
    if a.safety.status != "flag":
        return None
    codings = [{"system": LOINC, "code": i["loinc"]} for i in a.safety.items if i["loinc"]]
    return {
        "resourceType": "Flag",
        "status": "active",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "clinical",
                                  "display": "Clinical"}]}],
        "code": {"coding": codings, "text": a.safety.message},
        "subject": {"reference": a.client_id},
        "period": {"start": when},
    }


def assessment_bundle(assessments: Iterable[Any], basis: dict[str, list[str]],
                      left_out: list[Issue]) -> dict[str, Any]:
    when = _now()
    entries = []
    flagged: set[tuple[str, str]] = set()
    for a in assessments:
        entries.append(risk_assessment(a, basis.get(a.client_id, []), when))
        flag = safety_flag(a, when)
        if flag is not None and (a.client_id, flag["code"]["text"]) not in flagged:
            flagged.add((a.client_id, flag["code"]["text"]))
            entries.append(flag)
    if left_out:
        entries.append(operation_outcome(left_out))
    return {"resourceType": "Bundle", "type": "collection", "timestamp": when,
            "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in entries]}
