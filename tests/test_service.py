"""The prediction service in-process (BentoML app through Starlette's TestClient).

Covers: the explained assessment and its logit identity, sentence templates, safety states,
out-of-population, an instrument without a model, every bad-input class (4xx naming the field
and the rule), auth (RFC 6750), the model card, OpenAPI, the audit log, the key store, log
redaction (a sentinel client id never reaches a log) and import-time hygiene.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from serving.schemas import EXAMPLE_INPUT, AssessRequest
from tests.service_fixtures import (
    REPO,
    SHARED_CLIENTS,
    environ,
    register,
    service_env,
    shared_bundle,
    shared_cohort_path,
)

SENTINEL = "SENTINEL-c1d2e3f4-never-log-me"
SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    uri = register(shared_bundle(), root / "mlflow")
    values = {**service_env(root, uri), "ONTRACK_MAX_CLIENTS": "50",
              "ONTRACK_MAX_BODY_BYTES": "200000", "ONTRACK_AUDIT_SECRET": SECRET}
    with environ(values):
        yield root


@pytest.fixture(scope="module")
def keys(env):
    from serving.auth import KeyStore

    store = KeyStore(env / "keys.sqlite")
    out = {"assess": store.add("clinic-a"), "bench": store.add("clinic-b", ("benchmark",)),
           "revoked": store.add("clinic-c")}
    store.revoke("clinic-c")
    store.close()
    return out


@pytest.fixture(scope="module")
def client(env, keys):
    from starlette.testclient import TestClient

    from serving.service import OnTrack

    with TestClient(OnTrack.to_asgi(), raise_server_exceptions=False) as c:
        yield c


def post(client, body, key=None, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, dict | list):
        return client.post("/v1/assess", json=body, headers=headers, **kw)
    headers["Content-Type"] = kw.pop("content_type", "application/json")
    return client.post("/v1/assess", content=body, headers=headers, **kw)


def one(client_id="c1", sessions=None, covariates=None):
    c = {"client_id": client_id, "sessions": sessions or [
        {"session": s, "scores": [{"instrument": "PHQ-9", "score": v, "items": {"9": 0}},
                                  {"instrument": "SRS", "score": 36.0}]}
        for s, v in ((1, 18), (2, 16), (3, 15))]}
    if covariates is not None:
        c["covariates"] = covariates
    return {"clients": [c]}


# ------------------------------------------------------------------------------------------
# The assessment
# ------------------------------------------------------------------------------------------
def test_example_is_explained(client, keys):
    r = post(client, EXAMPLE_INPUT, keys["assess"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "ontrack-not-risk/1"
    a = body["assessments"][0]
    assert [x["client_id"] for x in body["assessments"]] == ["example-001", "example-002"]
    risk = a["risk"]
    assert 0 <= risk["p_failure"] <= 1 and 0 <= risk["p_dropout"] <= 1
    assert "at_risk" not in risk and "not reliably improve" in risk["definition"]
    flag = a["flag"]
    assert flag["state"] in {"new", "continuing", "cleared", "none"}
    assert flag["flagged"] == (flag["state"] in {"new", "continuing"}) and flag["eligible"]
    assert 0 < flag["exit_threshold"] < flag["entry_threshold"] <= 1
    assert "Of 100 clients flagged" in flag["context"] and "AUROC" in flag["context"]
    assert risk["model_version"] == "ontrack-not-risk/1" and risk["feature_version"]
    assert a["signal"]["colour"] in {"grey", "white", "green", "yellow", "red"}
    assert a["signal"]["reason"]
    assert len(a["course"]) == 4 and all(p["lower"] <= p["upper"] for p in a["course"])
    assert a["change"]["intake_score"] == 18 and a["alliance"]["status"] != "not_assessed"
    drivers = a["explanation"]["drivers"]
    assert drivers and all(d["sentence"] and d["features"] for d in drivers)
    assert {"name", "value", "log_odds"} <= set(drivers[0]["features"][0])
    assert all("percentage_points" in d for d in drivers)
    assert a["suggestions"], "rule-based suggestions are always computed"


def test_logit_identity(client, keys):
    """intercept + contributions == the model's calibrated logit == logit(p_failure)."""
    r = post(client, EXAMPLE_INPUT, keys["assess"])
    for a in r.json()["assessments"]:
        e = a["explanation"]
        feats = [f["log_odds"] for d in e["drivers"] for f in d["features"]]
        assert e["intercept"] + sum(feats) == pytest.approx(e["logit"], abs=1e-9)
        assert e["logit"] == pytest.approx(float(logit(a["risk"]["p_failure"])), abs=1e-6)
        for d in e["drivers"]:
            assert d["log_odds"] == pytest.approx(sum(f["log_odds"] for f in d["features"]))
            p = a["risk"]["p_failure"]
            assert d["percentage_points"] == pytest.approx(
                100 * (p - float(expit(e["logit"] - d["log_odds"]))), abs=1e-6)


def test_every_feature_has_a_sentence(env):
    from models.explain import missing_templates
    from serving.loader import load_from_registry
    from serving.settings import ServingSettings

    bundle = load_from_registry(ServingSettings()).bundle
    fitted = [est for m in bundle.models.values() for est in (m.failure, m.dropout)
              if est is not None]
    assert fitted and all(hasattr(est, "feature_names_") for est in fitted)
    for est in fitted:
        assert missing_templates(est.feature_names_) == []


def test_the_registered_bundle_is_typed_and_loads_the_same_everywhere(env):
    """Each model satisfies the protocol the assessment calls; the service's loader and the
    one registry loader give the same version string."""
    from models.bundle import ExpectedCourse, Navigator, Recommender, RiskModel
    from models.flag import FlagPolicy
    from models.registry import load_bundle
    from serving.loader import load_from_registry
    from serving.settings import ServingSettings

    loaded = load_from_registry(ServingSettings())
    bundle = loaded.bundle
    assert bundle.version == f"ontrack-not-risk/{loaded.version}"
    assert load_bundle("models:/ontrack-not-risk@champion").version == bundle.version
    for m in bundle.models.values():
        assert isinstance(m.failure, RiskModel)
        assert m.dropout is None or isinstance(m.dropout, RiskModel)
        assert isinstance(m.expected, ExpectedCourse)
        assert m.navigator is None or isinstance(m.navigator, Navigator)
        assert m.recommender is None or isinstance(m.recommender, Recommender)
        assert m.flag_policy is None or isinstance(m.flag_policy, FlagPolicy)
    assert not isinstance(object(), RiskModel)


def test_the_course_so_far_is_what_was_expected_at_the_time(env):
    """Each past point equals the forward course of the assessment made at the score before
    it (re-assessing the earlier history): the chart's past bands need no second pass."""
    from features.contract import load_cohort
    from serving.loader import load_from_registry
    from serving.settings import ServingSettings

    bundle = load_from_registry(ServingSettings()).bundle
    s = load_cohort(shared_cohort_path()).sessions
    checked = 0
    for cid in s["client_id"].unique()[:40]:
        h = s[s["client_id"] == cid]
        a = bundle.assess(h)[0]
        for point in a.course_so_far:
            earlier = h[h["session"] < point.session]
            before = bundle.assess(earlier)[0]
            ahead = {c.session: c for c in before.course}
            if point.session not in ahead:  # further ahead than the horizon
                continue
            c = ahead[point.session]
            assert (c.expected, c.lower, c.upper, c.failure_boundary) == pytest.approx(
                (point.expected, point.lower, point.upper, point.failure_boundary), abs=1e-9)
            checked += 1
    assert checked > 50


def test_safety_states_and_crisis_first(client, keys):
    flag = one("f", [{"session": 1, "scores": [{"instrument": "PHQ-9", "score": 20,
                                                "items": {"9": 2}}]},
                     {"session": 2, "scores": [{"instrument": "PHQ-9", "score": 19,
                                                "items": {"9": 1}}]}])
    clear = one("c")
    none = one("n", [{"session": 1, "scores": [{"instrument": "PHQ-9", "score": 20}]},
                     {"session": 2, "scores": [{"instrument": "PHQ-9", "score": 12}]}])
    body = {"clients": flag["clients"] + clear["clients"] + none["clients"]}
    got = {a["client_id"]: a for a in post(client, body, keys["assess"]).json()["assessments"]}
    assert got["f"]["safety"]["status"] == "flag"
    assert got["f"]["safety"]["items"][0]["item"] == 9
    assert got["f"]["suggestions"][0]["adaptation"] == "safety"
    assert got["c"]["safety"]["status"] == "not_endorsed"
    assert got["c"]["safety"]["message"].startswith("Risk items not endorsed at session 3")
    assert "clear" not in got["c"]["safety"]["message"].lower()
    assert got["n"]["safety"]["status"] == "not_assessed"
    assert all(s["adaptation"] != "safety" for s in got["c"]["suggestions"])


def test_safety_history_is_never_forgotten(client, keys):
    """Item 9 endorsed at session 2: a later session with totals only keeps the flag and says
    so; a later zero answer reads 'not endorsed at session 3' and still shows session 2."""
    s1 = {"session": 1, "scores": [{"instrument": "PHQ-9", "score": 20, "items": {"9": 0}}]}
    s2 = {"session": 2, "scores": [{"instrument": "PHQ-9", "score": 19, "items": {"9": 2}}]}
    s3_zero = {"session": 3, "scores": [{"instrument": "PHQ-9", "score": 18, "items": {"9": 0}}]}
    s3_total = {"session": 3, "scores": [{"instrument": "PHQ-9", "score": 18}]}
    s4_total = {"session": 4, "scores": [{"instrument": "PHQ-9", "score": 8}]}
    body = {"clients": [one("gap", [s1, s2, s3_total])["clients"][0],
                        one("zero", [s1, s2, s3_zero, s4_total])["clients"][0]]}
    got = {a["client_id"]: a for a in post(client, body, keys["assess"]).json()["assessments"]}
    gap, zero = got["gap"]["safety"], got["zero"]["safety"]
    assert gap["status"] == "flag" and gap["assessed_session"] == 2
    assert "Session 3 had no risk-item answers" in gap["message"]
    assert zero["status"] == "not_endorsed" and zero["assessed_session"] == 3
    assert zero["last_endorsed"]["session"] == 2 and zero["last_endorsed"]["value"] == 2
    assert "Last endorsed at session 2" in zero["message"]
    assert "Session 4 had no risk-item answers" in zero["message"]
    # PHQ-9 8 is in the functional range, but the earlier endorsement holds back any ending
    a = got["zero"]
    assert a["signal"]["colour"] != "white" and "ending" not in a["signal"]["reason"].replace(
        "ending is not suggested", "")


def test_out_of_population(client, keys):
    late = one("late", [{"session": s, "scores": [{"instrument": "PHQ-9", "score": 15}]}
                        for s in range(1, 13)], covariates={"age_band": "90+"})
    a = post(client, late, keys["assess"]).json()["assessments"][0]
    assert a["population"]["out_of_population"] is True
    reasons = " ".join(a["population"]["reasons"])
    assert "age_band = 90+" in reasons
    # a session later than the training rows is said in a note, not counted as out of population
    assert "session 12" not in reasons and any("session 12" in n for n in a["notes"])
    intake = one("severe", [{"session": s, "scores": [{"instrument": "PHQ-9", "score": 27}]}
                            for s in range(1, 4)])
    b = post(client, intake, keys["assess"]).json()["assessments"][0]
    if b["population"]["out_of_population"]:  # the fixture's training range may reach 27
        assert "outside the training range" in " ".join(b["population"]["reasons"])


def test_instrument_without_model_gets_rule_based_parts(client, keys):
    body = one("core", [{"session": 1, "scores": [{"instrument": "CORE-10", "score": 25,
                                                   "items": {"6": 1}}]},
                        {"session": 2, "scores": [{"instrument": "CORE-10", "score": 18}]}])
    r = post(client, body, keys["assess"])
    assert r.status_code == 200, r.text
    a = r.json()["assessments"][0]
    assert a["risk"] is None and a["explanation"] is None
    assert any("No model covers CORE-10" in n for n in a["notes"])
    assert a["change"]["intake_score"] == 25 and a["safety"]["status"] == "flag"


def test_renaming_a_client_changes_nothing(client, keys):
    a = post(client, one("name-a"), keys["assess"]).json()["assessments"][0]
    b = post(client, one("name-b"), keys["assess"]).json()["assessments"][0]
    a.pop("client_id"), b.pop("client_id")
    assert a == b


def test_concurrent_requests_are_assessed_together_and_each_gets_its_own(env):
    """Requests that queue while the service is busy are assessed in one call; each caller
    gets exactly what its request alone gives, even when two requests use the same client id
    for different people, and a request that fails gets its own error and nobody else's."""
    import threading
    import time

    from features.contract import InvalidDataError
    from serving.batching import Batcher
    from serving.loader import load
    from serving.schemas import to_frames
    from serving.settings import ServingSettings

    bundle = load(ServingSettings()).bundle
    gate, calls = threading.Event(), []

    class Held:  # the first call waits, so that the other requests queue behind it
        def assess(self, sessions, *args, **kw):
            calls.append(len(pd.unique(np.asarray(sessions["client_id"], dtype=object))))
            if len(calls) == 1:
                gate.wait(30)
            return bundle.assess(sessions, *args, **kw)

    def frames(body):
        return to_frames(AssessRequest.model_validate_json(json.dumps(body)))

    worse = [{"session": s, "scores": [{"instrument": "PHQ-9", "score": v, "items": {"9": 0}}]}
             for s, v in ((1, 15), (2, 19), (3, 22), (4, 24))]
    alliance_only = {"clients": [{"client_id": "x", "sessions": [  # with the others' columns
        {"session": 1, "scores": [{"instrument": "SRS", "score": 30.0}]}]},
        one("y")["clients"][0]]}
    bodies = [one("first"), EXAMPLE_INPUT, one("c1"), one("c1", sessions=worse),
              alliance_only, one("c9", covariates={"sex": "f"})]
    batcher = Batcher(Held(), horizon=4)
    results: dict[int, object] = {}

    inputs = [frames(b) for b in bodies]

    def call(i):
        try:
            results[i] = batcher.assess(inputs[i].sessions, inputs[i].covariates)
        except Exception as err:  # noqa: BLE001
            results[i] = err

    def until(cond):
        t0 = time.monotonic()
        while not cond() and time.monotonic() - t0 < 30:
            time.sleep(0.01)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    until(lambda: calls)
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, len(bodies))]
    for t in rest:
        t.start()
    until(lambda: len(batcher._queue) == len(rest))  # every other request is waiting
    gate.set()
    for t in [first, *rest]:
        t.join(60)
    assert len(calls) >= 3 and max(calls) > 2  # a combined call of several requests
    assert isinstance(results[4], InvalidDataError)  # alliance ratings only: its own error
    assert calls.count(5) == 1  # tried once with the others (c1, c1, c9, x, y), then alone
    for i, body in enumerate(bodies):
        if i == 4:
            continue
        f = frames(body)
        alone = bundle.assess(f.sessions, f.covariates)
        assert [a.model_dump() for a in results[i]] == [a.model_dump() for a in alone], i
    assert results[2][0].risk.p_failure != results[3][0].risk.p_failure  # two different c1


# ------------------------------------------------------------------------------------------
# Bad input: 4xx naming the field and the rule, never a 500
# ------------------------------------------------------------------------------------------
def _bad_cases():
    base = one()
    unknown = copy.deepcopy(base)
    unknown["clients"][0]["sessions"][0]["scores"][0]["instrument"] = "PHQ-99"
    out_of_range = copy.deepcopy(base)
    out_of_range["clients"][0]["sessions"][1]["scores"][0]["score"] = 28
    not_increasing = copy.deepcopy(base)
    not_increasing["clients"][0]["sessions"][2]["session"] = 2
    empty = copy.deepcopy(base)
    empty["clients"][0]["sessions"] = []
    wrong_type = copy.deepcopy(base)
    wrong_type["clients"][0]["sessions"][0]["scores"][0]["score"] = "eighteen"
    str_session = copy.deepcopy(base)
    str_session["clients"][0]["sessions"][0]["session"] = "1"
    items_sum = copy.deepcopy(base)
    items_sum["clients"][0]["sessions"][0]["scores"][0]["items"] = {str(k): 3 for k in
                                                                    range(1, 10)}
    item_range = copy.deepcopy(base)
    item_range["clients"][0]["sessions"][0]["scores"][0]["items"] = {"9": 4}
    unknown_field = copy.deepcopy(base)
    unknown_field["clients"][0]["sessions"][0]["scroe"] = 1
    session_zero = copy.deepcopy(base)
    session_zero["clients"][0]["sessions"][0]["session"] = 0
    dup = {"clients": base["clients"] * 2}
    many = {"clients": [one(f"c{i}")["clients"][0] for i in range(51)]}
    alliance_only = one("a", [{"session": 1, "scores": [{"instrument": "SRS", "score": 30}]}])
    nan = json.dumps(base).replace('"score": 16', '"score": NaN').encode()
    # found by fuzzing: a date outside what the sessions frame can hold was a 500
    year_one = copy.deepcopy(base)
    year_one["clients"][0]["sessions"][0]["date"] = "0001-01-01"
    far_future = copy.deepcopy(base)
    far_future["clients"][0]["sessions"][0]["date"] = "2300-01-01"
    return [
        ("date in year 1", year_one, 422, "clients[0].sessions[0].date", "greater_than_equal"),
        ("date in 2300", far_future, 422, "clients[0].sessions[0].date", "less_than_equal"),
        ("unknown instrument", unknown, 422, "clients[0].sessions[0].scores[0].instrument",
         "instrument_unknown"),
        ("score out of range", out_of_range, 422, "clients[0].sessions[1].scores[0].score",
         "score_out_of_range"),
        ("sessions not increasing", not_increasing, 422, "clients[0].sessions[2].session",
         "sessions_not_increasing"),
        ("empty history", empty, 422, "clients[0].sessions", "too_short"),
        ("no clients", {"clients": []}, 422, "clients", "too_short"),
        ("too many clients", many, 422, "clients", "too_many_clients"),
        ("wrong type", wrong_type, 422, "clients[0].sessions[0].scores[0].score", "float_type"),
        ("string session", str_session, 422, "clients[0].sessions[0].session", "int_type"),
        ("NaN", nan, 422, "clients[0].sessions[1].scores[0].score", "finite_number"),
        ("items do not sum", items_sum, 422, "clients[0].sessions[0].scores[0].score",
         "items_do_not_sum"),
        ("item out of range", item_range, 422, "clients[0].sessions[0].scores[0].items.9",
         "item_out_of_range"),
        ("unknown field", unknown_field, 422, "clients[0].sessions[0].scroe",
         "extra_forbidden"),
        ("session zero", session_zero, 422, "clients[0].sessions[0].session",
         "session_invalid"),
        ("duplicate client", dup, 422, "clients[1].client_id", "duplicate_client"),
        ("alliance only", alliance_only, 422, "clients[0].sessions", "no_outcome_score"),
        ("invalid JSON", b'{"clients": [', 400, "body", "json_invalid"),
        ("not an object", b"[1, 2]", 422, "body", "model_type"),
        ("oversized body", b'{"clients": []' + b" " * 250_000 + b"}", 413, "body",
         "body_too_large"),
    ]


@pytest.mark.parametrize("name,body,status,field,rule", _bad_cases(),
                         ids=[c[0] for c in _bad_cases()])
def test_bad_input_names_field_and_rule(client, keys, name, body, status, field, rule):
    r = post(client, body, keys["assess"])
    assert r.status_code == status, r.text
    detail = r.json()["errors"]
    assert any(d["field"] == field and d["rule"] == rule for d in detail), detail


def test_every_violation_is_reported(client, keys):
    body = one()
    body["clients"][0]["sessions"][0]["scores"][0]["instrument"] = "XYZ"
    body["clients"][0]["sessions"][1]["scores"][0]["score"] = 99
    rules = {d["rule"] for d in post(client, body, keys["assess"]).json()["errors"]}
    assert {"instrument_unknown", "score_out_of_range"} <= rules


def test_wrong_media_type(client, keys):
    r = post(client, json.dumps(one()).encode(), keys["assess"], content_type="text/csv")
    assert r.status_code == 415 and r.json()["errors"][0]["field"] == "Content-Type"


def test_every_refusal_is_problem_details_whose_type_explains_itself(client, keys):
    from serving.schemas import PROBLEM_TYPES

    bad = one()
    bad["clients"][0]["sessions"][0]["scores"][0]["score"] = 99
    answers = [post(client, bad, keys["assess"]),  # 422, a contract rule
               post(client, b"{", keys["assess"]),  # 400, not JSON
               post(client, one()),  # 401
               client.get("/v1/no-such-route"),  # 404 from the information routes
               client.post("/v1/model"),  # 405
               client.post("/v1/noop", content=b"[1]", headers={  # 400, not an object
                   "Authorization": f"Bearer {keys['assess']}",
                   "Content-Type": "application/json"})]
    assert [r.status_code for r in answers] == [422, 400, 401, 404, 405, 400]
    for r in answers:
        assert r.headers["content-type"] == "application/problem+json", (r.url, r.headers)
        body = r.json()
        assert set(body) == {"type", "title", "status", "detail", "error", "errors"}
        assert body["status"] == r.status_code and body["errors"], body
        assert all({"field", "rule", "message"} == set(e) for e in body["errors"])
        kind = client.get(body["type"])  # a relative reference to the type's description
        assert kind.status_code == 200 and kind.json()["title"] == body["title"]
        assert kind.json()["title"] == PROBLEM_TYPES[body["error"]][1]
    assert answers[3].json()["error"] == "not_found"
    assert "allow" in {k.lower() for k in answers[4].headers}
    assert client.get("/v1/problems/no-such-type").status_code == 404


# ------------------------------------------------------------------------------------------
# Auth
# ------------------------------------------------------------------------------------------
def test_missing_key_is_401(client):
    r = post(client, one())
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="ontrack"'


@pytest.mark.parametrize("key", ["otk_000000000000_wrong", "garbage", "revoked"])
def test_invalid_or_revoked_key_is_401(client, keys, key):
    r = post(client, one(), keys.get(key, key))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_wrong_scheme_is_401(client, keys):
    r = client.post("/v1/assess", json=one(), headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_insufficient_scope_is_403(client, keys):
    r = post(client, one(), keys["bench"])
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert client.post("/v1/noop", json={}, headers={
        "Authorization": f"Bearer {keys['bench']}"}).status_code == 200
    assert client.post("/v1/noop", json={}).status_code == 401


@pytest.mark.parametrize("path", ["/v1/health", "/v1/model", "/readyz", "/livez",
                                  "/docs.json"])
def test_open_routes(client, path):
    assert client.get(path).status_code == 200


# ------------------------------------------------------------------------------------------
# Model card, OpenAPI
# ------------------------------------------------------------------------------------------
def test_model_card(client):
    card = client.get("/v1/model").json()
    assert card["version"] == "ontrack-not-risk/1" and card["date"] == "2025-01-01"
    for key in ("intended_use", "inputs", "logic", "limits"):
        assert card[key]
    inst = card["instruments"][0]
    assert inst["instrument"] == "PHQ-9" and 0 < inst["flag_policy"]["entry_threshold"] < 1
    assert "flagged after intake" in inst["flag_policy"]["description"]
    pop = inst["training_population"]
    assert pop["n_clients"] == SHARED_CLIENTS and pop["sessions"] == [1, 6]
    assert inst["validation"]["auroc"]["lo"] < inst["validation"]["auroc"]["hi"]
    assert inst["model_size"]["trees"] > 0


def test_openapi_uses_the_one_example(client):
    spec = client.get("/docs.json").json()
    assert "/v1/assess" in spec["paths"] and "/v1/model" in spec["paths"]
    body = spec["paths"]["/v1/assess"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["example"] == EXAMPLE_INPUT


# ------------------------------------------------------------------------------------------
# Audit, keys, logs
# ------------------------------------------------------------------------------------------
def test_audit_log_is_append_only_and_pseudonymous(client, keys, env):
    post(client, one(SENTINEL), keys["assess"])
    db = env / "audit.sqlite"
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT clinic, client_pseudonym, model_version, signal, at_risk "
                        "FROM assessments ORDER BY id DESC LIMIT 1").fetchall()
    want = hmac.new(SECRET.encode(), SENTINEL.encode(), hashlib.sha256).hexdigest()
    assert rows[0][:3] == ("clinic-a", want, "ontrack-not-risk/1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE assessments SET signal = 'green'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM assessments")
    conn.close()
    cols = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(assessments)")}
    assert not cols & {"client_id", "score", "scores", "date"}
    raw = b"".join(p.read_bytes() for p in env.glob("audit.sqlite*"))
    assert SENTINEL.encode() not in raw


def test_key_store_keeps_hashes_only(tmp_path):
    from serving.auth import KeyStore

    store = KeyStore(tmp_path / "k.sqlite")
    key = store.add("clinic-x")
    assert store.verify(key).clinic == "clinic-x"
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("k.sqlite*"))
    assert key.split("_", 2)[2].encode() not in raw


def test_every_key_check_makes_one_constant_time_comparison(tmp_path, monkeypatch):
    """A right key, a wrong secret, an unknown key id and a malformed key each cost one
    hmac.compare_digest of two SHA-256 digests (no early exit that times could reveal)."""
    import hmac

    from serving import auth

    store = auth.KeyStore(tmp_path / "k.sqlite")
    key = store.add("clinic-t")
    calls = []
    real = hmac.compare_digest

    def counted(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counted)
    prefix, key_id, secret = key.split("_", 2)
    tries = [key, f"{prefix}_{key_id}_{secret[::-1]}", f"{prefix}_{'0' * 12}_{secret}",
             "not-a-key"]
    results = []
    for token in tries:
        calls.clear()
        results.append(store.verify(token) is not None)
        assert calls == [(32, 32)], token
    assert results == [True, False, False, False]
    store.close()


def test_keys_cli_prints_key_last(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from serving.auth import KeyStore
    from serving.cli import register

    monkeypatch.setenv("ONTRACK_KEYS_PATH", str(tmp_path / "keys.sqlite"))
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    runner = CliRunner()
    out = runner.invoke(app, ["keys", "add", "clinic-z"])
    assert out.exit_code == 0, out.output
    key = out.output.strip().splitlines()[-1]
    assert KeyStore(tmp_path / "keys.sqlite").verify(key).clinic == "clinic-z"
    listed = runner.invoke(app, ["keys", "list"]).output
    assert "clinic-z" in listed and key not in listed
    assert runner.invoke(app, ["keys", "revoke", "clinic-z"]).exit_code == 0
    assert KeyStore(tmp_path / "keys.sqlite").verify(key) is None


def test_sentinel_never_logged(client, keys, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    good = one(SENTINEL)
    bad = copy.deepcopy(good)
    bad["clients"][0]["sessions"][1]["scores"][0]["score"] = 99
    typed = copy.deepcopy(good)
    typed["clients"][0]["sessions"][0]["session"] = SENTINEL
    for body in (good, bad, typed, json.dumps(good).encode()[:-3]):
        post(client, body, keys["assess"])
        post(client, body)  # unauthenticated
    captured = capfd.readouterr()
    assert SENTINEL not in caplog.text
    assert SENTINEL not in captured.out + captured.err


def test_redaction_filter_strips_exception_text():
    from pydantic import BaseModel, ValidationError

    from serving.logredact import RedactExceptionDetails

    class M(BaseModel):
        x: int

    try:
        M(x=SENTINEL)
    except ValidationError:
        record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s",
                                   ("/v1/assess",), sys.exc_info())
    RedactExceptionDetails().filter(record)
    text = logging.Formatter().format(record)
    assert SENTINEL not in text and "ValidationError" in text


# ------------------------------------------------------------------------------------------
# Architecture
# ------------------------------------------------------------------------------------------
def test_route_takes_the_guards_parsed_request():
    """The request guard parses and type-checks the body once; the route's BentoML input
    takes that object and never reads the body again (docs/service.md, Speed)."""
    import asyncio

    from starlette.requests import Request

    from serving.schemas import EXAMPLE_INPUT, AssessRequest
    from serving.service import AssessInput

    parsed = AssessRequest.model_validate_json(json.dumps(EXAMPLE_INPUT))

    async def receive():
        raise AssertionError("the body was read a second time")

    scope = {"type": "http", "method": "POST", "path": "/v1/assess", "headers": [],
             "state": {"assess_request": parsed}}
    got = asyncio.run(AssessInput.from_http_request(Request(scope, receive), None))
    assert got.clients is parsed.clients


def test_service_freezes_the_loaded_model_out_of_garbage_collection(client):
    """After start-up the bundle is frozen out of the cyclic collector and the young
    generation is collected every ONTRACK_GC_THRESHOLD allocations (default 50,000)."""
    import gc

    from serving.settings import ServingSettings

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == ServingSettings().gc_threshold == 50_000


def test_serving_never_imports_training():
    paths = sorted((REPO / "serving").rglob("*.py"))
    assert REPO / "serving" / "webview" / "handlers.py" in paths  # the subpackages too
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "training" or n.startswith("training.") for n in names), path


def test_import_has_no_side_effects(tmp_path):
    code = ("import logging, os, mlflow; before = mlflow.get_tracking_uri();"
            "import serving.service, serving.cli, serving.loader;"
            "assert mlflow.get_tracking_uri() == before;"
            "assert not logging.getLogger().handlers, logging.getLogger().handlers;"
            "assert not os.listdir('.'), os.listdir('.')")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bh"),
           "ONTRACK_KEYS_PATH": str(tmp_path / "var" / "k.sqlite"),
           "ONTRACK_AUDIT_PATH": str(tmp_path / "var" / "a.sqlite"), "PYTHONPATH": str(REPO)}
    work = tmp_path / "cwd"
    work.mkdir()
    res = subprocess.run([sys.executable, "-c", code], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "var").exists(), "importing created the key or audit store"


def test_a_clinic_flag_budget_comes_from_the_settings(env):
    """ONTRACK_FLAG_BUDGETS gives one clinic its own budget: its flags open at a higher risk;
    another clinic keeps the bundle's. A budget outside (0, 1) is refused at start-up."""
    from pydantic import ValidationError

    from serving.service import OnTrack
    from serving.settings import ServingSettings

    with environ({"ONTRACK_FLAG_BUDGETS": json.dumps({"strict-clinic": 0.05})}):
        svc = OnTrack.inner()
        req = AssessRequest.model_validate_json(json.dumps(EXAMPLE_INPUT))
        _, strict = svc.run(req, "strict-clinic")
        _, other = svc.run(req, "clinic-a")
    s, o = strict.assessments[0].flag, other.assessments[0].flag
    assert s.budget == 0.05 and o.budget == 0.30
    assert s.entry_threshold > o.entry_threshold
    with environ({"ONTRACK_FLAG_BUDGETS": json.dumps({"x": 1.5})}), pytest.raises(
            ValidationError, match="between 0 and 1"):
        ServingSettings()


def test_card_and_feedback_tables_are_append_only_and_keep_no_comment(tmp_path):
    from serving.audit import AuditLog, pseudonym

    log = AuditLog(tmp_path / "audit.sqlite", "test-secret-0123456789abcdef").open()
    log.record_cards("clinic-a", [("card-1", "Patient/p9", "PHQ-9", "warning", "new")])
    owner = log.card_owner("card-1", "clinic-a")
    assert owner == pseudonym(b"test-secret-0123456789abcdef", "Patient/p9")
    assert log.card_owner("card-1", "clinic-b") is None  # another clinic's card
    log.record_feedback("clinic-a", [("card-1", owner, "overridden", "other", True, None)])
    [row] = log.feedback()
    assert (row["outcome"], row["override_reason"], row["has_comment"]) == (
        "overridden", "other", 1)
    log.close()
    conn = sqlite3.connect(tmp_path / "audit.sqlite")
    for table in ("cds_cards", "cds_feedback"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"UPDATE {table} SET clinic = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"DELETE FROM {table}")
    assert b"Patient/p9" not in (tmp_path / "audit.sqlite").read_bytes()
