"""Plots for the MLflow runs and the comparison report (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from training.evaluate import LABELS  # noqa: E402

COLOURS = {"expected_response": "#7f7f7f", "neighbours": "#1f77b4", "gbm": "#d62728",
           "logistic": "#2ca02c", "oracle": "#000000"}


def _preds(oof: pd.DataFrame, oracle) -> dict[str, np.ndarray]:
    out = {c[2:]: oof[c].to_numpy() for c in oof.columns if c.startswith("p_")}
    if oracle is not None:
        out["oracle"] = oracle
    return out


def roc_plot(y, t, oof, oracle=None, session: int = 3, title: str = ""):
    fig, ax = plt.subplots(figsize=(5, 5))
    for m, p in _preds(oof, oracle).items():
        mask = (t == session) & np.isfinite(y) & np.isfinite(p)
        if mask.sum() < 20 or len(np.unique(y[mask])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[mask], p[mask])
        ax.plot(fpr, tpr, label=LABELS.get(m, m), color=COLOURS.get(m),
                ls="--" if m == "oracle" else "-")
    ax.plot([0, 1], [0, 1], color="#cccccc", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity",
           title=title or f"ROC as of session {session}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def calibration_plot(y, t, oof, oracle=None, session: int = 3, bins: int = 10, title: str = ""):
    fig, ax = plt.subplots(figsize=(5, 5))
    for m, p in _preds(oof, oracle).items():
        mask = (t == session) & np.isfinite(y) & np.isfinite(p)
        if mask.sum() < 50:
            continue
        q = np.quantile(p[mask], np.linspace(0, 1, bins + 1))
        idx = np.clip(np.searchsorted(q, p[mask], side="right") - 1, 0, bins - 1)
        mp = np.bincount(idx, p[mask], bins) / np.maximum(np.bincount(idx, minlength=bins), 1)
        my = np.bincount(idx, y[mask], bins) / np.maximum(np.bincount(idx, minlength=bins), 1)
        ax.plot(mp, my, marker="o", ms=3, label=LABELS.get(m, m), color=COLOURS.get(m),
                ls="--" if m == "oracle" else "-")
    ax.plot([0, 1], [0, 1], color="#cccccc", lw=1)
    ax.set(xlabel="predicted probability (decile means)", ylabel="observed share not improved",
           title=title or f"Calibration as of session {session}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def decision_curve_plot(curves: pd.DataFrame, title: str = "Decision curve, session 3"):
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(curves):
        for m, d in curves.groupby("model", sort=False):
            ax.plot(d["threshold"], d["net_benefit"], label=LABELS.get(m, m),
                    color=COLOURS.get(m), ls="--" if m == "oracle" else "-")
        first = curves[curves["model"] == curves["model"].iloc[0]]
        ax.plot(first["threshold"], first["flag_all"], color="#999999", ls=":",
                label="flag everyone")
        ax.axhline(0, color="#cccccc", lw=1, label="flag no one")
        ax.set_ylim(bottom=-0.05)
    ax.set(xlabel="threshold probability", ylabel="net benefit", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fan_plot(expected, intakes=None, title: str = ""):
    """Expected course with the 90% band for a few intake levels (the expected-response model)."""
    inst = expected.instrument_
    if intakes is None:
        lo, hi = inst.score_min, inst.score_max
        intakes = np.linspace(lo + 0.35 * (hi - lo), lo + 0.85 * (hi - lo), 3).round()
    s = np.arange(1, expected.max_session + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, intake in enumerate(intakes):
        med, lower, upper, _ = expected.expected(np.full(s.shape, float(intake)), s)
        c = plt.cm.viridis(i / max(len(intakes) - 1, 1))
        ax.fill_between(s, lower, upper, color=c, alpha=0.15)
        ax.plot(s, med, color=c, label=f"intake {intake:g}")
    if inst.cutoff is not None:
        ax.axhline(inst.cutoff, color="#999999", ls=":", label="clinical cut-off")
    ax.set(xlabel="session", ylabel=inst.code,
           title=title or f"Expected course of {inst.code} with 90% band")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def policy_value_plot(results, labels: dict[str, str], title: str = ""):
    """Horizontal bars: the share of flagged clients reliably improved under each policy, with
    the paired 95% interval of its difference from the rules drawn around the bar's end."""
    rows = sorted(results, key=lambda r: r.value)
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(rows) + 1.4))
    y = np.arange(len(rows))
    rules = next(r.value for r in rows if r.policy == "rules")
    colours = ["#0f766e" if r.policy in ("neighbours", "uplift_gbm", "r_learner") else
               "#6b7280" if r.policy.startswith(("oracle", "info_")) else "#92400e"
               for r in rows]
    ax.barh(y, [100 * r.value for r in rows], color=colours)
    ax.errorbar([100 * r.value for r in rows], y, xerr=[196 * r.diff_se for r in rows],
                fmt="none", ecolor="black", capsize=3, lw=1)
    ax.axvline(100 * rules, color="#92400e", ls="--", lw=1, label="rules")
    ax.set_yticks(y, [labels.get(r.policy, r.policy)[:60] for r in rows], fontsize=8)
    lo = min(r.value for r in rows)
    ax.set_xlim(100 * lo - 3, 100 * max(r.value for r in rows) + 2)
    ax.set_xlabel("flagged clients reliably improved under the policy's choice (%)")
    ax.set_title(title or "Policy values (bars: 95% interval of the paired difference from "
                 "the rules)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.subplots_adjust(left=max(fig.subplotpars.left, 0.34))  # long policy names stay whole
    return fig


def flag_curve_plot(curves: pd.DataFrame, table: pd.DataFrame, budget: float,
                    title: str = "Flagged by session 3: deteriorators vs improvers"):
    """The cumulative trade-off of the flag policy (entry threshold swept, the rules always
    on): share of eventual reliable deteriorators flagged by session 3 against the share of
    eventual reliable improvers, for the model and the oracle, with each policy's point."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    styles = {"model": ("#d62728", "-"), "model, oracle's clients": ("#d62728", ":"),
              "oracle": ("#000000", "--")}
    for src, d in curves.groupby("source", sort=False):
        d = d.sort_values("improvers")
        colour, ls = styles.get(src, ("#7f7f7f", "-"))
        ax.plot(100 * d["improvers"], 100 * d["deteriorators"], color=colour, ls=ls, label=src)
    marks = {"learned": ("o", "#d62728"), "per_row": ("s", "#1f77b4"),
             "lambert": ("^", "#7f7f7f"), "oracle": ("D", "#000000")}
    for r in table.to_dict("records"):
        if r["policy"] in marks:
            mk, colour = marks[r["policy"]]
            ax.scatter(100 * r["improvers_s3"], 100 * r["deteriorators_s3"], marker=mk,
                       color=colour, zorder=3, label=r["label"])
    ax.axvline(100 * budget, color="#999999", lw=1, ls="--")
    ax.axhline(85, color="#999999", lw=1, ls=":")
    ax.text(100 * budget + 1, 3, f"budget {100 * budget:.0f}%", fontsize=7, color="#666666")
    ax.text(2, 86, "85% (Hannan et al. 2005)", fontsize=7, color="#666666")
    ax.set(xlabel="eventual reliable improvers flagged by session 3 (%)",
           ylabel="eventual reliable deteriorators flagged by session 3 (%)", title=title,
           xlim=(0, 100), ylim=(0, 101))
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
