"""A FHIR R4 Bundle of outcome and alliance measures -> the service's `AssessRequest`.

What is read (docs/ehr.md has examples):

* ``QuestionnaireResponse`` with status ``completed`` or ``amended``: ``questionnaire`` is the
  LOINC panel's canonical (``http://loinc.org/q/44249-1``, or any canonical whose last path
  segment is the panel code) or OnTrack's own (``QUESTIONNAIRE_BASE`` + registry code, for
  instruments without LOINC codes). Items by linkId: the LOINC item code (also as ``/code`` or
  ``/panel/code``), or the item number; the total by the LOINC total code or ``total``.
  Answers: ``valueInteger``, ``valueDecimal``, or ``valueCoding`` with an ``ordinalValue``
  extension or a LOINC answer code. Without a total, the items give it when every item is
  answered and the instrument's total is their sum. ``subject`` and ``authored`` are required.
* ``Observation`` with status ``final``, ``amended`` or ``corrected``: ``code`` is a LOINC total
  or item code, or OnTrack's CodeSystem with the registry code; ``valueQuantity``,
  ``valueInteger`` or (items) a LOINC answer ``valueCodeableConcept``; ``effective[x]`` and
  ``subject`` required.
* ``Patient`` entries are accepted (for references); other resources, drafts, entered-in-error
  records and questionnaires OnTrack does not know are left out and listed as information.

Sessions are the distinct dates of a patient's measures, oldest first (session 1 = the first
date in the Bundle). A QuestionnaireResponse and an Observation of the same instrument on the
same date are one score (an EHR often stores both); if their totals differ the Bundle is
refused. Every resource is first checked against the R4 structure (``fhir.resources`` R4B
models); then the request passes the very rules of ``/v1/assess`` (`serving.schemas`,
`features.contract`), and each problem is reported at the resource element it came from.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from features.instruments import CODE_SYSTEM, LOINC, QUESTIONNAIRE_BASE, REGISTRY, Instrument
from serving.schemas import AssessRequest, Problem, pydantic_problems

QR_FINAL = {"completed", "amended"}
OBS_FINAL = {"final", "amended", "corrected"}
ORDINAL_URLS = {"http://hl7.org/fhir/StructureDefinition/ordinalValue",
                "http://hl7.org/fhir/StructureDefinition/iso21090-CO-value"}
_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue: FHIR severity and issue type, a FHIRPath ``expression``
    naming the element, OnTrack's rule and a message (never a value from the resource)."""

    severity: str  # error | warning | information
    code: str  # FHIR IssueType: invalid, required, value, structure, not-supported, ...
    expression: str
    rule: str
    message: str


@dataclass
class _Score:
    total: float | None = None
    total_path: str | None = None
    items: dict[int, float] = field(default_factory=dict)
    item_paths: dict[int, str] = field(default_factory=dict)
    refs: list[str] = field(default_factory=list)
    entry: str = ""  # the first resource's path, for problems about the score as a whole
    date_path: str = ""  # its date element (sessions are numbered by date)


@dataclass
class Parsed:
    request: AssessRequest | None
    problems: list[Issue]
    left_out: list[Issue]
    basis: dict[str, list[str]]  # client_id -> references of the resources used
    # (client, session, score) index in the request -> where the score came from
    sources: dict[tuple[int, int, int], _Score]
    dates: dict[str, dt.date]  # client_id -> latest date

    def locate(self, problem: Problem) -> Issue:
        """A problem of `serving.schemas` / `features.contract` (a JSON path into the request)
        at the FHIR element it came from."""
        m = re.match(r"clients\[(\d+)\](?:\.sessions(?:\[(\d+)\])?(?:\.scores\[(\d+)\])?"
                     r"(?:\.(\w+)(?:\.(\d+))?)?)?", problem.field)
        where = "Bundle"
        if m:
            i = int(m.group(1))
            j = int(m.group(2)) if m.group(2) else None
            k = int(m.group(3)) if m.group(3) else None
            keys = [key for key in self.sources if key[0] == i and (j is None or key[1] == j)
                    and (k is None or key[2] == k)]
            if keys:
                s = self.sources[min(keys)]
                what, item = m.group(4), m.group(5)
                where = s.entry
                if k is not None and what == "score" and s.total_path:
                    where = s.total_path
                elif what == "items" and item and int(item) in s.item_paths:
                    where = s.item_paths[int(item)]
                elif what in {"date", "session"}:
                    where = s.date_path
        return Issue("error", "value" if "range" in problem.rule else "invalid", where,
                     problem.rule, problem.message)


def _instrument_lookup() -> tuple[dict[str, Instrument], dict[tuple[str, str], tuple]]:
    panels: dict[str, Instrument] = {}
    codes: dict[tuple[str, str], tuple] = {}  # (system, code) -> (instrument, item or None)
    for inst in REGISTRY.values():
        panels[f"{QUESTIONNAIRE_BASE}{inst.code}"] = inst
        codes[(CODE_SYSTEM, inst.code)] = (inst, None)
        if inst.loinc_panel:
            panels[inst.loinc_panel] = inst
        if inst.loinc_total:
            codes[(LOINC, inst.loinc_total)] = (inst, None)
        for k, code in inst.loinc_items.items():
            codes[(LOINC, code)] = (inst, k)
    return panels, codes


_PANELS, _CODES = _instrument_lookup()


def questionnaire_of(canonical: str | None) -> Instrument | None:
    if not canonical:
        return None
    url = canonical.split("|", 1)[0].rstrip("/")
    if url in _PANELS:
        return _PANELS[url]
    return _PANELS.get(url.rsplit("/", 1)[-1])  # a LOINC panel code as the last segment


def reference(ref: Any, aliases: dict[str, str]) -> str | None:
    """``Patient/123`` from a relative, absolute or ``urn:uuid`` reference."""
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    text = ref["reference"]
    if text in aliases:
        return aliases[text]
    m = _REF.search(text)
    return m.group(1) if m else None


def _date(value: Any) -> dt.date | None:
    """The calendar date as written (a dateTime's own local date, never shifted to UTC)."""
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _answer(inst: Instrument, answer: dict) -> float | None:
    for key in ("valueInteger", "valueDecimal"):
        v = answer.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    coding = answer.get("valueCoding")
    if isinstance(coding, dict):
        return _coded(inst, [coding])
    return None


def _coded(inst: Instrument, codings: list) -> float | None:
    for c in codings:
        if not isinstance(c, dict):
            continue
        for ext in c.get("extension") or []:
            if isinstance(ext, dict) and ext.get("url") in ORDINAL_URLS:
                v = ext.get("valueDecimal", ext.get("valueInteger"))
                if isinstance(v, int | float) and not isinstance(v, bool):
                    return float(v)
        if c.get("system") in (LOINC, None) and c.get("code") in inst.loinc_answers:
            return float(inst.loinc_answers[c["code"]])
    return None


def _link(inst: Instrument, link_id: Any) -> int | str | None:
    """Item number, "total", or None (an item OnTrack does not score, e.g. PHQ-9's
    difficulty question)."""
    if not isinstance(link_id, str):
        return None
    last = link_id.strip("/").rsplit("/", 1)[-1]
    if last == inst.loinc_total or last.lower() == "total":
        return "total"
    for k, code in inst.loinc_items.items():
        if last == code:
            return k
    if last.isdigit() and 1 <= int(last) <= inst.n_items:
        return int(last)
    return None


def _walk(items: Any, path: str):
    for n, it in enumerate(items or []):
        if not isinstance(it, dict):
            continue
        here = f"{path}.item[{n}]"
        yield it, here
        yield from _walk(it.get("item"), here)
        for a, ans in enumerate(it.get("answer") or []):
            if isinstance(ans, dict):
                yield from _walk(ans.get("item"), f"{here}.answer[{a}]")


def _structure(resource: dict, where: str) -> list[Issue]:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except ValidationError as err:
        out = []
        for p in pydantic_problems(err):
            path = where if p.field == "body" else f"{where}.{p.field}"
            out.append(Issue("error", "structure", path, "fhir_structure",
                             f"not a valid R4 {resource['resourceType']}: {p.message}"))
        return out
    return []


def read_bundle(doc: Any, timing: str = "before_session") -> Parsed:
    """Read a Bundle; `Parsed.problems` lists every problem found (nothing is half-read:
    with any problem there is no request)."""
    problems: list[Issue] = []
    left: list[Issue] = []
    empty = Parsed(None, problems, left, {}, {}, {})
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        problems.append(Issue("error", "structure", "Bundle", "not_a_bundle",
                              "send a FHIR Bundle (resourceType Bundle) of "
                              "QuestionnaireResponse and Observation resources"))
        return empty
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries:
        problems.append(Issue("error", "required", "Bundle.entry", "no_entries",
                              "the Bundle has no entries"))
        return empty

    aliases: dict[str, str] = {}
    used: list[tuple[int, dict, str]] = []
    for n, e in enumerate(entries):
        where = f"Bundle.entry[{n}].resource"
        r = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(r, dict) or not isinstance(r.get("resourceType"), str):
            problems.append(Issue("error", "required", where, "resource_required",
                                  "each entry needs a resource with a resourceType"))
            continue
        rtype = r["resourceType"]
        if rtype not in {"QuestionnaireResponse", "Observation", "Patient"}:
            left.append(Issue("information", "informational", where, "resource_not_used",
                              f"{rtype} is not an outcome or alliance measure; left out"))
            continue
        try:
            issues = _structure(r, where)
        except KeyError:  # a resourceType fhir.resources does not know
            issues = [Issue("error", "not-supported", f"{where}.resourceType",
                            "unknown_resource_type", "not an R4 resource type")]
        if issues:
            problems.extend(issues)
            continue
        if rtype == "Patient":
            if isinstance(r.get("id"), str):
                if isinstance(e.get("fullUrl"), str):
                    aliases[e["fullUrl"]] = f"Patient/{r['id']}"
            continue
        used.append((n, r, where))

    # (client, date, instrument) -> score
    scores: dict[tuple[str, dt.date, str], _Score] = {}
    order: list[str] = []
    for n, r, where in used:
        ref = f"{r['resourceType']}/{r['id']}" if isinstance(r.get("id"), str) else where
        if isinstance(entries[n].get("fullUrl"), str) and "id" not in r:
            ref = entries[n]["fullUrl"]
        if r["resourceType"] == "QuestionnaireResponse":
            _read_qr(r, where, ref, aliases, scores, order, problems, left)
        else:
            _read_obs(r, where, ref, aliases, scores, order, problems, left)

    for (_client, _day, code), s in scores.items():
        inst = REGISTRY[code]
        if s.total is None:
            if inst.items_sum_to_score and len(s.items) == inst.n_items:
                s.total = float(sum(s.items.values()))
            else:
                total = inst.loinc_total or "total"
                problems.append(Issue(
                    "error", "required", s.entry, "total_required",
                    f"no {inst.code} total: give it (linkId or code {total}) or, where the "
                    f"total is the sum of the items, every one of its {inst.n_items} items"))
    if problems:
        return empty

    clients: list[dict[str, Any]] = []
    sources: dict[tuple[int, int, int], _Score] = {}
    basis: dict[str, list[str]] = {}
    dates: dict[str, dt.date] = {}
    for i, client in enumerate(order):
        days = sorted({d for (c, d, _) in scores if c == client})
        sessions = []
        for j, day in enumerate(days):
            here = [(code, s) for (c, d, code), s in scores.items() if c == client and d == day]
            out = []
            for k, (code, s) in enumerate(here):
                sources[(i, j, k)] = s
                basis.setdefault(client, []).extend(x for x in s.refs
                                                    if x not in basis.get(client, []))
                score: dict[str, Any] = {"instrument": code, "score": s.total}
                if s.items:
                    score["items"] = {str(key): v for key, v in sorted(s.items.items())}
                out.append(score)
            sessions.append({"session": j + 1, "date": day, "scores": out})
        dates[client] = days[-1]
        clients.append({"client_id": client, "sessions": sessions})
    if not clients:
        problems.append(Issue("error", "required", "Bundle.entry", "no_measures",
                              "no QuestionnaireResponse or Observation of an instrument "
                              "OnTrack knows (docs/ehr.md lists the codes)"))
        return empty
    try:
        request = AssessRequest.model_validate({"clients": clients, "timing": timing})
    except ValidationError as err:
        parsed = Parsed(None, [], left, basis, sources, dates)
        problems.extend(parsed.locate(p) for p in pydantic_problems(err))
        return empty
    return Parsed(request, [], left, basis, sources, dates)


def _subject_and_date(r: dict, where: str, aliases: dict, date_value: Any, date_path: str,
                      problems: list[Issue]) -> tuple[str | None, dt.date | None]:
    subject = reference(r.get("subject"), aliases)
    if subject is None or not subject.startswith("Patient/"):
        problems.append(Issue("error", "required", f"{where}.subject", "subject_required",
                              "a reference to the Patient is required (Patient/<id>)"))
    day = _date(date_value)
    if day is None:
        problems.append(Issue("error", "required", f"{where}.{date_path}", "date_required",
                              "the date the measure was completed is required (sessions "
                              "are ordered by it)"))
    return subject, day


def _slot(scores: dict, order: list[str], client: str, day: dt.date, code: str, ref: str,
          where: str, date_path: str) -> _Score:
    key = (client, day, code)
    if key not in scores:
        scores[key] = _Score(entry=where, date_path=f"{where}.{date_path}")
        if client not in order:
            order.append(client)
    s = scores[key]
    if ref not in s.refs:
        s.refs.append(ref)
    return s


def _set_total(s: _Score, value: float, path: str, code: str, problems: list[Issue]) -> None:
    if s.total is not None and abs(s.total - value) > 1e-9:
        problems.append(Issue("error", "invalid", path, "conflicting_scores",
                              f"a second {code} total for the same patient and date that "
                              "differs from the first; send one, or correct the other"))
        return
    s.total, s.total_path = value, s.total_path or path


def _set_item(s: _Score, k: int, value: float, path: str, code: str,
              problems: list[Issue]) -> None:
    if k in s.items and abs(s.items[k] - value) > 1e-9:
        problems.append(Issue("error", "invalid", path, "conflicting_scores",
                              f"{code} item {k} answered twice for the same patient and date "
                              "with different answers"))
        return
    s.items[k] = value
    s.item_paths.setdefault(k, path)


def _read_qr(r, where, ref, aliases, scores, order, problems, left) -> None:
    inst = questionnaire_of(r.get("questionnaire"))
    if r.get("status") not in QR_FINAL:
        left.append(Issue("information", "informational", f"{where}.status", "not_final",
                          "only completed or amended responses are used"))
        return
    if inst is None:
        left.append(Issue("information", "informational", f"{where}.questionnaire",
                          "unknown_questionnaire", "not a questionnaire OnTrack knows; left "
                          "out"))
        return
    client, day = _subject_and_date(r, where, aliases, r.get("authored"), "authored", problems)
    if client is None or day is None:
        return
    s = _slot(scores, order, client, day, inst.code, ref, where, "authored")
    for it, path in _walk(r.get("item"), where):
        slot = _link(inst, it.get("linkId"))
        answers = it.get("answer") or []
        if slot is None or not answers:
            continue
        if len(answers) != 1:
            problems.append(Issue("error", "invalid", f"{path}.answer", "one_answer",
                                  "a scored item has exactly one answer"))
            continue
        value = _answer(inst, answers[0])
        if value is None:
            problems.append(Issue("error", "value", f"{path}.answer[0]", "answer_not_scorable",
                                  "give valueInteger, valueDecimal, or valueCoding with an "
                                  "ordinalValue extension or a LOINC answer code"))
            continue
        if slot == "total":
            _set_total(s, value, f"{path}.answer[0]", inst.code, problems)
        else:
            _set_item(s, int(slot), value, f"{path}.answer[0]", inst.code, problems)


def _read_obs(r, where, ref, aliases, scores, order, problems, left) -> None:
    if r.get("status") not in OBS_FINAL:
        left.append(Issue("information", "informational", f"{where}.status", "not_final",
                          "only final, amended or corrected observations are used"))
        return
    found = None
    for c in (r.get("code") or {}).get("coding") or []:
        if isinstance(c, dict) and (c.get("system"), c.get("code")) in _CODES:
            found = _CODES[(c["system"], c["code"])]
            break
    if found is None:
        if not r.get("hasMember"):
            left.append(Issue("information", "informational", f"{where}.code", "unknown_code",
                              "not a measure OnTrack knows; left out"))
        return
    inst, item = found
    eff = r.get("effectiveDateTime") or r.get("effectiveInstant") or (
        (r.get("effectivePeriod") or {}).get("start"))
    client, day = _subject_and_date(r, where, aliases, eff, "effective", problems)
    if client is None or day is None:
        return
    quantity = r.get("valueQuantity") or {}
    value: float | None = None
    path = f"{where}.value"
    if isinstance(quantity.get("value"), int | float):
        value = float(quantity["value"])
    elif isinstance(r.get("valueInteger"), int) and not isinstance(r["valueInteger"], bool):
        value = float(r["valueInteger"])
    elif item is not None and isinstance(r.get("valueCodeableConcept"), dict):
        value = _coded(inst, r["valueCodeableConcept"].get("coding") or [])
    if value is None:
        if r.get("hasMember"):  # a panel that only groups its members
            return
        problems.append(Issue("error", "required", path, "value_required",
                              "give valueQuantity or valueInteger (items: a LOINC answer in "
                              "valueCodeableConcept)"))
        return
    s = _slot(scores, order, client, day, inst.code, ref, where, "effective")
    if item is None:
        _set_total(s, value, path, inst.code, problems)
    else:
        _set_item(s, item, value, path, inst.code, problems)
