"""The FHIR mapping on its own (no service): what a Bundle becomes, and where its problems are
reported. Over HTTP, with the model: tests/test_ehr.py."""

from __future__ import annotations

import copy

import pytest

from serving.fhir.inbound import read_bundle
from serving.fhir.measures import bundle, client_resources, questionnaire_response
from serving.schemas import EXAMPLE_INPUT, contract_problems, to_frames

PHQ_ITEMS = {str(k): v for k, v in zip(range(1, 10), [2, 2, 3, 2, 1, 2, 2, 1, 1], strict=True)}


def _scores(parsed, client: int = 0):
    return [[(s.instrument, s.score, s.items) for s in ses.scores]
            for ses in parsed.request.clients[client].sessions]


def test_questionnaire_responses_become_the_same_history_as_the_json_request():
    client = EXAMPLE_INPUT["clients"][0]
    parsed = read_bundle(bundle(client_resources("p1", client)))
    assert not parsed.problems
    got = parsed.request.clients[0]
    assert got.client_id == "Patient/p1"
    assert [s.session for s in got.sessions] == [1, 2, 3, 4]
    assert [s.date.isoformat() for s in got.sessions] == [s["date"] for s in client["sessions"]]
    want = [[(x["instrument"], float(x["score"]),
              {k: float(v) for k, v in x["items"].items()} if "items" in x else None)
             for x in s["scores"]] for s in client["sessions"]]
    assert _scores(parsed) == want
    assert parsed.basis["Patient/p1"][0] == "QuestionnaireResponse/p1-s1-0"


def test_loinc_answer_codes_ordinal_values_and_lhc_link_ids_are_read():
    qr = questionnaire_response("Patient/a", "2025-03-03",
                                {"instrument": "PHQ-9", "score": 16, "items": PHQ_ITEMS})
    # the item answers went out as LOINC answer codes (LA6568-5 ...)
    assert qr["item"][0]["answer"][0]["valueCoding"]["code"] == "LA6570-1"
    qr["item"][1]["linkId"] = "/44249-1/44255-8"  # LHC-Forms style
    qr["item"][2]["answer"][0]["valueCoding"] = {
        "system": "http://loinc.org", "code": "LA6571-9", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/ordinalValue", "valueDecimal": 3}]}
    del qr["item"][-1]  # no total: the nine items give it
    parsed = read_bundle(bundle([qr]))
    assert not parsed.problems
    [[(inst, score, items)]] = _scores(parsed)
    assert inst == "PHQ-9" and score == 16.0
    assert items == {k: float(v) for k, v in PHQ_ITEMS.items()}


def test_observations_and_a_response_of_the_same_day_are_one_score():
    score = {"instrument": "PHQ-9", "score": 16, "items": PHQ_ITEMS}
    qr = questionnaire_response("Patient/a", "2025-03-03", score, "q1")
    obs = client_resources("a", {"sessions": [{"date": "2025-03-03", "scores": [score]}]},
                           kind="Observation")
    codes = [o["code"]["coding"][0]["code"] for o in obs]
    assert codes[0] == "44261-6" and codes[9] == "44260-8" and len(codes) == 10
    parsed = read_bundle(bundle([qr, *obs]))
    assert not parsed.problems
    assert _scores(parsed) == [[("PHQ-9", 16.0, {k: float(v) for k, v in PHQ_ITEMS.items()})]]
    assert set(parsed.basis["Patient/a"]) == {"QuestionnaireResponse/q1"} | {
        f"Observation/{o['id']}" for o in obs}
    obs[0]["valueInteger"] = 15
    parsed = read_bundle(bundle([qr, *obs]))
    assert [(p.rule, p.expression) for p in parsed.problems] == [
        ("conflicting_scores", "Bundle.entry[1].resource.value")]
    assert parsed.request is None


def test_drafts_errors_and_unknown_questionnaires_are_left_out_and_listed():
    client = EXAMPLE_INPUT["clients"][1]
    res = client_resources("b", client)
    draft = copy.deepcopy(res[0])
    draft["status"] = "in-progress"
    wrong = copy.deepcopy(res[0])
    wrong["status"] = "entered-in-error"
    other = copy.deepcopy(res[0])
    other["questionnaire"] = "http://loinc.org/q/55757-9"  # PHQ-2: not in the registry
    enc = {"resourceType": "Encounter", "status": "finished",
           "class": {"code": "AMB"}}
    parsed = read_bundle(bundle([*res, draft, wrong, other, enc]))
    assert not parsed.problems
    assert len(parsed.request.clients[0].sessions) == 2
    assert sorted(p.rule for p in parsed.left_out) == [
        "not_final", "not_final", "resource_not_used", "unknown_questionnaire"]
    assert {p.severity for p in parsed.left_out} == {"information"}


@pytest.mark.parametrize("edit, rule, where", [
    (lambda r: r.pop("subject"), "subject_required", "Bundle.entry[0].resource.subject"),
    (lambda r: r.pop("authored"), "date_required", "Bundle.entry[0].resource.authored"),
    (lambda r: r.update(authored="2025-02-30"), "fhir_structure",
     "Bundle.entry[0].resource.authored"),
    (lambda r: r.update(authored="0001-01-01"), "greater_than_equal",
     "Bundle.entry[0].resource.authored"),
    (lambda r: r["item"][-1].update(answer=[{"valueInteger": 31}]), "score_out_of_range",
     "Bundle.entry[0].resource.item[1].answer[0]"),
    (lambda r: r["item"][0].update(answer=[{"valueInteger": 4}]), "item_out_of_range",
     "Bundle.entry[0].resource.item[0].answer[0]"),
    (lambda r: r["item"][-1].update(answer=[{"valueString": "x"}]), "answer_not_scorable",
     "Bundle.entry[0].resource.item[1].answer[0]"),
    (lambda r: r["item"].pop(), "total_required", "Bundle.entry[0].resource"),
])
def test_a_bad_resource_is_refused_at_its_element_with_the_rule(edit, rule, where):
    res = client_resources("c", EXAMPLE_INPUT["clients"][1])
    edit(res[0])
    parsed = read_bundle(bundle(res))
    issues = parsed.problems
    if parsed.request is not None:  # the mapping passed: the rules of /v1/assess come next
        frames = to_frames(parsed.request)
        issues = [parsed.locate(p) for p in contract_problems(frames)]
    assert (rule, where) in [(p.rule, p.expression) for p in issues]


def test_not_a_bundle_or_no_measures_is_refused():
    assert read_bundle({"resourceType": "Patient"}).problems[0].rule == "not_a_bundle"
    assert read_bundle([]).problems[0].rule == "not_a_bundle"
    assert read_bundle({"resourceType": "Bundle", "entry": []}).problems[0].rule == "no_entries"
    only_patient = bundle([{"resourceType": "Patient", "id": "x"}])
    assert read_bundle(only_patient).problems[0].rule == "no_measures"


@pytest.mark.parametrize("canonical, code", [
    ("http://loinc.org/q/44249-1", "PHQ-9"), ("http://loinc.org/q/44249-1|2.76", "PHQ-9"),
    ("https://forms.ehr.example/Questionnaire/69737-5", "GAD-7"), ("44249-1", "PHQ-9"),
    ("http://ontrack.example.org/fhir/Questionnaire/SRS", "SRS"),
    ("https://forms.ehr.example/Questionnaire/SRS", None),  # only OnTrack's own URL for SRS
    ("http://loinc.org/q/55757-9", None), (None, None)])
def test_questionnaires_are_known_by_their_loinc_panel_or_ontrack_url(canonical, code):
    from serving.fhir.inbound import questionnaire_of

    got = questionnaire_of(canonical)
    assert (got.code if got else None) == code
