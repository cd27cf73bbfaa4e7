"""Loading a caseload: the data contract's rules (`features.contract`, the rule set of
``ontrack validate``), then the service's bundle (``bundle.assess``), then the audit row (no
caseload is shown without it); the problems found, in the shape the caseload page lists them.

May import: pandas, `features.contract`, `serving.audit` and `serving.webview.store` /
`serving.webview.clinical`; the assessment itself is the bundle's (models/), never computed
here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.contract import check_assessable, validate_frames
from serving.audit import AuditUnavailable
from serving.webview.clinical import _caseload_order, _row
from serving.webview.store import Caseload, _State


@dataclass
class Problem:
    table: str
    row: int | None
    rule: str
    message: str


def _assess_cohort(st: _State, clinic: str, sessions: pd.DataFrame,
                   clients: pd.DataFrame | None, source: str
                   ) -> tuple[Caseload | None, list[Problem], int]:
    """Validate with the contract's rules, then assess with the service's bundle."""
    cohort, report = validate_frames(sessions, clients)
    problems = [Problem(v.table, v.row, v.rule, v.message) for v in report.violations]
    if problems:
        return None, problems, 0
    s = cohort.sessions
    ids = pd.unique(s["client_id"])
    problems = [Problem(v.table, v.row, v.rule, v.message)
                for v in check_assessable(s, st.service.settings.max_clients)]
    if problems:
        return None, problems, 0
    cov = None
    if len(cohort.clients):
        extra = [c for c in cohort.clients.columns if c not in {"client_id", "end_status"}]
        if extra:
            cov = cohort.clients.set_index("client_id")[extra].astype("string")
    svc = st.service
    assessments = svc.bundle.assess(s, cov, horizon=svc.settings.horizon)
    try:
        svc.audit.record(uuid.uuid4().hex, clinic, assessments)
    except AuditUnavailable as err:  # never a caseload without its audit rows
        return None, [Problem("audit", None, "audit_unavailable",
                              f"{err}; nothing is shown without its audit row, try again "
                              "later")], 0
    return make_caseload(source, assessments, s), [], len(ids)


def make_caseload(source: str, assessments: list[Any], s: pd.DataFrame) -> Caseload:
    """The caseload of assessed clients: safety and open flags first (`_caseload_order`),
    with the sessions frame their charts are drawn from."""
    assessments = sorted(assessments, key=_caseload_order)
    last_dates: dict[str, str] = {}
    if "date" in s.columns and s["date"].notna().any():
        last = s.dropna(subset=["date"]).groupby("client_id")["date"].max()
        last_dates = {str(k): v.date().isoformat() for k, v in last.items()}
    rows = [_row(i, a, last_dates) for i, a in enumerate(assessments)]
    return Caseload(source, assessments, rows, s, sum(a.safety.status == "flag"
                                                      for a in assessments))


def _status(problems: list[Problem]) -> int:
    """503 when the audit log is down (try again), else 422 (the data break a rule)."""
    return 503 if any(p.rule == "audit_unavailable" for p in problems) else 422
