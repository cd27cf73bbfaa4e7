"""The service inside an EHR, over HTTP on loopback: FHIR R4 in and out (``/v1/fhir/assess``)
and CDS Hooks 2.0 (``/cds-services``), against a real FHIR server (SEKMET) holding the
patient's measures, with EHR-signed tokens."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
import uuid
from types import SimpleNamespace

import httpx
import jwt
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.riskassessment import RiskAssessment

from serving.audit import pseudonym
from serving.cdshooks import PREFETCH, SERVICE_ID
from serving.fhir.measures import bundle, client_resources
from serving.fhir.outbound import RISK_PROBABILITY
from serving.schemas import EXAMPLE_INPUT
from tests.ehr_fixtures import (
    FHIR_TOKEN,
    fhir_server,
    jwks_server,
    make_key,
    put_resources,
    smart_ehr,
    token,
)
from tests.service_fixtures import served_service
from tests.test_webview_browser import _require_chromium
from tests.webview_fixtures import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.slow

ISS = "https://ehr.test"
SENTINEL = "SENTINEL7731"  # a patient id that must never reach a log
SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def ehr(tmp_path_factory):
    root = tmp_path_factory.mktemp("ehr")
    es, rs = make_key("ES384", "ehr-es-1"), make_key("RS384", "ehr-rs-1")
    with jwks_server({"keys": [rs.public_jwk]}) as jku, fhir_server(root / "fhir") as fhir, \
            smart_ehr(fhir) as smart:
        (root / "issuers.json").write_text(json.dumps({"issuers": [
            {"iss": ISS, "clinic": "clinic-ehr", "jwks": {"keys": [es.public_jwk]},
             "jku": [jku], "fhir_servers": [fhir]}]}))
        (root / "smart.json").write_text(json.dumps({"clients": [
            {"iss": smart.iss, "client_id": smart.client_id, "clinic": "clinic-ehr"}]}))
        env = {"ONTRACK_CDS_ISSUERS_PATH": str(root / "issuers.json"),
               "ONTRACK_CDS_REPLAY_PATH": str(root / "jti.sqlite"),
               "ONTRACK_SMART_CLIENTS_PATH": str(root / "smart.json")}
        with served_service(root / "svc", "clinic-a", env) as svc:
            yield SimpleNamespace(url=svc["url"], key=svc["key"], log=svc["log"],
                                  audit=root / "svc" / "audit.sqlite", es=es, rs=rs, jku=jku,
                                  fhir=fhir, smart=smart)


def _history() -> dict:
    """The example request with a date on every session (FHIR resources always carry one)."""
    ex = copy.deepcopy(EXAMPLE_INPUT)
    for n, s in enumerate(ex["clients"][1]["sessions"]):
        s["date"] = f"2025-02-{3 + 7 * n:02d}"
    return ex


def _assess_json(ehr, request: dict) -> list[dict]:
    r = httpx.post(f"{ehr.url}/v1/assess", json=request, timeout=60,
                   headers={"Authorization": f"Bearer {ehr.key}"})
    assert r.status_code == 200, r.text
    return r.json()["assessments"]


def _assess_fhir(ehr, doc, media="application/fhir+json", key=True) -> httpx.Response:
    headers = {"Content-Type": media}
    if key:
        headers["Authorization"] = f"Bearer {ehr.key}"
    content = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return httpx.post(f"{ehr.url}/v1/fhir/assess", content=content, headers=headers,
                      timeout=60)


def _resources(kind: str = "QuestionnaireResponse") -> list[dict]:
    ex = _history()
    return [r for i, c in enumerate(ex["clients"])
            for r in client_resources(f"p{i}", c, kind=kind)]


def _audit_rows(ehr, table: str = "assessments") -> list[tuple]:
    with sqlite3.connect(ehr.audit) as db:
        return db.execute(f"SELECT * FROM {table}").fetchall()


# ------------------------------------------------------------------------------------------
# FHIR R4 in and out
# ------------------------------------------------------------------------------------------
def test_a_fhir_bundle_gets_the_same_assessment_as_the_json_request(ehr):
    want = _assess_json(ehr, _history())
    r = _assess_fhir(ehr, bundle(_resources()))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    out = [e["resource"] for e in r.json()["entry"]]
    ras = [x for x in out if x["resourceType"] == "RiskAssessment"]
    assert len(ras) == len(want) >= 2
    for a, ra in zip(want, ras, strict=True):
        i = int(a["client_id"].endswith("002"))
        assert ra["subject"]["reference"] == f"Patient/p{i}"
        assert f"on {a['instrument']} at session {a['session']}" in ra["code"]["text"]
        first = ra["prediction"][0]
        assert first["probabilityDecimal"] == pytest.approx(a["risk"]["p_failure"], abs=1e-6)
        assert first["qualitativeRisk"]["coding"][0]["code"] == (
            "high" if a["flag"]["flagged"] else "low")
        assert first["rationale"] == a["flag"]["reason"]
        notes = " ".join(n["text"] for n in ra["note"])
        for d in a["explanation"]["drivers"]:
            assert d["sentence"] in notes
        for s in a["suggestions"]:
            assert s["prompt"] in ra.get("mitigation", "")
    flagged = {f"Patient/p{int(a['client_id'].endswith('002'))}" for a in want
               if a["safety"]["status"] == "flag"}
    assert flagged == {"Patient/p1"}
    assert {x["subject"]["reference"] for x in out if x["resourceType"] == "Flag"} == flagged


def test_the_risk_assessment_and_flag_are_valid_r4_resources(ehr):
    res = _resources()
    r = _assess_fhir(ehr, bundle(res))
    doc = r.json()
    Bundle.model_validate(doc)
    ids = {f"{x['resourceType']}/{x['id']}" for x in res}
    kinds = [e["resource"]["resourceType"] for e in doc["entry"]]
    assert "RiskAssessment" in kinds and "Flag" in kinds
    for e in doc["entry"]:
        x = e["resource"]
        if x["resourceType"] == "RiskAssessment":
            RiskAssessment.model_validate(x)
            # what fhir.resources does not check
            for p in x["prediction"]:
                assert 0.0 <= p["probabilityDecimal"] <= 1.0
            assert x["code"]["coding"][0]["code"] == "not-on-track"
            assert x["method"]["coding"][0]["code"] and x["method"]["coding"][0]["version"]
            q = x["prediction"][0]["qualitativeRisk"]["coding"][0]
            assert q["system"] == RISK_PROBABILITY and q["code"] in {"high", "low"}
            assert x["basis"] and {b["reference"] for b in x["basis"]} <= ids
        elif x["resourceType"] == "Flag":
            Flag.model_validate(x)
            assert x["code"]["coding"] == [{"system": "http://loinc.org", "code": "44260-8"}]
            assert x["status"] == "active" and x["code"]["text"]


def test_a_bad_resource_gets_an_operation_outcome_and_nothing_is_assessed(ehr):
    res = _resources()
    res[0]["item"][-1]["answer"] = [{"valueInteger": 28}]  # PHQ-9 total above 27
    before = len(_audit_rows(ehr))
    r = _assess_fhir(ehr, bundle(res))
    assert r.status_code == 422
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    [issue] = oo["issue"]
    assert issue["expression"] == ["Bundle.entry[0].resource.item[1].answer[0]"]
    assert issue["details"]["coding"][0]["code"] == "score_out_of_range"
    assert len(_audit_rows(ehr)) == before  # nothing half-processed

    r = _assess_fhir(ehr, b"{not json")
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = _assess_fhir(ehr, {"resourceType": "Patient", "id": "x"})
    assert r.status_code == 400 and r.json()["issue"][0]["details"]["coding"][0]["code"] == \
        "not_a_bundle"
    r = _assess_fhir(ehr, bundle(res), key=False)
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    r = _assess_fhir(ehr, bundle(res), media="text/plain")
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"


# ------------------------------------------------------------------------------------------
# CDS Hooks
# ------------------------------------------------------------------------------------------
def _service_url(ehr) -> str:
    return f"{ehr.url}/cds-services/{SERVICE_ID}"


def _hook(patient: str, prefetch: dict | None, **extra) -> dict:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/7", "patientId": patient}, **extra}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def _prefetch(patient: str, resources: list[dict]) -> dict:
    mine = [r for r in resources if r.get("subject", {}).get("reference") == f"Patient/{patient}"]
    qr = [r for r in mine if r["resourceType"] == "QuestionnaireResponse"]
    obs = [r for r in mine if r["resourceType"] == "Observation"]
    return {"patient": {"resourceType": "Patient", "id": patient},
            "responses": bundle(qr, "searchset"), "observations": bundle(obs, "searchset")}


def _call(ehr, body: dict, tok: str | None = None, url: str | None = None) -> httpx.Response:
    tok = tok or token(ehr.es, ISS, _service_url(ehr))
    return httpx.post(url or _service_url(ehr), json=body, timeout=60,
                      headers={"Authorization": f"Bearer {tok}"})


def _expected_indicators(assessments: list[dict]) -> list[str]:
    out = ["critical"] if any(a["safety"]["status"] == "flag" for a in assessments) else []
    return out + ["warning" if a["flag"]["flagged"] else "info" for a in assessments]


def test_discovery_names_the_patient_view_service_and_its_prefetch(ehr):
    r = httpx.get(f"{ehr.url}/cds-services", timeout=10)
    assert r.status_code == 200
    [service] = r.json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == SERVICE_ID
    assert service["description"] and service["title"]
    assert service["prefetch"] == PREFETCH
    assert all("{{context.patientId}}" in q for q in service["prefetch"].values())


def test_cards_follow_the_assessment_and_the_cds_hooks_rules(ehr):
    want = _assess_json(ehr, _history())
    res = _resources()
    for i in (0, 1):
        mine = [a for a in want if a["client_id"].endswith(f"00{i + 1}")]
        r = _call(ehr, _hook(f"p{i}", _prefetch(f"p{i}", res)))
        assert r.status_code == 200, r.text
        cards = r.json()["cards"]
        assert [c["indicator"] for c in cards] == _expected_indicators(mine)
        for c in cards:
            uuid.UUID(c["uuid"])
            assert 0 < len(c["summary"]) < 140
            assert c["source"]["label"] == "OnTrack"
            assert httpx.get(c["source"]["url"], timeout=10).status_code == 200
            [link] = c["links"]  # the SMART launch of the web view (configured here)
            assert link["type"] == "smart" and link["label"]
            assert link["url"] == f"{ehr.url}/ui/smart/launch"
            if c["indicator"] in {"critical", "warning"}:
                assert all(o["code"] for o in c["overrideReasons"])
        if i == 1:  # item 9 answered: safety first, and no reassurance beside it
            assert cards[0]["indicator"] == "critical"
            assert all("see the risk-item card" in c["summary"] for c in cards[1:]
                       if c["indicator"] == "info")


def test_missing_prefetch_without_a_fhir_server_is_412(ehr):
    r = _call(ehr, _hook("p0", None))
    assert r.status_code == 412
    r = _call(ehr, _hook("p0", {"patient": None, "responses": None, "observations": None}))
    assert r.status_code == 412
    other = {"fhirServer": "http://127.0.0.1:9/fhir", "fhirAuthorization": {
        "access_token": "x", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
        "subject": "ontrack"}}
    r = _call(ehr, _hook("p0", None, **other))  # a server not on the issuer's list
    assert r.status_code == 412


def test_without_prefetch_the_service_fetches_from_the_ehr_fhir_server(ehr):
    ex = _history()
    client = copy.deepcopy(ex["clients"][0])
    for s in client["sessions"]:  # the support checklist's items have no LOINC codes
        s["scores"] = [x for x in s["scores"] if x["instrument"] != "CSC"]
    obs = client_resources("pf", client, kind="Observation")
    put_resources(ehr.fhir, [{"resourceType": "Patient", "id": "pf"}, *obs])
    auth = {"fhirServer": ehr.fhir, "fhirAuthorization": {
        "access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Observation.read patient/QuestionnaireResponse.read",
        "subject": "ontrack"}}
    fetched = _call(ehr, _hook("pf", None, **auth))
    assert fetched.status_code == 200, fetched.text
    given = _call(ehr, _hook("pf", _prefetch("pf", obs)))
    assert fetched.json()["cards"]
    strip = [(c["indicator"], c["summary"], c["detail"]) for c in fetched.json()["cards"]]
    assert strip == [(c["indicator"], c["summary"], c["detail"]) for c in given.json()["cards"]]
    client["client_id"] = "pf"
    [want] = _assess_json(ehr, {"clients": [client]})
    assert [c["indicator"] for c in fetched.json()["cards"]] == _expected_indicators([want])
    bad = copy.deepcopy(auth)
    bad["fhirAuthorization"]["access_token"] = "wrong"
    assert _call(ehr, _hook("pf", None, **bad)).status_code == 412


@pytest.mark.parametrize("case", ["good", "jku", "replayed", "wrong_aud", "expired",
                                  "unknown_iss", "alg_none", "hs256", "no_jti", "future_iat",
                                  "long_lived", "jku_not_listed", "no_header"])
def test_only_a_fresh_token_signed_by_a_listed_ehr_passes(ehr, case):
    aud = _service_url(ehr)
    body = _hook("p0", _prefetch("p0", _resources()))
    now = int(time.time())
    tok = {
        "good": lambda: token(ehr.es, ISS, aud),
        "jku": lambda: token(ehr.rs, ISS, aud, headers={"jku": ehr.jku}),
        "replayed": lambda: token(ehr.es, ISS, aud),
        "wrong_aud": lambda: token(ehr.es, ISS, f"{ehr.url}/cds-services/other"),
        "expired": lambda: token(ehr.es, ISS, aud, iat=now - 600, exp=now - 300),
        "unknown_iss": lambda: token(ehr.es, "https://other-ehr.test", aud),
        "alg_none": lambda: jwt.encode({"iss": ISS, "sub": "x", "aud": aud, "iat": now,
                                        "exp": now + 60, "jti": str(uuid.uuid4())}, None,
                                       algorithm="none"),
        # the classic confusion: HMAC keyed with the EHR's public key
        "hs256": lambda: _hs256(ehr, aud, now),
        "no_jti": lambda: token(ehr.es, ISS, aud, jti=None),
        "future_iat": lambda: token(ehr.es, ISS, aud, iat=now + 600, exp=now + 800),
        "long_lived": lambda: token(ehr.es, ISS, aud, exp=now + 3600),
        "jku_not_listed": lambda: token(ehr.rs, ISS, aud,
                                        headers={"jku": ehr.jku.replace("jwks", "other")}),
        "no_header": lambda: None,
    }[case]()
    if case == "replayed":
        assert _call(ehr, body, tok).status_code == 200
    if tok is None:
        r = httpx.post(aud, json=body, timeout=30)
    else:
        r = _call(ehr, body, tok)
    if case in {"good", "jku"}:
        assert r.status_code == 200, r.text
        assert r.json()["cards"]
    else:
        assert r.status_code == 401
        # the same answer whatever was wrong (the rule is in the log only)
        assert r.json()["error"] == "unauthorized"
        assert r.json()["errors"][0]["rule"] == "invalid_token"


def _hs256(ehr, aud: str, now: int) -> str:
    import base64

    secret = base64.urlsafe_b64decode(ehr.es.public_jwk["x"] + "==")
    return jwt.encode({"iss": ISS, "sub": "x", "aud": aud, "iat": now, "exp": now + 60,
                       "jti": str(uuid.uuid4())}, secret * 2, algorithm="HS256",
                      headers={"kid": ehr.es.kid})


def test_feedback_is_written_to_the_audit_log_with_pseudonyms_only(ehr):
    r = _call(ehr, _hook("p1", _prefetch("p1", _resources())))
    card = r.json()["cards"][0]
    fb = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                        "overrideReason": {"reason": card["overrideReasons"][0],
                                           "userComment": "COMMENT-SENTINEL"},
                        "outcomeTimestamp": "2026-12-03T10:00:00Z"}]}
    url = f"{_service_url(ehr)}/feedback"
    got = httpx.post(url, json=fb, timeout=30,
                     headers={"Authorization": f"Bearer {token(ehr.es, ISS, _service_url(ehr))}"})
    assert got.status_code == 200 and got.json() == {"recorded": 1}
    rows = [r for r in _audit_rows(ehr, "cds_feedback") if r[3] == card["uuid"]]
    assert len(rows) == 1
    _, _, clinic, _, pseud, outcome, reason, has_comment, _ = rows[0]
    assert (clinic, outcome, reason, has_comment) == ("clinic-ehr", "overridden",
                                                      "already-discussed", 1)
    assert pseud == pseudonym(SECRET.encode(), "Patient/p1")
    assert pseud in {r[4] for r in _audit_rows(ehr)}  # the same pseudonym as the assessment
    assert b"COMMENT-SENTINEL" not in ehr.audit.read_bytes()
    unknown = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted"}]}
    got = httpx.post(url, json=unknown, timeout=30,
                     headers={"Authorization": f"Bearer {token(ehr.es, ISS, _service_url(ehr))}"})
    assert got.status_code == 400 and got.json()["errors"][0]["rule"] == "unknown_card"


def test_cors_is_open_on_cds_hooks_only(ehr):
    pre = {"Origin": "https://ehr.test", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(_service_url(ehr), headers=pre, timeout=10)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in {"*", "https://ehr.test"}
    r = httpx.options(f"{ehr.url}/v1/assess", headers=pre, timeout=10)
    assert "access-control-allow-origin" not in r.headers


# ------------------------------------------------------------------------------------------
# SMART App Launch of the web view
# ------------------------------------------------------------------------------------------
def _checked_history(pid: str) -> dict:
    """The first example client without the support checklist (its items have no LOINC
    codes, so an EHR would hold them only in a QuestionnaireResponse)."""
    client = copy.deepcopy(_history()["clients"][0])
    for s in client["sessions"]:
        s["scores"] = [x for x in s["scores"] if x["instrument"] != "CSC"]
    client["client_id"] = pid
    return client


@pytest.mark.browser
def test_a_smart_launch_opens_the_client_page_with_the_api_signal(ehr, tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    client = _checked_history("ps")
    put_resources(ehr.fhir, [{"resourceType": "Patient", "id": "ps"},
                             *client_resources("ps", client, kind="Observation")])
    ehr.smart.launches["launch-7f3"] = "ps"
    [want] = _assess_json(ehr, {"clients": [client]})
    visited: list[str] = []
    csp: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, service_workers="block")
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("framenavigated", lambda f: visited.append(f.url))
        page.on("response", lambda r: r.url.endswith("/ui/client/0") and csp.append(
            r.headers.get("content-security-policy", "")))
        page.goto(f"{ehr.url}/ui/smart/launch?iss={ehr.smart.iss}&launch=launch-7f3")
        page.wait_for_url("**/ui/client/0")
        signal = page.locator("#signal-reason").inner_text()
        flag = page.locator("#flag-reason").inner_text()
        safety = page.locator("#safety-banner").inner_text()
        context.close()
    assert signal.strip() == want["signal"]["reason"]
    assert flag.strip() == want["flag"]["reason"]
    assert want["safety"]["message"] in safety
    assert not any("/ui/login" in u for u in visited)  # the EHR session is the login
    assert csp and "frame-ancestors 'none'" in csp[0]
    [(_, asked)] = [x for x in ehr.smart.log if x[0] == "authorize"][-1:]
    assert asked["code_challenge_method"] == "S256" and asked["aud"] == ehr.smart.iss
    assert ehr.smart.pkce_checked == [True]  # the EHR verified the S256 challenge


def test_a_launch_from_an_unregistered_ehr_or_a_forged_callback_is_refused(ehr):
    r = httpx.get(f"{ehr.url}/ui/smart/launch", params={"iss": "http://127.0.0.1:9/fhir",
                                                         "launch": "x"}, timeout=10)
    assert r.status_code == 400 and "registered" in r.text
    r = httpx.get(f"{ehr.url}/ui/smart/callback", params={"code": "c", "state": "s"},
                  cookies={"ontrack_smart_state": "s"}, timeout=10)
    assert r.status_code == 400 and "expired" in r.text
    r = httpx.get(f"{ehr.url}/ui/smart/launch", params={"iss": ehr.smart.iss,
                                                         "launch": "launch-x"}, timeout=10)
    assert r.status_code == 302
    state = r.cookies["ontrack_smart_state"]
    r = httpx.get(f"{ehr.url}/ui/smart/callback", params={"code": "c", "state": state},
                  cookies={"ontrack_smart_state": "another"}, timeout=10)
    assert r.status_code == 400  # the state is not the browser's own


def test_no_patient_id_resource_content_or_token_reaches_the_log(ehr):
    res = client_resources(SENTINEL, _history()["clients"][1])
    tok = token(ehr.es, ISS, _service_url(ehr))
    assert _call(ehr, _hook(SENTINEL, _prefetch(SENTINEL, res)), tok).status_code == 200
    _call(ehr, _hook(SENTINEL, _prefetch(SENTINEL, res)), tok)  # replayed: refused, logged
    bad = copy.deepcopy(res)
    bad[0]["item"][-1]["answer"] = [{"valueInteger": 99}]
    assert _assess_fhir(ehr, bundle(bad)).status_code == 422
    assert _assess_fhir(ehr, bundle(res)).status_code == 200
    text = ehr.log.read_text()
    assert "CDS Hooks call refused (rule: replayed_jti)" in text  # the log is being written
    # the SMART launch ran earlier in this module (when Chromium is there): its launch id,
    # the EHR's access tokens and the patient's resource ids must not be logged either
    secrets = [SENTINEL, tok, FHIR_TOKEN, ehr.key, "QuestionnaireResponse/", "Observation/",
               "launch-7f3", "ps-s1-0", *ehr.smart.issued]
    for secret in secrets:
        assert secret not in text
