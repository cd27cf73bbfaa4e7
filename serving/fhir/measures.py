"""A client's history (the ``/v1/assess`` JSON shape) as the FHIR resources an EHR would hold:
one QuestionnaireResponse per instrument and session, coded as `serving.fhir.inbound` reads
them (LOINC panel, item and answer codes where LOINC has them; OnTrack's canonical URL and
item numbers otherwise). For loading a test or demo FHIR server, the benchmark and the
examples in docs/ehr.md; the inverse of the inbound mapping, from the same registry."""

from __future__ import annotations

import datetime as dt
from typing import Any

from features.instruments import CODE_SYSTEM, LOINC, QUESTIONNAIRE_BASE, REGISTRY

SURVEY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                      "code": "survey", "display": "Survey"}]}


def _answer(inst, k: int | None, value: float) -> dict[str, Any]:
    if k is not None and inst.loinc_answers and float(value).is_integer():
        code = next((c for c, v in inst.loinc_answers.items() if v == value), None)
        if code is not None:
            return {"valueCoding": {"system": LOINC, "code": code}}
    if float(value).is_integer():
        return {"valueInteger": int(value)}
    return {"valueDecimal": float(value)}


def questionnaire_response(patient: str, day: str, score: dict[str, Any],
                           rid: str | None = None) -> dict[str, Any]:
    inst = REGISTRY[score["instrument"]]
    canonical = (f"http://loinc.org/q/{inst.loinc_panel}" if inst.loinc_panel
                 else f"{QUESTIONNAIRE_BASE}{inst.code}")
    items = []
    for key, v in sorted((score.get("items") or {}).items(), key=lambda kv: int(kv[0])):
        k = int(key)
        items.append({"linkId": inst.loinc_items.get(k, str(k)), "answer": [_answer(inst, k, v)]})
    items.append({"linkId": inst.loinc_total or "total",
                  "answer": [_answer(inst, None, score["score"])]})
    out: dict[str, Any] = {"resourceType": "QuestionnaireResponse", "status": "completed",
                           "questionnaire": canonical, "subject": {"reference": patient},
                           "authored": day, "item": items}
    if rid is not None:
        out["id"] = rid
    return out


def observations(patient: str, day: str, score: dict[str, Any], rid: str) -> list[dict]:
    """The total as a survey Observation, and each item LOINC codes as its own Observation
    (items without a LOINC code travel only in a QuestionnaireResponse)."""
    inst = REGISTRY[score["instrument"]]
    code = ({"system": LOINC, "code": inst.loinc_total} if inst.loinc_total
            else {"system": CODE_SYSTEM, "code": inst.code})
    base = {"resourceType": "Observation", "status": "final", "category": [SURVEY],
            "subject": {"reference": patient}, "effectiveDateTime": day}
    total = {**base, "id": rid, "code": {"coding": [code], "text": f"{inst.code} total"}}
    if float(score["score"]).is_integer():
        total["valueInteger"] = int(score["score"])
    else:
        total["valueQuantity"] = {"value": float(score["score"])}
    out = [total]
    for key, v in sorted((score.get("items") or {}).items(), key=lambda kv: int(kv[0])):
        k = int(key)
        if k not in inst.loinc_items:
            continue
        item = {**base, "id": f"{rid}-i{k}",
                "code": {"coding": [{"system": LOINC, "code": inst.loinc_items[k]}]}}
        answer = _answer(inst, k, v)
        if "valueCoding" in answer:
            item["valueCodeableConcept"] = {"coding": [answer["valueCoding"]]}
        else:
            item["valueInteger"] = int(v)
        out.append(item)
    return out


def client_resources(patient_id: str, client: dict[str, Any], start: str = "2025-01-06",
                     kind: str = "QuestionnaireResponse") -> list[dict[str, Any]]:
    """A ``/v1/assess`` client's scores as QuestionnaireResponses (``kind``), or as survey
    Observations (``kind="Observation"``). Sessions without a date are placed a week apart
    from ``start``."""
    patient = f"Patient/{patient_id}"
    first = dt.date.fromisoformat(start)
    out = []
    for n, s in enumerate(client["sessions"]):
        day = s.get("date") or (first + dt.timedelta(weeks=n)).isoformat()
        for m, score in enumerate(s["scores"]):
            rid = f"{patient_id}-s{n + 1}-{m}"
            if kind == "Observation":
                out += observations(patient, str(day), score, rid)
            else:
                out.append(questionnaire_response(patient, str(day), score, rid))
    return out


def bundle(resources: list[dict[str, Any]], kind: str = "collection") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind,
            "entry": [{"resource": r} for r in resources]}
