"""Take the web view's screenshots for the docs (docs/screenshots/caseload.png, client.png).

    uv run python docs/make_screenshots.py

Self-contained and local-only: it fits the test suite's small model on a seeded synthetic cohort,
simulates a demo cohort, starts `bentoml serve` on a free port of 127.0.0.1 and drives Debian's
Chromium (/usr/bin/chromium, headless, no background networking) with Playwright. Every client
shown is simulated. Any request to a host other than localhost is aborted (and fails the run).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.webview_fixtures import CHROMIUM, CHROMIUM_FLAGS, served  # noqa: E402

OUT = REPO / "docs" / "screenshots"


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    blocked: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, served(Path(tmp), demo_clients=12,
                                                      demo_n=60) as srv:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(Path(tmp) / "profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900},
                device_scale_factor=1)

            def guard(route, request) -> None:
                if (urlparse(request.url).hostname or "") in {"127.0.0.1", "localhost"}:
                    route.continue_()
                else:
                    blocked.append(request.url)
                    route.abort()

            ctx.route("**/*", guard)
            page = ctx.new_page()
            page.goto(f"{srv['url']}/ui/login")
            page.get_by_label("Clinic key").fill(srv["key"])
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("button", name="Load the demo cohort").click()
            page.wait_for_selector("#caseload-table")
            page.screenshot(path=str(OUT / "caseload.png"), full_page=True)
            # the client shown: a client with an open not-on-track flag, a risk and a
            # clinical-support checklist (else the first with an open flag)
            flagged = page.locator('#caseload-table tr[data-flag="continuing"]:not([data-p=""]) '
                                   'a.client-link, #caseload-table tr[data-flag="new"]'
                                   ':not([data-p=""]) a.client-link')
            links = flagged if flagged.count() else page.locator("a.client-link")
            hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
            for href in hrefs:
                page.goto(f"{srv['url']}{href}" if href.startswith("/") else href)
                page.wait_for_selector("#signal-reason")
                if page.locator("#checklist").count():
                    break
            else:
                page.goto(f"{srv['url']}{hrefs[0]}" if hrefs[0].startswith("/") else hrefs[0])
                page.wait_for_selector("#signal-reason")
            page.locator("#flag-context summary").click()  # show what a flag means
            page.screenshot(path=str(OUT / "client.png"), full_page=True)
            ctx.close()
    if blocked:
        raise SystemExit(f"requests to other hosts were made: {blocked}")
    print(f"wrote {OUT / 'caseload.png'} and {OUT / 'client.png'}")


if __name__ == "__main__":
    main()
