"""Shared by tests/test_webview*.py and docs/make_screenshots.py: a small simulated demo cohort;
one client's rows of a sessions frame as a ``POST /v1/assess`` body (to compare the web view
with the API); a real `bentoml serve` on a free local port; Debian Chromium's flags."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def write_demo(out: Path, n: int = 120, seed: int = 5) -> Path:
    """A simulated cohort (training.simulate) in the contract's format; returns sessions.csv."""
    from training.simulate import simulate_cohort

    simulate_cohort(n, seed=seed, oracle_clients=0).write(out, "csv")
    return out / "sessions.csv"


def api_body(sessions: pd.DataFrame, client_id: str) -> dict[str, Any]:
    """The client's rows as the API's request (items and dates included when present)."""
    rows = sessions[sessions["client_id"] == client_id].sort_values(["session", "instrument"])
    items = [c for c in rows.columns if c.startswith("item_") and c[5:].isdigit()]
    out = []
    for s, g in rows.groupby("session", sort=True):
        scores = []
        for r in g.itertuples(index=False):
            d = r._asdict()
            x = {"instrument": str(d["instrument"]), "score": float(d["score"])}
            given = {c[5:]: float(d[c]) for c in items if pd.notna(d[c])}
            if given:
                x["items"] = given
            scores.append(x)
        sess: dict[str, Any] = {"session": int(s), "scores": scores}
        if "date" in g.columns and pd.notna(g["date"].iloc[0]):
            sess["date"] = pd.Timestamp(g["date"].iloc[0]).date().isoformat()
        out.append(sess)
    return {"clients": [{"client_id": str(client_id), "sessions": out}]}


# ------------------------------------------------------------------------------------------
# A real server and a local-only Chromium (the browser tests and docs/make_screenshots.py)
# ------------------------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--no-default-browser-check"]


@contextmanager
def served(root: Path, demo_clients: int = 40, demo_n: int = 80):
    """`tests.service_fixtures.served_service` with a simulated demo cohort loaded by the web
    view. Yields a dict: url, key, demo (sessions.csv), log (server output)."""
    from tests.service_fixtures import served_service

    demo = write_demo(root / "demo", n=demo_n, seed=5)
    with served_service(root, "clinic-browser", {
            "ONTRACK_DEMO_PATH": str(demo),
            "ONTRACK_DEMO_CLIENTS": str(demo_clients)}) as srv:
        yield {**srv, "demo": demo}
