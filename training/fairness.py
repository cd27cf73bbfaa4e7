"""Subgroup fairness of the risk and of the flag, computed with fairlearn's `MetricFrame`.

For each grouping column (age band, gender, clinic, diagnosis group, ...) one `MetricFrame` gives
every metric per group with a 95% percentile bootstrap interval (`n_boot`, `ci_quantiles`), and
`difference(method="between_groups")` gives the largest gap between two groups.

Each row is one client (one prediction or one flag decision per client, e.g. the risk as of
session 3 and the eventual end-of-care outcome), so fairlearn's row bootstrap is a client
bootstrap. Passing several rows per client would make the intervals too narrow; pass one.

Groups with fewer than `min_cell` clients are suppressed: every cell of their row is NaN and
`suppressed` is True, and they take part in no gap. Their clients still count in the overall row.
A metric that is undefined in a group (AUROC with one class only, sensitivity with no eventual
non-improvers) is NaN, not an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from features.thresholds import MIN_REPORTED_CELL
from training.metrics import METRICS, calibration_slope_intercept

#: Percentile bootstrap 95% interval, as `training.metrics.bootstrap` reports.
CI_QUANTILES = [0.025, 0.975]
#: The grouping and group names of the whole-cohort row.
OVERALL, ALL_CLIENTS = "overall", "all clients"
#: Label for clients whose group is not recorded.
MISSING = "missing"


def _n(y: np.ndarray, score: np.ndarray) -> float:
    return float(len(y))


def _events(y: np.ndarray, score: np.ndarray) -> float:
    return float(np.sum(y))


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUROC (equal to sklearn's roc_auc_score, several times faster: the
    bootstrap calls it per group and resample); NaN with one class only."""
    return METRICS["auroc"](y, p)


def _cal_intercept(y: np.ndarray, p: np.ndarray) -> float:
    """Calibration-in-the-large: the intercept of logit P(y) = a + logit(p) (ideal 0)."""
    return calibration_slope_intercept(y, p)[1]


def _oe_ratio(y: np.ndarray, p: np.ndarray) -> float:
    """Observed / expected number of eventual non-improvers (ideal 1)."""
    expected = float(np.sum(p))
    return float(np.sum(y)) / expected if expected > 0 else float("nan")


def _flag_rate(y: np.ndarray, score: np.ndarray, flag: np.ndarray) -> float:
    return float(np.mean(flag)) if len(flag) else float("nan")


def _sensitivity(y: np.ndarray, score: np.ndarray, flag: np.ndarray) -> float:
    """Share of eventual non-improvers (y = 1) who were flagged."""
    pos = y == 1
    return float(np.mean(flag[pos])) if pos.any() else float("nan")


def _false_alarm_rate(y: np.ndarray, score: np.ndarray, flag: np.ndarray) -> float:
    """Share of eventual reliable improvers (y = 0) who were flagged."""
    neg = y == 0
    return float(np.mean(flag[neg])) if neg.any() else float("nan")


_METRICS: dict[str, Callable[..., float]] = {
    "n": _n, "events": _events, "auroc": _auroc, "cal_intercept": _cal_intercept,
    "oe_ratio": _oe_ratio, "flag_rate": _flag_rate, "sensitivity": _sensitivity,
    "false_alarm_rate": _false_alarm_rate,
}
_NEEDS_FLAG = ("flag_rate", "sensitivity", "false_alarm_rate")
COUNTS = ("n", "events")
RISK_METRICS = ("auroc", "cal_intercept", "oe_ratio", "flag_rate", "sensitivity",
                "false_alarm_rate")
FLAG_METRICS = ("flag_rate", "sensitivity", "false_alarm_rate")

#: Plain-language names and how values are written in `FairnessResult.sentences`.
LABELS = {"auroc": "AUROC", "cal_intercept": "calibration-in-the-large",
          "oe_ratio": "observed/expected ratio", "flag_rate": "flag rate",
          "sensitivity": "sensitivity", "false_alarm_rate": "false-alarm rate"}
_PERCENT = frozenset(FLAG_METRICS)


@dataclass(frozen=True)
class FairnessResult:
    """`table`: one row per (grouping, group), the first row the whole cohort; columns grouping,
    group, n, events, suppressed, then each metric with `_lo` and `_hi` (95% bootstrap interval).
    `gaps`: per grouping and metric the largest difference between two unsuppressed groups
    (fairlearn's `difference()`), and the groups with the higher and the lower value (NaN with
    fewer than two groups that define the metric; no groups named when the gap is 0).
    `frames`: the fairlearn `MetricFrame` per grouping (on unsuppressed groups) and `"overall"`."""

    table: pd.DataFrame
    gaps: pd.DataFrame
    min_cell: int
    frames: dict[str, MetricFrame] = field(repr=False, default_factory=dict)

    def sentences(self) -> list[str]:
        """One plain-language line per gap that could be measured, then the suppressed groups."""
        lines = []
        cells = self.table.set_index(["grouping", "group"])
        for g in self.gaps.itertuples(index=False):
            if not np.isfinite(g.largest_gap):
                continue
            label = LABELS[g.metric]
            if g.largest_gap == 0:
                shown = self.table[(self.table["grouping"] == g.grouping)
                                   & ~self.table["suppressed"]].iloc[0]
                lines.append(f"No {label} gap by {_words(g.grouping)}: "
                             f"{_value(shown, g.metric, interval=False)} in every group.")
                continue
            hi, lo = cells.loc[(g.grouping, g.group_high)], cells.loc[(g.grouping, g.group_low)]
            points = round(100 * g.largest_gap)
            gap = (f"{points} percentage point{'' if points == 1 else 's'}"
                   if g.metric in _PERCENT else f"{g.largest_gap:.2f}")
            lines.append(f"Largest {label} gap by {_words(g.grouping)}: {gap} "
                         f"({g.group_high} {_value(hi, g.metric)} vs "
                         f"{g.group_low} {_value(lo, g.metric)}).")
        for grouping, rows in self.table[self.table["suppressed"]].groupby("grouping", sort=False):
            if grouping == OVERALL:
                lines.append(f"Fewer than {self.min_cell} clients in all: nothing is shown.")
                continue
            names = ", ".join(rows["group"])
            lines.append(f"Not shown by {_words(grouping)} (fewer than {self.min_cell} clients): "
                         f"{names}.")
        return lines


def _words(name: str) -> str:
    return name.replace("_", " ")


def _value(row: pd.Series, metric: str, interval: bool = True) -> str:
    v, lo, hi = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
    if not interval:
        lo = hi = float("nan")
    if metric in _PERCENT:
        text = f"{100 * v:.0f}%"
        return text + (f" [{100 * lo:.0f}, {100 * hi:.0f}]" if np.isfinite(lo) else "")
    return f"{v:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "")


def _binary(name: str, values, n: int | None = None) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} values; expected {n}, one per client")
    if not np.all(np.isin(a, (0.0, 1.0))):
        raise ValueError(f"{name} must be 0/1 for every client (no missing values)")
    return a


def _groups(groups: pd.DataFrame, n: int) -> pd.DataFrame:
    if not isinstance(groups, pd.DataFrame) or groups.shape[1] == 0:
        raise ValueError("groups must be a DataFrame with at least one grouping column")
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} rows; expected {n}, one per client")
    bad = [c for c in groups.columns if not isinstance(c, str) or c == OVERALL]
    if bad:
        raise ValueError(f"grouping column names must be strings other than {OVERALL!r}: {bad}")
    return pd.DataFrame({c: groups[c].astype("string").fillna(MISSING).to_numpy()
                         for c in groups.columns})


def _check_settings(n_boot: int, min_cell: int) -> None:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a whole number >= 0, got {n_boot!r}")
    if not isinstance(min_cell, (int, np.integer)) or min_cell < 1:
        raise ValueError(f"min_cell must be a whole number >= 1, got {min_cell!r}")


def _metric_frame(metrics: tuple[str, ...], y: np.ndarray, score: np.ndarray, flag: np.ndarray,
                  sensitive: np.ndarray, name: str, n_boot: int, seed: int) -> MetricFrame:
    funcs = {m: _METRICS[m] for m in metrics}
    params = {m: {"flag": flag} for m in metrics if m in _NEEDS_FLAG}
    boot = {"n_boot": n_boot, "ci_quantiles": CI_QUANTILES, "random_state": seed} if n_boot else {}
    with warnings.catch_warnings():
        # A metric undefined in every resample of a group (e.g. sensitivity in a group with no
        # eventual non-improvers) leaves an all-NaN slice: its interval is NaN, as intended.
        warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
        return MetricFrame(metrics=funcs, y_true=y, y_pred=score,
                           sensitive_features=pd.Series(sensitive, name=name),
                           sample_params=params or None, **boot)


def _rows(y: np.ndarray, score: np.ndarray, flag: np.ndarray, sensitive: np.ndarray,
          grouping: str, metrics: tuple[str, ...], n_boot: int, seed: int
          ) -> tuple[pd.DataFrame, MetricFrame]:
    """The table rows of one grouping and its bootstrapped MetricFrame. Counts come from a
    second MetricFrame without the bootstrap (an interval for n would mean nothing, and each
    bootstrapped metric costs a pass over every row per resample)."""
    counts = _metric_frame(COUNTS, y, score, flag, sensitive, grouping, 0, seed).by_group
    frame = _metric_frame(metrics, y, score, flag, sensitive, grouping, n_boot, seed)
    by = frame.by_group
    out = pd.DataFrame({"grouping": grouping, "group": by.index.astype(str),
                        "n": counts["n"].reindex(by.index).to_numpy(float),
                        "events": counts["events"].reindex(by.index).to_numpy(float),
                        "suppressed": False})
    lo, hi = frame.by_group_ci if n_boot else (None, None)
    for m in metrics:
        out[m] = by[m].to_numpy(float)
        out[f"{m}_lo"] = lo[m].to_numpy(float) if lo is not None else np.nan
        out[f"{m}_hi"] = hi[m].to_numpy(float) if hi is not None else np.nan
    return out, frame


def _suppressed_rows(grouping: str, names, metrics: tuple[str, ...]) -> pd.DataFrame:
    out = pd.DataFrame({"grouping": grouping, "group": list(names)})
    for c in ("n", "events", *[f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")]):
        out[c] = np.nan
    out["suppressed"] = True
    return out


def _gaps(frame: MetricFrame | None, grouping: str, metrics: tuple[str, ...]) -> list[dict]:
    rows = []
    diff = frame.difference(method="between_groups") if frame is not None else None
    for m in metrics:
        values = frame.by_group[m].astype(float).dropna() if frame is not None else pd.Series()
        row = {"grouping": grouping, "metric": m, "largest_gap": float("nan"),
               "group_high": None, "group_low": None}
        if len(values) >= 2:
            row["largest_gap"] = float(diff[m])
            if row["largest_gap"] > 0:  # with no gap there is no higher or lower group
                row.update(group_high=str(values.idxmax()), group_low=str(values.idxmin()))
        rows.append(row)
    return rows


def _fairness(metrics: tuple[str, ...], y: np.ndarray, score: np.ndarray, flag: np.ndarray,
              groups: pd.DataFrame, n_boot: int, seed: int, min_cell: int) -> FairnessResult:
    _check_settings(n_boot, min_cell)
    groups = _groups(groups, len(y))
    frames: dict[str, MetricFrame] = {}
    tables, gaps = [], []

    whole, frames[OVERALL] = _rows(y, score, flag, np.full(len(y), ALL_CLIENTS, dtype=object),
                                   OVERALL, metrics, n_boot, seed)
    if len(y) < min_cell:
        whole = _suppressed_rows(OVERALL, [ALL_CLIENTS], metrics)
    tables.append(whole)

    for col in groups.columns:
        labels = groups[col].to_numpy()
        sizes = pd.Series(labels).value_counts()
        small = sorted(sizes.index[sizes < min_cell])
        keep = ~np.isin(labels, small)
        frame = None
        if keep.any():
            rows, frame = _rows(y[keep], score[keep], flag[keep], labels[keep], col, metrics,
                                n_boot, seed)
            frames[col] = frame
            tables.append(rows)
        if small:
            tables.append(_suppressed_rows(col, small, metrics))
        gaps.extend(_gaps(frame, col, metrics))

    table = pd.concat(tables, ignore_index=True)
    order = ["grouping", "group", "n", "events", "suppressed",
             *[f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")]]
    table = table[order]
    table["suppressed"] = table["suppressed"].astype(bool)
    gap_table = pd.DataFrame(gaps, columns=["grouping", "metric", "largest_gap", "group_high",
                                            "group_low"])
    return FairnessResult(table=table, gaps=gap_table, min_cell=min_cell, frames=frames)


def risk_fairness(y, p, flag, groups: pd.DataFrame, n_boot: int = 200, seed: int = 0,
                  min_cell: int = MIN_REPORTED_CELL) -> FairnessResult:
    """Risk performance by subgroup: n, events, AUROC, calibration-in-the-large (intercept with
    the slope fixed at 1, ideal 0; `training.metrics.calibration_slope_intercept`), observed /
    expected ratio (ideal 1), flag rate, sensitivity and false-alarm rate of `flag`.

    `y`: 1 = not reliably improved by the end of care; `p`: the predicted probability; `flag`:
    0/1 per client; `groups`: one column per grouping, one row per client (same order)."""
    y = _binary("y", y)
    p = np.asarray(p, dtype=float).ravel()
    if len(p) != len(y) or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p must hold {len(y)} probabilities in [0, 1], one per client")
    flag = _binary("flag", flag, len(y))
    return _fairness(RISK_METRICS, y, p, flag, groups, n_boot, seed, min_cell)


def flag_fairness(flagged_by_s3, failed, groups: pd.DataFrame, n_boot: int = 200,
                  seed: int = 0, min_cell: int = MIN_REPORTED_CELL) -> FairnessResult:
    """The flag policy by subgroup, one row per client: flag rate by session 3, sensitivity
    (share of eventual non-improvers, `failed` = 1, flagged by session 3) and false-alarm rate
    (share of eventual reliable improvers, `failed` = 0, flagged by session 3).

    Pass only clients whose end-of-care outcome is known (`failed` 0 or 1)."""
    failed = _binary("failed", failed)
    flag = _binary("flagged_by_s3", flagged_by_s3, len(failed))
    return _fairness(FLAG_METRICS, failed, flag, flag, groups, n_boot, seed, min_cell)
