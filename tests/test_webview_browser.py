"""The web view in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium,
never `playwright install`) against a `bentoml serve` subprocess on a free port on 127.0.0.1.

The caseload loads the demo cohort; a click opens a client; the charts render (non-empty SVG);
the signal text equals the API's for that client; a client with a safety flag shows the
banner; the pages fit a tablet's width; and no request leaves localhost (every request is
routed through a handler that aborts and records any other host).

Without /usr/bin/chromium the tests skip locally and FAIL under CI (the CI variable set):
.ci/run installs it (apt-get update && apt-get install -y chromium).
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlparse

import httpx
import pytest

from tests.webview_fixtures import CHROMIUM, CHROMIUM_FLAGS, api_body, served

pytestmark = pytest.mark.slow

LOCAL = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    msg = (f"{CHROMIUM} is missing: install it with `apt-get update && apt-get install -y "
           "chromium` (never `playwright install`)")
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require_chromium()
    with served(tmp_path_factory.mktemp("browser"), demo_clients=40, demo_n=80) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    """One Chromium (fresh user-data dir) whose every request goes through a local-only
    route: any host other than localhost is aborted and recorded."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    seen: list[str] = []
    blocked: list[str] = []

    def guard(route, request) -> None:
        seen.append(request.url)
        host = urlparse(request.url).hostname or ""
        if request.url.startswith(("data:", "blob:", "about:")) or host in LOCAL:
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, service_workers="block")
        context.route("**/*", guard)
        context.on("request", lambda r: seen.append(r.url))
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield {"page": page, "seen": seen, "blocked": blocked, "context": context}
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def _signed_in_with_demo(server, page) -> None:
    page.goto(f"{server['url']}/ui/")
    if "/ui/login" in page.url:
        page.get_by_label("Clinic key").fill(server["key"])
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/caseload")
    if page.locator("#caseload-table").count() == 0:
        page.get_by_role("button", name="Load the demo cohort").click()
        page.wait_for_selector("#caseload-table")


def test_login_then_demo_caseload(server, browser):
    page = browser["page"]
    page.goto(f"{server['url']}/ui/caseload")
    assert "/ui/login" in page.url, "no caseload before the key"
    assert page.locator("#caseload-table").count() == 0
    _signed_in_with_demo(server, page)
    rows = page.locator("#caseload-table tbody tr")
    assert rows.count() == 40
    data = rows.evaluate_all("rs => rs.map(r => [r.dataset.safety, r.dataset.flag, "
                             "r.dataset.p])")
    rank = {"new": 0, "continuing": 1, "cleared": 2, "none": 2}
    keys = [(safety != "flag", rank[flag], -(float(p) if p else -1.0))
            for safety, flag, p in data]
    assert keys == sorted(keys), "safety flags first, then open flags, then by risk"
    assert 0 < sum(flag in {"new", "continuing"} for _, flag, _ in data) < len(data)


def test_flag_state_reason_and_meaning_on_the_client_page(server, browser):
    from features.contract import read_table

    page = browser["page"]
    _signed_in_with_demo(server, page)
    link = page.locator('#caseload-table tr[data-flag="continuing"] a.client-link, '
                        '#caseload-table tr[data-flag="new"] a.client-link').first
    client_id = link.inner_text().strip()
    link.click()
    page.wait_for_url("**/ui/client/*")
    badge = page.locator("#flag .flag-badge")
    assert badge.is_visible() and "Not on track" in badge.inner_text()
    r = httpx.post(f"{server['url']}/v1/assess", timeout=60,
                   json=api_body(read_table(server["demo"]), client_id),
                   headers={"Authorization": f"Bearer {server['key']}"})
    a = r.json()["assessments"][0]
    assert page.locator("#flag-reason").inner_text().strip() == a["flag"]["reason"]
    context = page.locator("#flag-context")
    assert not context.locator("p").is_visible()  # folded until asked for
    context.locator("summary").click()
    assert context.locator("p").inner_text().strip() == a["flag"]["context"]
    assert a["safety"]["message"] in page.locator("#safety-banner").inner_text()


def test_click_opens_client_with_charts_and_the_apis_signal(server, browser):
    from features.contract import read_table

    page = browser["page"]
    _signed_in_with_demo(server, page)
    link = page.locator("#caseload-table a.client-link").nth(2)
    client_id = link.inner_text().strip()
    link.click()
    page.wait_for_url("**/ui/client/2")
    assert page.get_by_role("heading", level=1).inner_text() == f"Client {client_id}"
    charts = page.locator("svg.chart")
    assert charts.count() >= 3
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box and box["width"] > 200 and box["height"] > 100
        assert charts.nth(i).locator("polyline, rect, polygon").count() > 0
    assert page.locator("#fig-phq-9 polyline").count() >= 1
    shown = page.locator("#signal-reason").inner_text().strip()
    body = api_body(read_table(server["demo"]), client_id)
    r = httpx.post(f"{server['url']}/v1/assess", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {server['key']}"})
    assert r.status_code == 200, r.text
    assert shown == r.json()["assessments"][0]["signal"]["reason"]


def test_safety_flag_client_shows_the_banner(server, browser):
    page = browser["page"]
    _signed_in_with_demo(server, page)
    flagged = page.locator('#caseload-table tr[data-safety="flag"] a.client-link')
    assert flagged.count() > 0, "the demo cohort has a client with a risk item above zero"
    flagged.first.click()
    page.wait_for_url("**/ui/client/*")
    banner = page.get_by_role("alert").filter(has_text="SAFETY")
    assert banner.is_visible()
    box = banner.bounding_box()
    assert box["y"] < 250, "the banner is at the top of the page"


def test_pages_fit_a_tablet(server, browser):
    page = browser["page"]
    _signed_in_with_demo(server, page)
    page.set_viewport_size({"width": 768, "height": 1024})
    try:
        for path in ("/ui/caseload", "/ui/client/0", "/ui/model"):
            page.goto(f"{server['url']}{path}")
            over = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert over <= 1, (path, over)
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_no_request_leaves_localhost(server, browser):
    """Runs last in this module: every request the pages made is checked."""
    page = browser["page"]
    _signed_in_with_demo(server, page)
    page.goto(f"{server['url']}/ui/model")
    assert browser["seen"], "requests were recorded"
    assert browser["blocked"] == []
    assert all((urlparse(u).hostname or "") in LOCAL or u.startswith("data:")
               for u in browser["seen"])
