"""The data contract: file layout, column names and the ONE set of validation rules.

Two layers, each with one job:

* **Shape and types** (`pandera`): required columns present, values coercible to their types.
  Used for files (`ontrack validate`, `load_cohort`), where anything can arrive.
* **Content rules** (`SESSION_RULES`, driven by the instrument registry): score in range, known
  instrument, duplicate sessions, dates going backwards, ... Plain vectorised functions over a
  typed frame, run by `check_sessions`. Files run them after the pandera layer; the prediction
  service runs the very same functions on each request (its pydantic schema already did the
  types), so a rule is written once and holds everywhere.

Every violation is collected (never only the first) into one `ValidationReport`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from features.instruments import ADAPTATIONS, REGISTRY, Role

# --------------------------------------------------------------------------------------------
# Columns (other tools rely on these names)
# --------------------------------------------------------------------------------------------
SESSION_REQUIRED = ("client_id", "session", "instrument", "score")
SESSION_OPTIONAL = ("date", "clinic_id", "therapist_id")
MAX_ITEMS = max(i.n_items for i in REGISTRY.values())
CLIENT_REQUIRED = ("client_id", "end_status")
END_STATUSES = ("finished", "dropout", "ongoing")
ADAPTATION_REQUIRED = ("client_id", "session", "adaptation")

SESSIONS_FILE, CLIENTS_FILE, ADAPTATIONS_FILE = "sessions", "clients", "adaptations"


def item_columns(frame: pd.DataFrame) -> list[str]:
    """Item columns present in a frame, in item order."""
    present = [c for c in frame.columns if c.startswith("item_") and c[5:].isdigit()]
    return sorted(present, key=lambda c: int(c[5:]))


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Violation:
    table: str  # sessions | clients | adaptations
    rule: str  # machine-readable rule name, e.g. "score_out_of_range"
    column: str
    message: str  # human-readable, names the value and the rule
    row: int | None = None  # 1-based data row (header excluded); None for whole-file problems
    value: object = None


@dataclass
class ValidationReport:
    violations: list[Violation] = field(default_factory=list)
    n_rows: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def extend(self, items: Iterable[Violation]) -> None:
        self.violations.extend(items)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.violations:
            out[v.rule] = out.get(v.rule, 0) + 1
        return out

    def as_text(self, limit: int | None = None) -> str:
        lines = [
            f"{v.table}" + (f" row {v.row}" if v.row is not None else "") + f": {v.message}"
            for v in self.violations[:limit]
        ]
        if limit is not None and len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more")
        return "\n".join(lines)


class InvalidDataError(ValueError):
    """Raised when data break the contract; carries the full report."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        n = len(report.violations)
        super().__init__(f"{n} contract violation{'s' if n != 1 else ''}:\n{report.as_text(20)}")


# --------------------------------------------------------------------------------------------
# Content rules (shared by files and the API)
# --------------------------------------------------------------------------------------------
_CODES = tuple(REGISTRY)
_INDEX = {c: k for k, c in enumerate(_CODES)}


def _table(values) -> np.ndarray:
    """Registry values by instrument position, with a trailing NaN for unknown instruments."""
    return np.array([*values, np.nan], dtype=float)


_REG = {
    "score_min": _table(i.score_min for i in REGISTRY.values()),
    "score_max": _table(i.score_max for i in REGISTRY.values()),
    "item_min": _table(i.item_min for i in REGISTRY.values()),
    "item_max": _table(i.item_max for i in REGISTRY.values()),
    "n_items": _table(i.n_items for i in REGISTRY.values()),
    "integer": _table(i.integer_scores for i in REGISTRY.values()),
    "sums": _table(i.items_sum_to_score for i in REGISTRY.values()),
}
_NS_PER_DAY = 86_400 * 10**9


class Rows:
    """The columns the rules read, as NumPy arrays, computed once per check (cheap for one
    client in a request and for a million rows in a file)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.n = len(frame)
        codes, uniques = pd.factorize(frame["instrument"])
        lookup = np.array([_INDEX.get(str(u), -1) for u in uniques] + [-1], dtype=np.int64)
        self.inst = lookup[codes]  # -1: unknown or missing instrument (indexes the NaN slot)
        self.client, self.client_ids = pd.factorize(frame["client_id"])  # -1: missing
        self.score = frame["score"].to_numpy(dtype=float, na_value=np.nan)
        self.session = frame["session"].to_numpy(dtype=float, na_value=np.nan)
        self.items = {c: frame[c].to_numpy(dtype=float, na_value=np.nan)
                      for c in item_columns(frame)}

    def reg(self, column: str) -> np.ndarray:
        """Registry value per row (NaN for unknown instruments)."""
        return _REG[column][self.inst]


def _fmt(x: object) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    column: str
    description: str
    bad: Callable[[Rows], np.ndarray]  # boolean mask of offending rows
    message: Callable[[pd.Series], str]  # message for one offending row


def _client_missing(r: Rows) -> np.ndarray:
    """Missing or blank ids (checked once per distinct id, not per row)."""
    blank = np.array([str(u).strip() == "" for u in r.client_ids] + [True], dtype=bool)
    return (r.client < 0) | blank[r.client]


def _session_invalid(r: Rows) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isnan(r.session) | (r.session < 1)


def _instrument_unknown(r: Rows) -> np.ndarray:
    return r.inst < 0


def _score_missing(r: Rows) -> np.ndarray:
    return np.isnan(r.score)


def _score_out_of_range(r: Rows) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (r.score < r.reg("score_min")) | (r.score > r.reg("score_max"))


def _score_not_integer(r: Rows) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (r.reg("integer") == 1) & np.isfinite(r.score) & (r.score != np.round(r.score))


def _item_rules() -> list[Rule]:
    rules = []
    for k in range(1, MAX_ITEMS + 1):
        col = f"item_{k}"

        def bad_range(r: Rows, col: str = col, k: int = k) -> np.ndarray:
            v = r.items.get(col)
            if v is None:
                return np.zeros(r.n, dtype=bool)
            with np.errstate(invalid="ignore"):
                beyond = np.isfinite(v) & (k > r.reg("n_items"))  # an item the instrument lacks
                return beyond | (v < r.reg("item_min")) | (v > r.reg("item_max"))

        rules.append(
            Rule(
                name="item_out_of_range",
                column=col,
                description=f"{col} must lie in the instrument's item range "
                "and exist on that instrument",
                bad=bad_range,
                message=lambda r, col=col: (
                    f"{col} = {_fmt(r[col])} is not a valid item answer for {r['instrument']} "
                    f"(rule: item_out_of_range)"
                ),
            )
        )
    return rules


def _items_do_not_sum(r: Rows) -> np.ndarray:
    if not r.items:
        return np.zeros(r.n, dtype=bool)
    cols = list(r.items)
    items = np.column_stack([r.items[c] for c in cols])
    n = r.reg("n_items")
    col_k = np.array([int(c[5:]) for c in cols])
    within = col_k[None, :] <= np.nan_to_num(n, nan=0)[:, None]
    answered = np.where(within, np.isfinite(items), False).sum(axis=1)
    complete = (r.reg("sums") == 1) & (answered == np.nan_to_num(n, nan=-1))
    total = np.where(within, np.nan_to_num(items, nan=0.0), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore"):
        return complete & np.isfinite(r.score) & (np.abs(total - r.score) > 1e-9)


def _duplicate_session(r: Rows) -> np.ndarray:
    """More than one score for the same client, session and instrument."""
    ok = (r.client >= 0) & np.isfinite(r.session)
    key = np.stack([r.client, np.nan_to_num(r.session, nan=-1).astype(np.int64), r.inst])
    _, inverse, counts = np.unique(key[:, ok], axis=1, return_inverse=True,
                                   return_counts=True)
    out = np.zeros(r.n, dtype=bool)
    out[np.flatnonzero(ok)] = counts[inverse.ravel()] > 1
    return out


def _date_backwards(r: Rows) -> np.ndarray:
    """A later session dated before an earlier one of the same client."""
    out = np.zeros(r.n, dtype=bool)
    if "date" not in r.frame.columns:
        return out
    d = r.frame["date"].to_numpy(dtype="datetime64[ns]")
    ok = ~np.isnat(d) & (r.client >= 0) & np.isfinite(r.session)
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)
    day = (d[idx].astype(np.int64) // _NS_PER_DAY).astype(np.int64)
    day -= day.min()
    order = np.lexsort((r.session[idx], r.client[idx]))
    # one running max over client-major keys: a client's keys all exceed earlier clients'
    key = r.client[idx][order].astype(np.int64) * (int(day.max()) + 2) + day[order]
    prev = np.maximum.accumulate(key)
    back = np.zeros(len(idx), dtype=bool)
    back[1:] = key[1:] < prev[:-1]
    out[idx[order[back]]] = True
    return out


SESSION_RULES: tuple[Rule, ...] = (
    Rule("client_id_missing", "client_id", "client_id must be present",
         _client_missing, lambda r: "client_id is missing (rule: client_id_missing)"),
    Rule("session_invalid", "session", "session must be an integer >= 1 (1 = intake)",
         _session_invalid,
         lambda r: f"session = {_fmt(r['session'])} must be an integer >= 1 (rule: session_invalid)"),
    Rule("instrument_unknown", "instrument", "instrument must be a registry code",
         _instrument_unknown,
         lambda r: f"instrument {r['instrument']!r} is not in the instrument registry "
         f"(known: {', '.join(REGISTRY)}) (rule: instrument_unknown)"),
    Rule("score_missing", "score", "score must be a number", _score_missing,
         lambda r: "score is missing or not a number (rule: score_missing)"),
    Rule("score_out_of_range", "score", "score must lie in the instrument's range",
         _score_out_of_range,
         lambda r: f"score = {_fmt(r['score'])} is out of range for {r['instrument']} "
         f"({_fmt(REGISTRY[r['instrument']].score_min)}-{_fmt(REGISTRY[r['instrument']].score_max)})"
         " (rule: score_out_of_range)"),
    Rule("score_not_integer", "score", "sum-scored instruments have integer totals",
         _score_not_integer,
         lambda r: f"score = {r['score']} is not a whole number, but {r['instrument']} "
         "totals are sums of integer items (rule: score_not_integer)"),
    *_item_rules(),
    Rule("items_do_not_sum", "score", "when every item is given, the items sum to the score",
         _items_do_not_sum,
         lambda r: f"score = {_fmt(r['score'])} differs from the sum of the "
         f"{r['instrument']} items (rule: items_do_not_sum)"),
    Rule("duplicate_session", "session",
         "one score per client, session and instrument", _duplicate_session,
         lambda r: f"duplicate session: client {r['client_id']} has more than one "
         f"{r['instrument']} score at session {_fmt(r['session'])} (rule: duplicate_session)"),
    Rule("date_backwards", "date", "dates never go backwards as sessions increase",
         _date_backwards,
         lambda r: f"date {str(r['date'])[:10]} of session {_fmt(r['session'])} is earlier than an "
         f"earlier session's date for client {r['client_id']} (rule: date_backwards)"),
)


def check_sessions(frame: pd.DataFrame, table: str = "sessions",
                   max_per_rule: int = 1000, rows: Rows | None = None) -> list[Violation]:
    """Run every content rule on a typed sessions frame; return every violation.

    Expects the columns of the contract with their types (client_id string, session integer,
    instrument string, score float, date datetime). Rows are reported 1-based in frame order.
    ``rows``: the frame's `Rows`, when the caller runs `check_assessable` on them too.
    """
    cols = rows if rows is not None else Rows(frame.reset_index(drop=True))
    frame = cols.frame
    out: list[Violation] = []
    for rule in SESSION_RULES:
        bad = rule.bad(cols)
        rows = np.flatnonzero(bad)
        if not len(rows):
            continue
        for i in rows[:max_per_rule]:
            row = frame.iloc[i]
            out.append(Violation(table, rule.name, rule.column, rule.message(row), int(i) + 1,
                                 _plain(row.get(rule.column))))
        if len(rows) > max_per_rule:
            out.append(Violation(table, rule.name, rule.column,
                                 f"... and {len(rows) - max_per_rule} more rows break "
                                 f"{rule.name} (listing stops at {max_per_rule} per rule)"))
    return out


def check_assessable(frame: pd.DataFrame, max_clients: int | None = None,
                     table: str = "sessions", rows: Rows | None = None) -> list[Violation]:
    """The rules of an assessment (API request, upload, pyfunc input), on a typed sessions
    frame: at most ``max_clients`` clients at once (``too_many_clients``), and every client
    with a score on an outcome instrument (``no_outcome_score``: alliance ratings alone
    cannot be assessed; clients with an unknown instrument are left to
    ``instrument_unknown``). Rows are 1-based in frame order, the client's first row."""
    cols = rows if rows is not None else Rows(frame.reset_index(drop=True))
    ids = cols.client_ids
    if max_clients is not None and len(ids) > max_clients:
        return [Violation(table, "too_many_clients", "client_id",
                          f"{len(ids)} clients at once; at most {max_clients} are assessed "
                          "in one request (split it) (rule: too_many_clients)")]
    n = len(ids)
    ok = cols.client >= 0
    outcome = np.zeros(n, dtype=bool)
    unknown = np.zeros(n, dtype=bool)
    is_outcome = np.array([i.role is Role.OUTCOME for i in REGISTRY.values()] + [False])
    np.logical_or.at(outcome, cols.client[ok], is_outcome[cols.inst[ok]])
    np.logical_or.at(unknown, cols.client[ok], cols.inst[ok] < 0)
    first = np.full(n, cols.n, dtype=np.int64)
    np.minimum.at(first, cols.client[ok], np.flatnonzero(ok))
    return [Violation(table, "no_outcome_score", "instrument",
                      f"client {ids[c]} has no score on an outcome instrument (e.g. PHQ-9, "
                      "GAD-7, ORS, CORE-10): alliance ratings alone cannot be assessed "
                      "(rule: no_outcome_score)", int(first[c]) + 1)
            for c in np.flatnonzero(~outcome & ~unknown)]


def _plain(v: object) -> object:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


# --------------------------------------------------------------------------------------------
# Shape and types (pandera), for files
# --------------------------------------------------------------------------------------------
def _schema(required: Iterable[str], types: dict[str, object], name: str) -> pa.DataFrameSchema:
    columns = {c: pa.Column(t, nullable=True, coerce=True, required=c in required)
               for c, t in types.items()}
    return pa.DataFrameSchema(columns, name=name, strict=False)


_SESSION_TYPES: dict[str, object] = {
    "client_id": "string",
    "session": "Int64",
    "instrument": "string",
    "score": "float64",
    "date": "datetime64[ns]",
    "clinic_id": "string",
    "therapist_id": "string",
    **{f"item_{k}": "float64" for k in range(1, MAX_ITEMS + 1)},
}
SESSIONS_SCHEMA = _schema(SESSION_REQUIRED, _SESSION_TYPES, "sessions")
CLIENTS_SCHEMA = _schema(CLIENT_REQUIRED, {"client_id": "string", "end_status": "string"},
                         "clients")
ADAPTATIONS_SCHEMA = _schema(ADAPTATION_REQUIRED, {"client_id": "string", "session": "Int64",
                                                   "adaptation": "string"}, "adaptations")


def _coerce(frame: pd.DataFrame, schema: pa.DataFrameSchema, table: str
            ) -> tuple[pd.DataFrame, list[Violation]]:
    """Check required columns and coerce types; cells that do not coerce become missing and
    are reported (the content rules then skip them rather than report them twice)."""
    missing = [c for c, col in schema.columns.items() if col.required and c not in frame.columns]
    if missing:
        return frame, [Violation(table, "column_missing", c,
                                 f"required column {c!r} is missing (rule: column_missing)")
                       for c in missing]
    out: list[Violation] = []
    frame = frame.reset_index(drop=True).copy()
    try:
        return schema.validate(frame, lazy=True), out
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
    seen: set[tuple[int, str]] = set()
    for _, case in cases.iterrows():
        col = case["column"]
        if case["index"] is None or pd.isna(case["index"]):
            continue
        if (int(case["index"]), col) in seen:
            continue
        seen.add((int(case["index"]), col))
        out.append(Violation(table, "wrong_type", col,
                             f"{col} = {case['failure_case']!r} cannot be read as "
                             f"{schema.columns[col].dtype} (rule: wrong_type)",
                             int(case["index"]) + 1, case["failure_case"]))
    for col, spec in schema.columns.items():
        if col not in frame.columns:
            continue
        kind = str(spec.dtype)
        if kind.startswith("datetime"):
            frame[col] = pd.to_datetime(frame[col], errors="coerce")
        elif kind in {"Int64", "float64"}:
            num = pd.to_numeric(frame[col], errors="coerce")
            if kind == "Int64":
                num = num.where(num == np.round(num))
            frame[col] = num.astype(kind)
        else:
            frame[col] = frame[col].astype("string")
    return frame, out


# --------------------------------------------------------------------------------------------
# Cohorts
# --------------------------------------------------------------------------------------------
@dataclass
class Cohort:
    """A validated cohort. `clients` and `adaptations` may be empty frames."""

    sessions: pd.DataFrame
    clients: pd.DataFrame
    adaptations: pd.DataFrame
    source: Path | None = None

    @property
    def n_clients(self) -> int:
        return int(self.sessions["client_id"].nunique())


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".parquet", ".csv"):
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def read_table(path: Path | bytes, name: str | None = None) -> pd.DataFrame:
    """A table from a file, or from uploaded bytes (``name``: the file name, for its kind):
    Parquet, else CSV, with the id and code columns read as strings."""
    parquet = (name or "").lower().endswith(".parquet") if isinstance(path, bytes) \
        else Path(path).suffix == ".parquet"
    if isinstance(path, bytes):
        path = io.BytesIO(path)
    if parquet:
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"client_id": "string", "clinic_id": "string",
                                    "therapist_id": "string", "instrument": "string"},
                       keep_default_na=True)


def validate_frames(sessions: pd.DataFrame, clients: pd.DataFrame | None = None,
                    adaptations: pd.DataFrame | None = None) -> tuple[Cohort, ValidationReport]:
    """Validate raw frames (as read from files). Returns the typed cohort and the full report."""
    report = ValidationReport()
    report.n_rows["sessions"] = len(sessions)
    sessions, shape = _coerce(sessions, SESSIONS_SCHEMA, "sessions")
    report.extend(shape)
    if not any(v.rule == "column_missing" for v in shape):
        typed_bad = {(v.row, v.column) for v in shape}
        report.extend(v for v in check_sessions(sessions)
                      if (v.row, v.column) not in typed_bad)
    clients = _optional_table(clients, "clients", CLIENTS_SCHEMA, CLIENT_REQUIRED,
                              _check_clients, sessions, report)
    adaptations = _optional_table(adaptations, "adaptations", ADAPTATIONS_SCHEMA,
                                  ADAPTATION_REQUIRED, _check_adaptations, sessions, report)
    return Cohort(sessions, clients, adaptations), report


def _optional_table(table: pd.DataFrame | None, name: str, schema: pa.DataFrameSchema,
                    empty_columns: tuple[str, ...],
                    check, sessions: pd.DataFrame, report: ValidationReport
                    ) -> pd.DataFrame:
    """A table a cohort may leave out (clients, adaptations): typed, and its rules checked
    against the sessions once its types hold; an empty table of the right columns if absent."""
    if table is None:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in empty_columns})
    report.n_rows[name] = len(table)
    table, shape = _coerce(table, schema, name)
    report.extend(shape)
    if not shape:
        report.extend(check(table, sessions))
    return table


def _rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)


def _check_clients(clients: pd.DataFrame, sessions: pd.DataFrame) -> list[Violation]:
    out = []
    ids = clients["client_id"]
    for i in _rows((ids.isna() | (ids.str.strip() == "")).to_numpy(dtype=bool)):
        out.append(Violation("clients", "client_id_missing", "client_id",
                             "client_id is missing (rule: client_id_missing)", i + 1))
    for i in _rows(ids.duplicated(keep=False).to_numpy(dtype=bool)):
        out.append(Violation("clients", "duplicate_client", "client_id",
                             f"duplicate client: {ids.iloc[i]} appears more than once "
                             "(rule: duplicate_client)", i + 1, ids.iloc[i]))
    status = clients["end_status"]
    for i in _rows(~status.isin(END_STATUSES).to_numpy(dtype=bool)):
        out.append(Violation("clients", "end_status_invalid", "end_status",
                             f"end_status {status.iloc[i]!r} must be one of "
                             f"{', '.join(END_STATUSES)} (rule: end_status_invalid)", i + 1,
                             _plain(status.iloc[i])))
    known = set(ids.dropna())
    orphan = ~sessions["client_id"].isin(known).to_numpy(dtype=bool) & sessions[
        "client_id"].notna().to_numpy(dtype=bool)
    for i in _rows(orphan):
        out.append(Violation("sessions", "client_not_in_clients", "client_id",
                             f"client {sessions['client_id'].iloc[i]} has sessions but no row "
                             "in clients (rule: client_not_in_clients)", i + 1,
                             sessions["client_id"].iloc[i]))
    return out


def _check_adaptations(adaptations: pd.DataFrame, sessions: pd.DataFrame) -> list[Violation]:
    out = []
    code = adaptations["adaptation"]
    for i in _rows(~code.isin(ADAPTATIONS).to_numpy(dtype=bool)):
        out.append(Violation("adaptations", "adaptation_unknown", "adaptation",
                             f"adaptation {code.iloc[i]!r} must be one of "
                             f"{', '.join(ADAPTATIONS)} (rule: adaptation_unknown)", i + 1,
                             _plain(code.iloc[i])))
    s = adaptations["session"]
    for i in _rows((s.isna() | (s < 1)).to_numpy(dtype=bool)):
        out.append(Violation("adaptations", "session_invalid", "session",
                             f"session = {s.iloc[i]} must be an integer >= 1 "
                             "(rule: session_invalid)", i + 1, _plain(s.iloc[i])))
    unknown = ~adaptations["client_id"].isin(set(sessions["client_id"].dropna()))
    for i in _rows(unknown.to_numpy(dtype=bool)):
        out.append(Violation("adaptations", "client_not_in_sessions", "client_id",
                             f"client {adaptations['client_id'].iloc[i]} has an adaptation but "
                             "no sessions (rule: client_not_in_sessions)", i + 1))
    return out


def validate_path(path: str | Path) -> tuple[Cohort, ValidationReport]:
    """Validate a cohort folder or a single sessions file."""
    path = Path(path)
    if path.is_dir():
        spath = _find(path, SESSIONS_FILE)
        if spath is None:
            report = ValidationReport([Violation("sessions", "file_missing", "",
                                                 f"no sessions.csv or sessions.parquet in {path}")])
            empty = pd.DataFrame(columns=list(SESSION_REQUIRED))
            return Cohort(empty, empty, empty, path), report
        cpath, apath = _find(path, CLIENTS_FILE), _find(path, ADAPTATIONS_FILE)
    elif path.exists():
        spath, cpath, apath = path, None, None
    else:
        raise FileNotFoundError(path)
    cohort, report = validate_frames(
        read_table(spath),
        read_table(cpath) if cpath else None,
        read_table(apath) if apath else None,
    )
    cohort.source = path
    if cpath is None:
        report.warnings.append("no clients file: end status unknown (outcome rates that need it "
                               "are left out)")
    return cohort, report


def load_cohort(path: str | Path) -> Cohort:
    """Validated cohort, or `InvalidDataError` with the full report. Nothing runs on bad data."""
    cohort, report = validate_path(path)
    if not report.ok:
        raise InvalidDataError(report)
    return cohort
