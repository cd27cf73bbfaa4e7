"""Reading a patient's measures from an EHR's FHIR server (CDS Hooks without prefetch, the
SMART launch): a search, its ``next`` pages on the same server, with the EHR's bearer token.
Errors name the step, never the URL's query (it holds the patient id) or the token."""

from __future__ import annotations

from typing import Any

import httpx

from serving.fhir.inbound import reference

MAX_PAGES = 20  # OnTrack heuristic: search pages followed before giving up
PAGE_SIZE = 200


class FetchError(Exception):
    pass


def search(base: str, query: str, token: str, timeout: float) -> list[dict[str, Any]]:
    """Every resource of ``{base}/{query}``, following ``next`` links on the same server."""
    root = base.rstrip("/")
    out: list[dict[str, Any]] = []
    url: str | None = f"{root}/{query}{'&' if '?' in query else '?'}_count={PAGE_SIZE}"
    try:
        with httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {token}",
                                                    "Accept": "application/fhir+json"}) as c:
            for _ in range(MAX_PAGES):
                if url is None:
                    return out
                r = c.get(url)
                if r.status_code != 200:
                    raise FetchError(f"the EHR's FHIR server answered {r.status_code}")
                page = r.json()
                out += [e["resource"] for e in page.get("entry") or []
                        if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
                url = next((link.get("url") for link in page.get("link") or []
                            if isinstance(link, dict) and link.get("relation") == "next"), None)
                if url is not None and not url.startswith(root + "/"):
                    raise FetchError("the FHIR server's next page is on another server")
    except (httpx.HTTPError, ValueError) as err:
        raise FetchError(f"reading from the EHR's FHIR server failed "
                         f"({type(err).__name__})") from None
    raise FetchError(f"more than {MAX_PAGES} pages of results")


def patient_measures(base: str, patient_id: str, token: str, timeout: float,
                     queries: tuple[str, ...]) -> list[dict[str, Any]]:
    """The resources of each query (``{patient}`` replaced by the id) that are about that
    patient (a server that ignores a search parameter returns others too)."""
    out = []
    for q in queries:
        out += search(base, q.replace("{patient}", patient_id), token, timeout)
    return [r for r in out if reference(r.get("subject"), {}) == f"Patient/{patient_id}"]
