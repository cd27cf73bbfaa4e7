"""The web view in-process (the service's ASGI app, /ui mounted, through Starlette's TestClient).

Covers: no client data without the clinic's key (and the key checked as the API checks it:
unknown, revoked and wrong-scope keys refused; revocation ends a session); the demo caseload
sorted by risk; the client page showing exactly the API's signal reason and risk; the safety
banner and the visible "not assessed"; uploads validated by the contract's rules (a report,
never a 500) and never written to disk; accessible charts; no external references; the words
("not on track", never "failure", in the view's own text); the in-memory session cap.
"""

from __future__ import annotations

import html
import re
import tempfile
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.service_fixtures import environ, register, service_env, shared_bundle
from tests.webview_fixtures import api_body, write_demo

SECRET = "test-secret-0123456789abcdef"


def _clear_bentoml_collectors() -> None:
    """Two to_asgi() apps in one process collide in prometheus_client's registry."""
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(n.startswith("bentoml_") for n in names):
            REGISTRY.unregister(collector)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("webview")
    uri = register(shared_bundle(), root / "mlflow")
    demo = write_demo(root / "demo", n=100, seed=5)
    values = {**service_env(root, uri), "ONTRACK_AUDIT_SECRET": SECRET,
              "ONTRACK_DEMO_PATH": str(demo), "ONTRACK_DEMO_CLIENTS": "60"}
    with environ(values):
        yield SimpleNamespace(root=root, demo=demo)


@pytest.fixture(scope="module")
def keys(env):
    from serving.auth import KeyStore

    store = KeyStore(env.root / "keys.sqlite")
    out = {"ok": store.add("clinic-ui"), "bench": store.add("clinic-b", ("benchmark",)),
           "revoked": store.add("clinic-c")}
    store.revoke("clinic-c")
    store.close()
    return out


@pytest.fixture(scope="module")
def app(env, keys):
    from starlette.testclient import TestClient

    from serving.service import OnTrack

    _clear_bentoml_collectors()
    with TestClient(OnTrack.to_asgi(), raise_server_exceptions=False) as c:
        yield c
    _clear_bentoml_collectors()  # the next module may build its own app


def _browser(app, key=None):
    """A fresh 'browser' (own cookie jar) on the same app; signed in when a key is given."""
    from starlette.testclient import TestClient

    c = TestClient(app.app, raise_server_exceptions=False)
    if key:
        r = c.post("/ui/login", data={"key": key}, follow_redirects=False)
        assert r.status_code == 303, r.text
    return c


@pytest.fixture(scope="module")
def demo_browser(app, keys):
    c = _browser(app, keys["ok"])
    r = c.post("/ui/caseload/demo", follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def _rows(page: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in re.finditer(
        r'<tr class="[^"]*" data-p="(?P<p>[^"]*)" data-safety="(?P<safety>[^"]+)" '
        r'data-colour="(?P<colour>[^"]+)" data-flag="(?P<flag>[^"]+)">\s*'
        r'<th scope="row"><a href="/ui/client/(?P<n>\d+)"',
        page)]


def _text(page: str) -> str:
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


# ------------------------------------------------------------------------------------------
# Access
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/ui/caseload", "/ui/client/0", "/ui/"])
def test_no_client_page_without_the_key(app, path):
    r = _browser(app).get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"


def test_post_routes_need_the_key(app, env):
    c = _browser(app)
    assert c.post("/ui/caseload/demo", follow_redirects=False).headers["location"] == "/ui/login"
    r = c.post("/ui/caseload/upload", files={"sessions": ("s.csv", b"client_id\n")},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"


def test_login_page_is_labelled(app):
    page = _browser(app).get("/ui/login").text
    assert '<label for="key">Clinic key</label>' in page and 'id="key"' in page
    assert 'type="password"' in page


@pytest.mark.parametrize("which,status", [("revoked", 401), ("bench", 403), (None, 401)])
def test_bad_keys_are_refused(app, keys, which, status):
    key = keys[which] if which else "otk_abcdefabcdef_nope"
    c = _browser(app)
    r = c.post("/ui/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == status and 'role="alert"' in r.text
    assert "ontrack_ui" not in r.cookies
    assert c.get("/ui/caseload", follow_redirects=False).status_code == 303


def test_session_cookie_is_httponly_strict_and_opaque(app, keys):
    c = _browser(app)
    r = c.post("/ui/login", data={"key": keys["ok"]}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Max-Age" not in cookie and "expires" not in cookie.lower()  # browser session only
    assert keys["ok"] not in cookie and "clinic-ui" not in cookie


def test_logout_ends_the_session(app, keys):
    c = _browser(app, keys["ok"])
    assert c.get("/ui/caseload").status_code == 200
    c.post("/ui/logout", follow_redirects=False)
    assert c.get("/ui/caseload", follow_redirects=False).status_code == 303


def test_revoking_the_key_ends_the_session(app, env):
    from serving.auth import KeyStore

    store = KeyStore(env.root / "keys.sqlite")
    key = store.add("clinic-temp")
    c = _browser(app, key)
    assert c.get("/ui/caseload").status_code == 200
    store.revoke("clinic-temp")
    store.close()
    assert c.get("/ui/caseload", follow_redirects=False).headers["location"] == "/ui/login"


# ------------------------------------------------------------------------------------------
# Caseload and client page: the API's own assessment
# ------------------------------------------------------------------------------------------
def test_demo_caseload_order_safety_then_flag_then_risk(demo_browser):
    page = demo_browser.get("/ui/caseload").text
    rows = _rows(page)
    assert len(rows) == 60
    rank = {"new": 0, "continuing": 1, "cleared": 2, "none": 2}
    keys = [(r["safety"] != "flag", rank[r["flag"]], -(float(r["p"]) if r["p"] else -1.0))
            for r in rows]
    assert keys == sorted(keys)
    assert sum(bool(r["p"]) for r in rows) > 40
    assert "Last session" in page and "Trend since intake" in page
    assert "Not-on-track flag" in page
    assert any(r["safety"] == "flag" for r in rows), "the demo cohort has a safety flag"
    flagged = sum(r["flag"] in {"new", "continuing"} for r in rows)
    assert 0 < flagged < len(rows) * 0.7, "a flag that fires on everyone is no signal"


def test_client_page_matches_the_api(demo_browser, app, keys, env):
    from features.contract import read_table

    sessions = read_table(env.demo)
    shown_risk = shown_drivers = 0
    for n in (0, 7):
        page = demo_browser.get(f"/ui/client/{n}").text
        cid = html.unescape(re.search(r"<h1>Client (.+?)</h1>", page).group(1))
        r = app.post("/v1/assess", json=api_body(sessions, cid),
                     headers={"Authorization": f"Bearer {keys['ok']}"})
        assert r.status_code == 200, r.text
        a = r.json()["assessments"][0]
        shown = re.search(r'<p class="signal-reason" id="signal-reason">(.*?)</p>', page, re.S)
        assert html.unescape(shown.group(1)) == a["signal"]["reason"]
        text = html.unescape(page)
        flag = re.search(r'<p id="flag-reason">(.*?)</p>', page, re.S)
        assert html.unescape(flag.group(1)) == a["flag"]["reason"]
        assert a["flag"]["context"] in text and a["safety"]["message"] in text
        if a["risk"] is not None:
            assert f"{100 * a['risk']['p_failure']:.0f}%" in page
            assert a["risk"]["definition"] in text
            shown_risk += 1
        for d in (a["explanation"] or {"drivers": []})["drivers"]:
            assert d["sentence"] in text
            shown_drivers += 1
        for s in a["suggestions"]:
            assert s["prompt"] in text and s["rationale"] in text
        assert (a["agreement"] is None) or a["agreement"] in text
    assert shown_risk and shown_drivers  # the branches above ran


def test_safety_flag_shows_the_banner_first(demo_browser):
    rows = _rows(demo_browser.get("/ui/caseload").text)
    n = next(r["n"] for r in rows if r["safety"] == "flag")
    page = demo_browser.get(f"/ui/client/{n}").text
    banner = page.index('id="safety-banner"')
    assert 'role="alert" id="safety-banner"' in page and "SAFETY" in page
    assert banner < page.index("<h1>") < page.index('id="signal-reason"')


def test_client_page_charts_are_accessible_svg(demo_browser):
    page = demo_browser.get("/ui/client/0").text
    svgs = re.findall(r"<svg .*?</svg>", page, re.S)
    assert len(svgs) >= 3  # outcome trajectory(ies), alliance, drivers
    for svg in svgs:
        root = ET.fromstring(svg)  # well-formed
        ns = "{http://www.w3.org/2000/svg}"
        assert root.get("role") == "img"
        assert root.find(f"{ns}title").text and len(root.find(f"{ns}desc").text) > 20
        assert root.findall(f".//{ns}polyline") or root.findall(f".//{ns}rect")
    assert "not-on-track boundary" in page and "expected band" in page
    assert "clinical cut-off" in page


def test_checklist_is_listed_in_words_not_charted(demo_browser):
    """A client with a clinical-support checklist: one line per domain in words, flagged
    domains marked; the checklist total is never drawn as a course."""
    rows = _rows(demo_browser.get("/ui/caseload").text)
    shown = 0
    for r in rows:
        page = demo_browser.get(f"/ui/client/{r['n']}").text
        assert 'id="fig-csc"' not in page and "chart-csc" not in page
        if 'id="checklist"' not in page:
            continue
        shown += 1
        section = page[page.index('id="checklist"'):page.index('id="why-h"')]
        items = re.findall(r"<li( class=\"flag\")?>(.*?)</li>", section, re.S)
        assert len(items) == 5
        for flagged, text in items:
            m = re.search(r"\((\d) of 4\)", text)
            assert "On the clinical-support checklist the client rated" in html.unescape(text)
            assert bool(flagged) == (int(m.group(1)) >= 2)
    assert shown > 0, "the simulated demo caseload has clients with a checklist"


def test_unknown_client_index_is_404(demo_browser):
    assert demo_browser.get("/ui/client/100000").status_code == 404


def test_not_assessed_is_visible(app, keys):
    c = _browser(app, keys["ok"])
    csv = ("client_id,session,instrument,score\n" + "".join(
        f"N1,{s},PHQ-9,{v}\n" for s, v in ((1, 18), (2, 17), (3, 16)))).encode()
    r = c.post("/ui/caseload/upload", files={"sessions": ("sessions.csv", csv, "text/csv")},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get("/ui/client/0").text
    assert "Risk not assessed" in page and 'id="safety-banner"' in page


# ------------------------------------------------------------------------------------------
# Uploads: the contract's report, never a 500, never on disk
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,rule", [
    (b"client_id,session,instrument,score\nA,1,PHQ-9,40\nA,2,PHQ-9,12\n", "score_out_of_range"),
    (b"client_id,session,instrument\nA,1,PHQ-9\n", "column_missing"),
    (b"client_id,session,instrument,score\nA,1,XYZ,4\n", "instrument_unknown"),
    (b"client_id,session,instrument,score\nA,1,SRS,30\nA,2,SRS,31\n", "no_outcome_score"),
    (b"\xff\xfe\x00\x01garbage\x00", "unreadable"),
    (b"", "unreadable"),
])
def test_bad_upload_shows_the_report(app, keys, content, rule):
    c = _browser(app, keys["ok"])
    r = c.post("/ui/caseload/upload", files={"sessions": ("s.csv", content, "text/csv")})
    assert r.status_code == 422, (r.status_code, r.text[-500:])
    assert f"<code>{rule}</code>" in r.text and 'role="alert"' in r.text


def test_upload_without_a_file(app, keys):
    c = _browser(app, keys["ok"])
    r = c.post("/ui/caseload/upload", data={"x": "1"}, files={"other": ("a.txt", b"x")})
    assert r.status_code == 422 and "<code>file_missing</code>" in r.text


def test_upload_is_never_written_to_disk(app, keys, env, monkeypatch):
    """A sessions file over 1 MB (Starlette would spool it to a temporary file) is parsed in
    memory; no temporary file is created and nothing new appears next to the service's
    state files or in the temp folder."""
    rolled, made = [], []
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover",
                        lambda self: rolled.append(1))
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        orig = getattr(tempfile, name)

        def spy(*a, _orig=orig, **k):
            made.append(1)
            return _orig(*a, **k)

        monkeypatch.setattr(tempfile, name, spy)
    # this process's temporary files go to a folder of its own: the system one is shared with
    # the other test workers and whatever else runs on the machine
    private_tmp = env.root / "private-tmp"
    private_tmp.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    rows = ["client_id,session,instrument,score,item_9"]
    for i in range(20000):
        rows += [f"U{i:05d},{s},PHQ-9,{18 - s},0" for s in (1, 2, 3)]
    data = ("\n".join(rows) + "\n").encode()
    assert len(data) > 1_100_000
    c = _browser(app, keys["ok"])
    before = {p for p in env.root.rglob("*")}
    r = c.post("/ui/caseload/upload", files={"sessions": ("big.csv", data, "text/csv")},
               follow_redirects=False)
    # 20,000 clients is over the service's max_clients (1,000): refused with the report, after
    # the file was read and validated in memory
    assert r.status_code == 422 and "too_many_clients" in r.text
    assert not rolled and not made
    after = {p for p in env.root.rglob("*")}
    assert {p for p in after - before if "audit" not in p.name} == set()
    assert tempfile.gettempdir() == str(private_tmp) and list(private_tmp.iterdir()) == []
    assert b"U00001" not in (env.root / "audit.sqlite").read_bytes()


def test_uploaded_caseload_is_assessed(app, keys, env):
    from features.contract import read_table

    sessions = read_table(env.demo)
    ids = list(pd.unique(sessions["client_id"]))[60:75]
    buf = sessions[sessions["client_id"].isin(ids)].to_csv(index=False).encode()
    c = _browser(app, keys["ok"])
    r = c.post("/ui/caseload/upload", files={"sessions": ("mine.csv", buf, "text/csv")},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get("/ui/caseload").text
    assert len(_rows(page)) == len(ids) and "upload: mine.csv" in page


def test_caseloads_are_private_to_each_browser_session(app, keys, demo_browser):
    other = _browser(app, keys["ok"])
    assert other.get("/ui/client/0").status_code == 404
    assert "No clients loaded yet" in other.get("/ui/caseload").text


# ------------------------------------------------------------------------------------------
# Model card, words, network
# ------------------------------------------------------------------------------------------
def test_model_card_page_is_open_and_readable(app):
    r = _browser(app).get("/ui/model")
    assert r.status_code == 200
    for text in ("Intended use", "Training population", "Validation", "Limits", "AUROC",
                 "0.71", "synthetic data"):
        assert text in r.text, text


def test_view_never_says_failure(demo_browser, app, keys):
    """The view's own words say "not on track"; only text quoted from the assessment (signal
    reasons, driver sentences, suggestions) is left as the API wrote it."""
    pages = [demo_browser.get("/ui/caseload").text, _browser(app).get("/ui/model").text,
             _browser(app).get("/ui/login").text]
    quoted = []
    for n in range(0, 60, 6):
        page = demo_browser.get(f"/ui/client/{n}").text
        pages.append(page)
        quoted += re.findall(r'id="signal-reason">(.*?)</p>', page, re.S)
        quoted += re.findall(r"</span>: (.*?)</li>", page, re.S)
        quoted += re.findall(r'<p class="(?:prompt|why)">(.*?)</p>', page, re.S)
    for page in pages:
        text = page
        for q in quoted:
            text = text.replace(q, " ")
        assert "failure" not in _text(text).lower()
    assert "Not on track" in _text(pages[0]) or "On track" in _text(pages[0])


def test_no_external_references_and_strict_csp(demo_browser):
    for path in ("/ui/caseload", "/ui/client/0", "/ui/model"):
        r = demo_browser.get(path)
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        refs = re.findall(r'(?:src|href|action)="([^"]+)"', r.text)
        assert refs and all(not re.match(r"^[a-z]+://|^//", u) for u in refs), refs
        assert "<script" not in r.text
    css = demo_browser.get("/ui/static/style.css")
    assert css.status_code == 200 and "url(" not in css.text and "@import" not in css.text


def test_session_store_evicts_the_oldest(tmp_path):
    from serving import webview
    from serving.settings import ServingSettings

    svc = SimpleNamespace(settings=ServingSettings(keys_path=tmp_path / "k.sqlite",
                                                   require_auth=False))
    st = webview._State(svc)
    st.settings.ui_max_sessions = 3
    sids = [st.new_session("k", "c") for _ in range(5)]
    assert [st.get(s) is not None for s in sids] == [False, False, True, True, True]
    st.settings.ui_idle_minutes = 0
    assert st.get(sids[-1]) is None


def test_drivers_chart_is_signed_and_largest_first():
    from serving.charts import Bar, drivers_svg

    svg = drivers_svg("d", [Bar("alliance", -2.0), Bar("severity", 9.5), Bar("change", -12)])
    desc = ET.fromstring(svg).find("{http://www.w3.org/2000/svg}desc").text
    assert desc.index("change lowers") < desc.index("severity raises") < desc.index(
        "alliance lowers")


def test_browser_tests_fail_not_skip_under_ci(monkeypatch, tmp_path):
    """CI sets CI=...: a missing Chromium is a failure there, a skip only on a laptop."""
    from tests import test_webview_browser as bt

    monkeypatch.setattr(bt, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        bt._require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        bt._require_chromium()
