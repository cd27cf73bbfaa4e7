"""Point-in-time features: a client's history up to session t turned into one row.

This is the ONE feature implementation. Training calls `point_in_time(sessions)` (rows "as of"
sessions 1..6); the prediction service calls `point_in_time(sessions, at=None)` (one row per
client, as of its latest primary score). Both go through the same NumPy core,
`_features_from_arrays`, so there is no second copy of the feature logic to drift.

How the core stays fast for 1 client and for 1,000,000 rows (see docs/features.md):

* rows are sorted by (client, session); consecutive rows of one client and session form a
  *cell*; cells are laid out on a padded grid ``(clients, attended sessions)`` whose column r is
  the client's (r+1)-th attended session;
* every "as of t" quantity is a cumulative operation along the session axis
  (``np.cumsum``, ``np.maximum.accumulate``, ``np.fmax.accumulate``, forward fill by index) read
  back at the query's column, so nothing after t can enter a row (no leakage by construction);
* cumulative operations run strictly left to right within a row, so a client's features are
  bit-for-bit identical whether it is computed alone or inside a batch of any size.

Leakage rules: ids, ``end_status`` and anything recorded after session t never enter ``X``; the
ids travel separately in ``FeatureFrame.keys``. Deviation from the expected course needs a curve
fitted on training clients, so it is computed by a fitted step (models/) with
`expected_deviation`, refitted inside each fold, and is not part of ``FEATURE_NAMES``.

The feature version and names travel inside every fitted model (`feature_signature`); a model
refuses input built with another version or other names (`check_features`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

from features.instruments import REGISTRY, Instrument, Role, get
from features.thresholds import EARLY_SESSION  # early change: intake to the score at session 3

#: 1.1.0: the clinical-support checklist items. 1.2.0: alliance features use the ratings of the
#: sessions BEFORE t by default (a rating is given at the end of its session, after the
#: assessment a therapist sees at its start); `other_clinical_latest`.
FEATURE_VERSION: str = "1.2.0"


def _checklist_domains() -> tuple[str, ...]:
    """Adaptation codes rated by the registry's support checklists (registry order)."""
    out: list[str] = []
    for i in REGISTRY.values():
        if i.role is Role.SUPPORT:
            out.extend(d for d in i.domains if d not in out)
    return tuple(out)


#: Domains of the clinical-support checklist; feature ``checklist_<domain>`` is the latest
#: rating of that domain at or before the session (NaN when no checklist was given yet).
CHECKLIST_DOMAINS: tuple[str, ...] = _checklist_domains()
CHECKLIST_FEATURES: tuple[str, ...] = tuple(f"checklist_{d}" for d in CHECKLIST_DOMAINS)

FEATURE_NAMES: tuple[str, ...] = (
    "session",
    "n_scores",
    "intake_score",
    "latest_score",
    "intake_severity",
    "latest_severity",
    "change_raw",
    "change_rc",
    "change_frac",
    "slope_log",
    "variability",
    "early_change_rc",
    "max_improvement_rc",
    "sessions_attended",
    "sessions_missed",
    "max_gap",
    "alliance_latest",
    "alliance_min",
    "alliance_drop",
    "alliance_below_cutoff",
    "alliance_n",
    "risk_item_latest",
    "risk_item_ever",
    "other_severity_latest",
    "other_clinical_latest",
    "days_since_intake",
    *CHECKLIST_FEATURES,
)

DEFAULT_AT: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
_NS_PER_DAY = 86_400 * 10**9
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FeatureFrame:
    """Features (``X``) and the ids they belong to (``keys``), aligned row by row.

    ``X`` has exactly the columns `FEATURE_NAMES` (float64) and never contains ids;
    ``keys`` has ``client_id`` and ``session`` (the t of each row).
    """

    X: pd.DataFrame
    keys: pd.DataFrame
    version: str = FEATURE_VERSION

    def __len__(self) -> int:
        return len(self.X)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.X.columns)


class FeatureMismatchError(ValueError):
    """Features given to a fitted model differ from those it was fitted on."""

    def __init__(self, message: str, *, missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (), reordered: Sequence[str] = (),
                 expected_version: str = "", got_version: str = "") -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.reordered = tuple(reordered)
        self.expected_version = expected_version
        self.got_version = got_version


def feature_signature() -> dict[str, object]:
    """What a fitted model stores about its features, to be checked with `check_features`."""
    return {"feature_version": FEATURE_VERSION, "feature_names": list(FEATURE_NAMES)}


def check_features(expected_version: str, expected_names: Sequence[str],
                   got_version: str, got_names: Sequence[str]) -> None:
    """Refuse features that differ from those a model was fitted on.

    Raises `FeatureMismatchError` whose message is a readable diff: version expected vs
    received, names missing, names unexpected, and names present in both but moved.
    """
    expected_names, got_names = list(expected_names), list(got_names)
    lines: list[str] = []
    if expected_version != got_version:
        lines.append(f"feature version: expected {expected_version!r}, received {got_version!r}")
    got_set, exp_set = set(got_names), set(expected_names)
    missing = [n for n in expected_names if n not in got_set]
    unexpected = [n for n in got_names if n not in exp_set]
    if missing:
        lines.append(f"missing ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"unexpected ({len(unexpected)}): {', '.join(unexpected)}")
    common_exp = [n for n in expected_names if n in got_set]
    common_got = [n for n in got_names if n in exp_set]
    reordered = [e for e, g in zip(common_exp, common_got, strict=True) if e != g]
    if reordered:
        moves = [f"{n} (expected position {expected_names.index(n)}, "
                 f"received {got_names.index(n)})" for n in reordered]
        lines.append(f"reordered ({len(reordered)}): {', '.join(moves)}")
    dupes = sorted({n for n in got_names if got_names.count(n) > 1})
    if dupes:
        lines.append(f"duplicated: {', '.join(dupes)}")
    if not lines:
        return
    head = (f"features do not match the fitted model (expected {len(expected_names)} names, "
            f"version {expected_version}; received {len(got_names)} names, "
            f"version {got_version}):")
    raise FeatureMismatchError("\n  ".join([head, *lines]), missing=missing,
                               unexpected=unexpected, reordered=reordered,
                               expected_version=expected_version, got_version=got_version)


def expected_deviation(latest_score, expected_score, instrument: str | Instrument) -> np.ndarray:
    """Deviation of the observed from the expected score, in reliable-change units.

    Direction-aware: positive = worse than expected (for PHQ-9 a score above the expected
    course; for ORS a score below it). ``expected_score`` comes from a curve fitted on
    training clients only, so this is called by a fitted step inside each fold.
    """
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    if inst.rci is None:
        raise ValueError(f"{inst.code} has no reliable-change threshold in the registry")
    latest = np.asarray(latest_score, dtype=float)
    expected = np.asarray(expected_score, dtype=float)
    return inst.sign * (latest - expected) / inst.rci


# --------------------------------------------------------------------------------------------
# Registry as arrays (indexed by position in REGISTRY)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Reg:
    codes: tuple[str, ...]
    index: dict[str, int]
    lo: np.ndarray
    span: np.ndarray
    hib: np.ndarray  # higher is better
    outcome: np.ndarray
    cutoff: np.ndarray  # NaN when none


@cache
def _reg() -> _Reg:
    insts = list(REGISTRY.values())
    return _Reg(
        codes=tuple(i.code for i in insts),
        index={i.code: k for k, i in enumerate(insts)},
        lo=np.array([i.score_min for i in insts], dtype=float),
        span=np.array([i.score_max - i.score_min for i in insts], dtype=float),
        hib=np.array([i.higher_is_better for i in insts], dtype=bool),
        outcome=np.array([i.role is Role.OUTCOME for i in insts], dtype=bool),
        cutoff=np.array([np.nan if i.cutoff is None else i.cutoff for i in insts], dtype=float),
    )


def _alliance_codes(alliance: str | None, present: Iterable[str]) -> tuple[str, ...]:
    """Alliance instruments to use, in priority order (first one wins within a session)."""
    if alliance is None:
        return ()
    if alliance == "auto":
        present = set(present)
        return tuple(c for c, i in REGISTRY.items() if i.role is Role.ALLIANCE and c in present)
    if get(alliance).role is not Role.ALLIANCE:
        raise ValueError(f"{alliance} is not an alliance instrument")
    return (alliance,)


# --------------------------------------------------------------------------------------------
# Edge: DataFrame (or a mapping of columns) in, FeatureFrame out
# --------------------------------------------------------------------------------------------
Columns = pd.DataFrame | Mapping[str, Sequence | np.ndarray]


class SessionColumns(dict):
    """A contract-typed sessions frame as plain NumPy columns (ids and instrument codes as
    objects, session as integers, scores and items as floats with NaN, dates as
    datetime64[ns]), converted once, so that one assessment reads every column without
    pandas' per-call costs. `point_in_time` and the assessment take it wherever they take a
    frame."""

    id_dtype: object = "string"  # the dtype of the ids `point_in_time` returns in its keys

    @classmethod
    def of(cls, sessions: Columns) -> SessionColumns:
        if isinstance(sessions, SessionColumns):
            return sessions
        out = cls()
        ids = sessions["client_id"]
        out.id_dtype = ids.dtype if isinstance(ids, pd.Series) else "string"
        for name in sessions.columns if isinstance(sessions, pd.DataFrame) else sessions:
            v = sessions[name]
            if name in ("client_id", "instrument"):
                out[name] = _objects(v)
            elif name == "session":
                out[name] = (v.to_numpy(dtype=np.float64, na_value=np.nan)
                             if isinstance(v, pd.Series) else np.asarray(v, dtype=np.float64))
            elif name == "date":
                if isinstance(v, pd.Series) and v.dtype.kind != "M":
                    v = pd.to_datetime(v)
                out[name] = np.asarray(v, dtype="datetime64[ns]")
            elif isinstance(v, pd.Series) and not pd.api.types.is_numeric_dtype(v.dtype):
                out[name] = _objects(v)
            else:
                out[name] = (v.to_numpy(dtype=np.float64, na_value=np.nan)
                             if isinstance(v, pd.Series) else np.asarray(v, dtype=np.float64))
        return out

    @property
    def columns(self) -> list[str]:
        return list(self)

    @property
    def n_rows(self) -> int:
        return len(self["client_id"])

    def isin(self, name: str, wanted: Iterable) -> np.ndarray:
        """Rows whose ``name`` is one of ``wanted`` (hashed: NumPy's isin sorts objects)."""
        want = wanted if isinstance(wanted, set | frozenset) else set(wanted)
        values = self[name]
        return np.fromiter((v in want for v in values.tolist()), dtype=bool,
                           count=len(values))

    def take(self, rows: np.ndarray) -> SessionColumns:
        """The rows selected by a boolean mask or positions."""
        out = SessionColumns({k: v[rows] for k, v in self.items()})
        out.id_dtype = self.id_dtype
        return out


def point_in_time(sessions: Columns, instrument: str = "PHQ-9",
                  at: Iterable[int] | None = DEFAULT_AT,
                  alliance: str | None = "auto", alliance_lag: bool = True) -> FeatureFrame:
    """Features as of session t, one row per (client, t).

    ``sessions`` is a contract-typed frame (client_id, session, instrument, score; optional
    date and item_k columns), already checked with `features.contract.check_sessions`; a
    mapping of column name to list or array with the same columns is accepted too (the
    prediction service passes its validated request that way and skips building a frame).
    A row is made for each t in ``at`` at which the client has a score on ``instrument``
    (the client is still in care at t). ``at=None``: one row per client, as of its latest
    primary score (the serving case). ``alliance="auto"`` uses every alliance instrument in
    the input (SRS before WAI-SR when a session has both); a code forces one; None drops it.

    ``alliance_lag=True`` (the default): the alliance features as of t use only ratings of
    sessions before t. An alliance rating (SRS, WAI-SR) is filled in at the END of its session,
    while the assessment at session t is usually shown at its start, so the rating of session
    t was not known then. ``False`` includes it (an assessment made after the session).
    """
    prim = get(instrument)
    if prim.role is not Role.OUTCOME:
        raise ValueError(f"{instrument} is not an outcome instrument")
    reg = _reg()
    at_arr = None if at is None else np.unique(np.asarray(list(at), dtype=np.int64))
    frame = isinstance(sessions, pd.DataFrame)

    def floats(name: str) -> np.ndarray:
        if frame:
            return sessions[name].to_numpy(dtype=np.float64, na_value=np.nan)
        return np.asarray(sessions[name], dtype=np.float64)  # None -> NaN

    session = floats("session")
    if np.isnan(session).any():
        raise ValueError("session is missing on some rows; run features.contract.check_sessions")
    session = session.astype(np.int64)
    keep: np.ndarray | slice = slice(None)
    if at_arr is not None:  # rows after the last t can never enter a row: drop them first
        keep = session <= (at_arr.max() if len(at_arr) else 0)
        session = session[keep]

    client, take_ids = _factorize(sessions["client_id"], getattr(sessions, "id_dtype", None))
    client = client[keep]
    if (client < 0).any():
        raise ValueError("client_id is missing on some rows; run features.contract.check_sessions")
    inst, present = _instrument_index(sessions["instrument"])
    inst = inst[keep]
    score = floats("score")[keep]

    # Risk items: max answer over the risk items of the row's instrument (raw item scale).
    risk = np.full(len(score), np.nan)
    for code in sorted(present):
        for k in REGISTRY[code].risk_items:
            name = f"item_{k}"
            if name in sessions:
                rows = inst == reg.index[code]
                risk[rows] = np.fmax(risk[rows], floats(name)[keep][rows])

    if "date" in sessions:
        d = sessions["date"]
        if frame and d.dtype.kind != "M":
            d = pd.to_datetime(d)
        dt = (d.to_numpy(dtype="datetime64[ns]") if frame
              else np.asarray(d, dtype="datetime64[ns]"))[keep]
        day = np.where(np.isnat(dt), np.nan, dt.astype(np.int64) / _NS_PER_DAY)
    else:
        day = np.full(len(score), np.nan)

    # Support checklist: the rating of each domain on the rows of a support instrument.
    support = None
    for code in sorted(present):
        ci = REGISTRY[code]
        if ci.role is not Role.SUPPORT:
            continue
        rows = inst == reg.index[code]
        if not rows.any():
            continue
        if support is None:
            support = np.full((len(score), len(CHECKLIST_DOMAINS)), np.nan)
        for k, dom in enumerate(ci.domains, start=1):
            if f"item_{k}" in sessions:
                j = CHECKLIST_DOMAINS.index(dom)
                support[rows, j] = floats(f"item_{k}")[keep][rows]

    allied = np.array([reg.index[c] for c in _alliance_codes(alliance, present)], dtype=np.int64)
    values, q_client, q_session = _features_from_arrays(
        client, session, inst, score, risk, day, primary=reg.index[instrument],
        alliance=allied, at=at_arr, support=support, alliance_lag=alliance_lag)
    index = pd.RangeIndex(len(values))
    X = pd.DataFrame(values, columns=_feature_columns(), index=index, copy=False)
    keys = pd.DataFrame({"client_id": take_ids(q_client), "session": q_session}, index=index,
                        copy=False)
    return FeatureFrame(X=X, keys=keys)


@cache
def _feature_columns() -> pd.Index:
    return pd.Index(FEATURE_NAMES)


def _objects(values) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index | pd.api.extensions.ExtensionArray):
        return values.to_numpy(dtype=object)
    return np.asarray(values, dtype=object)


def _instrument_index(values) -> tuple[np.ndarray, set[str]]:
    """Registry position per row (-1 = unknown or missing) and the registry codes present."""
    index = _reg().index
    if len(values) <= _SMALL:
        obj = _objects(values)
        present = set(obj)
        codes = np.array([index.get(v, -1) for v in obj], dtype=np.int64)
    else:
        fcodes, uniques = pd.factorize(values)
        present = set(uniques)
        lookup = np.array([index.get(v, -1) for v in uniques] + [-1], dtype=np.int64)
        codes = lookup[fcodes]  # -1 (missing) indexes the trailing -1
    return codes, {c for c in present if c in index}


_SMALL = 4096  # below this many rows, sorting objects beats pandas' hashing overhead


def _factorize(values, dtype=None):
    """Integer codes in sorted order of the ids (-1 = missing) and a function mapping codes
    back to ids (of the input's dtype for a Series, pandas strings otherwise).

    Same codes either way: small inputs use np.unique (no pandas overhead for a one-client
    request), large ones pandas' hash-based factorize.
    """
    dtype = dtype or (values.dtype if isinstance(values, pd.Series) else "string")
    if len(values) <= _SMALL:
        obj = _objects(values)
        if not pd.isna(obj).any():
            try:
                uniq, codes = np.unique(obj, return_inverse=True)
            except TypeError:  # mixed types that do not sort; fall through
                pass
            else:
                return codes.astype(np.int64), (lambda q: pd.array(uniq[q], dtype=dtype))
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), (lambda q: pd.array(np.asarray(uniques)[q], dtype=dtype)
                                    if not isinstance(uniques, pd.Index)
                                    else uniques.take(q).array)


# --------------------------------------------------------------------------------------------
# NumPy core
# --------------------------------------------------------------------------------------------
def _ffill_index(valid: np.ndarray) -> np.ndarray:
    """Per cell, the column of the latest valid cell at or before it (-1 if none)."""
    cols = np.arange(valid.shape[1], dtype=np.int64)
    return np.maximum.accumulate(np.where(valid, cols, -1), axis=1)


def _at(grid: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """grid[row, col] as float, NaN where col < 0."""
    out = grid[row, np.maximum(col, 0)].astype(np.float64)
    out[col < 0] = np.nan
    return out


def _features_from_arrays(client: np.ndarray, session: np.ndarray, inst: np.ndarray,
                          score: np.ndarray, risk: np.ndarray, day: np.ndarray, *,
                          primary: int, alliance: np.ndarray, at: np.ndarray | None,
                          support: np.ndarray | None = None, alliance_lag: bool = True
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The feature core on plain arrays, one entry per input row (any order).

    client: int codes >= 0; session: int >= 1; inst: registry position (-1 = ignore);
    score: float (NaN = not scored); risk: max risk-item answer of the row (NaN = none);
    day: date in days (NaN = unknown); primary: registry position of the primary instrument;
    alliance: registry positions of alliance instruments in priority order; at: sorted
    sessions to report (None = each client's latest primary score); support: None, or
    (rows, len(CHECKLIST_DOMAINS)) checklist ratings (NaN = not rated on that row);
    alliance_lag: alliance features from the sessions before t only.

    Returns (values (Q, len(FEATURE_NAMES)), client code per row, session per row), rows
    ordered by client code then session.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return _core(client, session, inst, score, risk, day, primary, alliance, at, support,
                     alliance_lag)


def _core(client, session, inst, score, risk, day, primary, alliance, at, support=None,
          alliance_lag=True):
    reg = _reg()
    nf = len(FEATURE_NAMES)
    empty = (np.empty((0, nf)), np.empty(0, np.int64), np.empty(0, np.int64))
    if len(client) == 0:
        return empty

    # ---- sort by (client, session); cells = unique (client, session) -----------------------
    client = np.asarray(client, dtype=np.int64)
    session = np.asarray(session, dtype=np.int64)
    key = client * (int(session.max()) + 1) + session
    if len(key) > 1 and not (key[1:] >= key[:-1]).all():
        order = np.argsort(key, kind="stable")
        key, client, session = key[order], client[order], session[order]
        inst, score, risk, day = inst[order], score[order], risk[order], day[order]
        if support is not None:
            support = support[order]

    n = len(key)
    new_cell = np.empty(n, dtype=bool)
    new_cell[0] = True
    np.not_equal(key[1:], key[:-1], out=new_cell[1:])
    cell_start = np.flatnonzero(new_cell)
    cell_of_row = np.cumsum(new_cell) - 1
    cell_client = client[cell_start]
    cell_session = session[cell_start]
    new_client = np.empty(len(cell_start), dtype=bool)
    new_client[0] = True
    np.not_equal(cell_client[1:], cell_client[:-1], out=new_client[1:])
    seg_first_cell = np.flatnonzero(new_client)
    cell_seg = np.cumsum(new_client) - 1
    cell_col = np.arange(len(cell_start)) - seg_first_cell[cell_seg]
    n_seg, width = len(seg_first_cell), int(cell_col.max()) + 1
    seg_client = cell_client[seg_first_cell]
    row_seg, row_col = cell_seg[cell_of_row], cell_col[cell_of_row]

    def grid(fill: float = np.nan) -> np.ndarray:
        return np.full((n_seg, width), fill)

    def scatter(mask: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
        g = grid()
        flat = row_seg[mask] * width + row_col[mask]  # non-decreasing: rows are sorted
        if len(flat) > 1 and (flat[1:] == flat[:-1]).any():
            raise ValueError(f"more than one {what} score for a client at one session "
                             "(rule: duplicate_session); run features.contract.check_sessions")
        g.flat[flat] = values[mask]
        return g

    # ---- grids (rows = clients, columns = attended sessions) -------------------------------
    S = grid()
    S[cell_seg, cell_col] = cell_session
    is_prim = (inst == primary) & ~np.isnan(score)
    P = scatter(is_prim, score, reg.codes[primary])
    Pv = ~np.isnan(P)

    lo, span, hib = reg.lo[primary], reg.span[primary], bool(reg.hib[primary])
    sign = -1.0 if hib else 1.0
    rci = REGISTRY[reg.codes[primary]].rci or np.nan
    sevP = (P - lo) / span
    if hib:
        sevP = 1.0 - sevP

    # Other outcome instruments: mean severity per cell, and whether any of them with a
    # cut-off is in its clinical range there.
    known = inst >= 0
    other = known & ~np.isnan(score)
    other[known] &= reg.outcome[inst[known]] & (inst[known] != primary)
    sev_row = np.zeros(n)
    io = inst[other]
    s = (score[other] - reg.lo[io]) / reg.span[io]
    sev_row[other] = np.where(reg.hib[io], 1.0 - s, s)
    o_sum = np.add.reduceat(sev_row, cell_start)
    o_cnt = np.add.reduceat(other.astype(np.float64), cell_start)
    Oth = grid()
    Oth[cell_seg, cell_col] = np.where(o_cnt > 0, o_sum / np.maximum(o_cnt, 1), np.nan)
    clin_row = np.full(n, np.nan)
    cut = reg.cutoff[io]
    has_cut = np.isfinite(cut)
    clin_row[np.flatnonzero(other)[has_cut]] = np.where(
        reg.hib[io][has_cut], score[other][has_cut] < cut[has_cut],
        score[other][has_cut] >= cut[has_cut])
    Ocl = grid()
    Ocl[cell_seg, cell_col] = np.fmax.reduceat(clin_row, cell_start)

    # Alliance: first instrument in priority order that was scored at the cell.
    A, A_raw, A_cut = grid(), grid(), grid()
    for a in alliance[::-1]:  # later priority first, so earlier ones overwrite
        m = (inst == a) & ~np.isnan(score)
        raw = scatter(m, score, reg.codes[a])
        has = ~np.isnan(raw)
        norm = (raw - reg.lo[a]) / reg.span[a]
        A = np.where(has, 1.0 - norm if not reg.hib[a] else norm, A)
        A_raw = np.where(has, raw, A_raw)
        A_cut = np.where(has, reg.cutoff[a], A_cut)
    Av = ~np.isnan(A)

    R = grid()
    R[cell_seg, cell_col] = np.fmax.reduceat(risk, cell_start)
    D = grid()
    D[cell_seg, cell_col] = np.fmax.reduceat(day, cell_start)

    # ---- queries: (row in grid, column) ----------------------------------------------------
    if at is None:
        last = _ffill_index(Pv)[:, -1]
        q_seg = np.flatnonzero(last >= 0)
        q_col = last[q_seg]
    else:
        pos = np.minimum(np.searchsorted(at, S), len(at) - 1)
        hit = Pv & (at[pos] == S)
        q_seg, q_col = np.nonzero(hit)  # row-major: by client, then session
    t = S[q_seg, q_col]
    out = np.full((len(q_seg), nf), np.nan)
    out[:, _COL["session"]] = t

    # ---- primary instrument ----------------------------------------------------------------
    cnt = np.cumsum(Pv, axis=1)
    n_sc = cnt[q_seg, q_col].astype(np.float64)
    first = np.argmax(Pv, axis=1)  # intake column (rows without scores are never queried)
    intake_row = P[np.arange(n_seg), first]
    intake, latest = intake_row[q_seg], P[q_seg, q_col]
    out[:, _COL["n_scores"]] = n_sc
    out[:, _COL["intake_score"]] = intake
    out[:, _COL["latest_score"]] = latest
    sev_in = sevP[np.arange(n_seg), first][q_seg]
    out[:, _COL["intake_severity"]] = sev_in
    out[:, _COL["latest_severity"]] = sevP[q_seg, q_col]
    change = sign * (intake - latest)
    out[:, _COL["change_raw"]] = change
    out[:, _COL["change_rc"]] = change / rci
    room = sev_in * span  # intake distance from the best possible score
    out[:, _COL["change_frac"]] = np.where(room > 0, change / room, np.nan)

    # OLS slope of severity on log(session), from prefix sums.
    x = np.log(np.where(Pv, S, 1.0))
    y = np.where(Pv, sevP, 0.0)
    sx = np.cumsum(x, axis=1)[q_seg, q_col]  # x = 0 where no score
    sy = np.cumsum(y, axis=1)[q_seg, q_col]
    sxx = np.cumsum(x * x, axis=1)[q_seg, q_col]
    sxy = np.cumsum(x * y, axis=1)[q_seg, q_col]
    den = n_sc * sxx - sx * sx
    out[:, _COL["slope_log"]] = np.where(n_sc >= 2, (n_sc * sxy - sx * sy) / den, np.nan)

    # Variability: SD of successive severity differences.
    lastP = _ffill_index(Pv)
    prev = np.full_like(lastP, -1)
    prev[:, 1:] = lastP[:, :-1]
    rows = np.arange(n_seg)[:, None]
    dv = Pv & (prev >= 0)
    d = np.where(dv, sevP - sevP[rows, np.maximum(prev, 0)], 0.0)
    m = np.cumsum(dv, axis=1)[q_seg, q_col].astype(np.float64)
    sd = np.cumsum(d, axis=1)[q_seg, q_col]
    sdd = np.cumsum(d * d, axis=1)[q_seg, q_col]
    var = np.maximum((sdd - sd * sd / m) / (m - 1), 0.0)
    out[:, _COL["variability"]] = np.where(m >= 2, np.sqrt(var), np.nan)

    # Early change: intake to the latest score at or before min(t, EARLY_SESSION).
    early_cols = (np.sum(S <= EARLY_SESSION, axis=1) - 1)[q_seg]
    e_col = lastP[q_seg, np.maximum(np.minimum(early_cols, q_col), 0)]
    e_col = np.where(early_cols >= 0, e_col, -1)
    out[:, _COL["early_change_rc"]] = sign * (intake - _at(P, q_seg, e_col)) / rci

    imp = np.fmax.accumulate(sign * (intake_row[:, None] - P), axis=1)
    out[:, _COL["max_improvement_rc"]] = imp[q_seg, q_col] / rci

    # ---- attendance ------------------------------------------------------------------------
    attended = q_col + 1.0
    out[:, _COL["sessions_attended"]] = attended
    out[:, _COL["sessions_missed"]] = t - attended
    if width > 1:
        gaps = np.maximum.accumulate(np.diff(S, axis=1), axis=1)
        out[:, _COL["max_gap"]] = _at(gaps, q_seg, q_col - 1)

    # ---- alliance (by default from the sessions before t: see point_in_time) -------------
    if len(alliance):
        lastA = _ffill_index(Av)
        qa = q_col - 1 if alliance_lag else q_col
        ok = qa >= 0
        qa0 = np.maximum(qa, 0)
        la = np.where(ok, lastA[q_seg, qa0], -1)
        a_latest = _at(A, q_seg, la)
        out[:, _COL["alliance_latest"]] = a_latest
        a_min = np.fmin.accumulate(A, axis=1)[q_seg, qa0]
        out[:, _COL["alliance_min"]] = np.where(ok, a_min, np.nan)
        lp = np.where(la >= 1, lastA[q_seg, np.maximum(la - 1, 0)], -1)
        out[:, _COL["alliance_drop"]] = _at(A, q_seg, lp) - a_latest
        raw, cut = _at(A_raw, q_seg, la), _at(A_cut, q_seg, la)
        out[:, _COL["alliance_below_cutoff"]] = np.where(np.isnan(raw) | np.isnan(cut), np.nan,
                                                         (raw < cut).astype(np.float64))
        out[:, _COL["alliance_n"]] = np.where(ok, np.cumsum(Av, axis=1)[q_seg, qa0], 0.0)
    else:
        out[:, _COL["alliance_n"]] = 0.0

    # ---- risk items, other instruments, dates ----------------------------------------------
    r_now = R[q_seg, q_col]
    out[:, _COL["risk_item_latest"]] = r_now
    ever = np.fmax.accumulate(R, axis=1)[q_seg, q_col]
    out[:, _COL["risk_item_ever"]] = np.where(np.isnan(ever), np.nan, (ever > 0) * 1.0)
    out[:, _COL["other_severity_latest"]] = _at(Oth, q_seg, _ffill_index(~np.isnan(Oth))[q_seg, q_col])
    out[:, _COL["other_clinical_latest"]] = _at(Ocl, q_seg, _ffill_index(~np.isnan(Ocl))[q_seg, q_col])
    out[:, _COL["days_since_intake"]] = D[q_seg, q_col] - D[np.arange(n_seg), first][q_seg]

    # ---- clinical-support checklist: latest rating per domain at or before t ---------------
    if support is not None:
        for j, name in enumerate(CHECKLIST_FEATURES):
            rated = ~np.isnan(support[:, j])
            G = scatter(rated, support[:, j], "support checklist")
            out[:, _COL[name]] = _at(G, q_seg, _ffill_index(~np.isnan(G))[q_seg, q_col])

    return out, seg_client[q_seg], t.astype(np.int64)
