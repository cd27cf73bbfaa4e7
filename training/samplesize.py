"""Minimum sample size for an external validation of a binary-outcome prediction model.

Riley RD, Debray TPA, Collins GS, et al. Minimum sample size for external validation of a clinical
prediction model with a binary outcome. Stat Med 2021;40:4230-4251; Riley RD, Snell KIE, Archer L,
et al. Evaluation of clinical prediction models (part 3): calculating the sample size required for
an external validation study. BMJ 2024;384:e074821. The formulas below follow the authors'
software, pmvalsampsize (R package on CRAN, file R/pmvalsampsize_bin.R; Python port
pmvalsampsize_bin.py), with its default target widths. Each criterion asks for a 95% confidence
interval no wider than a target, assuming the model is well calibrated in the new population
(O/E = 1, calibration slope = 1, as pmvalsampsize assumes by default):

1. O/E: SE(ln O/E) = sqrt((1 - phi) / (N phi)); the interval exp(ln O/E +- 1.96 SE) has width
   2 sinh(1.96 SE) when O/E = 1.
2. Calibration slope: the inverse Fisher information of the recalibration model
   logit P(y) = a + b LP at a = 0, b = 1, given the distribution of the linear predictor LP:
   var(b) = I00 / (N (I00 I11 - I01^2)), I_jk = E[LP^(j+k) p (1 - p)], p = expit(LP).
3. C-statistic: Newcombe's (Stat Med 2006;25:559-573) standard error, as used by Riley et al.:
   SE^2 = C(1-C) [1 + (N/2 - 1)(1-C)/(2-C) + (N/2 - 1) C/(1+C)] / (N^2 phi (1 - phi)).
4. Standardised net benefit at a risk threshold t (only when a threshold is given):
   var(sNB) = [sens(1-sens)/phi + w^2 spec(1-spec)/(1-phi) + w^2 (1-spec)^2/(phi(1-phi))] / N,
   w = (1 - phi)/phi * t/(1 - t), with the sensitivity and specificity the calibrated model would
   have at t.

The distribution of LP is taken from predicted probabilities (`p_sample`, e.g. the model's
predictions on its development data, or on the cohort being checked), from a normal LP
(`lp_normal=(mean, sd)`), or, when neither is given, from the c-statistic and the prevalence:
LP ~ N(m, s^2) among non-events and N(m + s^2, s^2) among events, s^2 = 2 Phi^-1(C)^2 (the
`lpcstat` option of pmvalsampsize; then logit P(y | LP) = LP exactly when
m = logit(phi) - s^2 / 2, so no iteration is needed). pmvalsampsize draws 1,000,000 LP values at
random; here the expectations are integrals on a fine grid (normal cases) or sample means, so the
answer does not depend on a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm

#: The 95% normal quantile as Riley et al. 2021 and pmvalsampsize use it (not 1.959964...).
Z95 = 1.96
#: Probabilities are clipped to [P_CLIP, 1 - P_CLIP] before the logit (OnTrack heuristic: a
#: prediction of exactly 0 or 1 adds nothing to the information, p (1 - p) = 0, but its logit is
#: infinite).
P_CLIP = 1e-9
#: Grid for the normal-LP integrals: +-GRID_SD standard deviations in GRID_POINTS steps
#: (OnTrack heuristic; beyond 12 SD the normal density is below 1e-31).
GRID_SD, GRID_POINTS = 12.0, 48_001


@dataclass(frozen=True)
class Targets:
    """Target widths of the 95% confidence intervals (pmvalsampsize defaults: `oeciwidth = 0.2`,
    `csciwidth = 0.2`, `cstatciwidth = 0.1`, `nbciwidth = 0.2`). Riley et al. 2021 note that the
    O/E width should suit the outcome proportion: their worked example (outcome in 1.8%) used 1.
    `threshold`: the risk threshold for the net-benefit criterion; None leaves it out."""

    oe_width: float = 0.2
    slope_width: float = 0.2
    c_width: float = 0.1
    net_benefit_width: float = 0.2
    threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("oe_width", "slope_width", "c_width", "net_benefit_width"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold!r}")


@dataclass(frozen=True)
class Criterion:
    name: str      # "oe", "calibration_slope", "c_statistic", "net_benefit"
    label: str     # plain words: "an observed/expected ratio"
    target: float  # target 95% interval width
    n: int         # clients needed
    events: int    # of whom with the outcome (n * prevalence, rounded up)


@dataclass(frozen=True)
class Check:
    name: str
    target: float
    width: float              # expected 95% interval width at this cohort's size (NaN if none)
    required_n: int | None    # None when the outcome proportion is unknown (no events)
    required_events: int | None
    meets: bool
    sentence: str


_LABELS = {"oe": "an observed/expected ratio", "calibration_slope": "a calibration slope",
           "c_statistic": "a C-statistic (AUROC)", "net_benefit": "a standardised net benefit"}


@dataclass(frozen=True)
class _LP:
    """A distribution of the linear predictor as values with weights summing to 1."""

    values: np.ndarray
    weights: np.ndarray

    def mean(self, f: np.ndarray) -> float:
        return float(np.sum(self.weights * f))


def _normal_grid(mean: float, sd: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(-GRID_SD, GRID_SD, GRID_POINTS)
    w = norm.pdf(x)
    return mean + sd * x, w / w.sum()


def _lp_distribution(prevalence: float, c_statistic: float, p_sample, lp_normal) -> _LP:
    if p_sample is not None and lp_normal is not None:
        raise ValueError("give p_sample or lp_normal, not both")
    if p_sample is not None:
        p = np.asarray(p_sample, dtype=float).ravel()
        if len(p) == 0 or not np.all((p >= 0) & (p <= 1)):
            raise ValueError("p_sample must be a non-empty array of probabilities in [0, 1]")
        lp = logit(np.clip(p, P_CLIP, 1 - P_CLIP))
        return _LP(lp, np.full(len(lp), 1 / len(lp)))
    if lp_normal is not None:
        mean, sd = (float(v) for v in lp_normal)
        if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
            raise ValueError(f"lp_normal must be (mean, sd) with sd > 0, got {lp_normal!r}")
        return _LP(*_normal_grid(mean, sd))
    s2 = 2 * norm.ppf(c_statistic) ** 2
    if s2 == 0:
        raise ValueError("a C-statistic of 0.5 implies no spread of risks; give p_sample")
    m = float(logit(prevalence)) - s2 / 2
    v0, w0 = _normal_grid(m, math.sqrt(s2))
    v1, w1 = _normal_grid(m + s2, math.sqrt(s2))
    return _LP(np.r_[v0, v1], np.r_[(1 - prevalence) * w0, prevalence * w1])


def binormal_lp(prevalence: float, c_statistic: float) -> tuple[float, float, float]:
    """(mean among non-events, mean among events, common sd) of the LP that a calibrated model
    with this C-statistic and outcome proportion has under the equal-variance binormal model."""
    _check_rates(prevalence, c_statistic)
    s2 = 2 * norm.ppf(c_statistic) ** 2
    m = float(logit(prevalence)) - s2 / 2
    return m, m + s2, math.sqrt(s2)


# Per-client variances: SE^2 = v / N for O/E (log scale), slope and net benefit.

def _oe_unit_variance(prevalence: float) -> float:
    return (1 - prevalence) / prevalence


def _slope_unit_variance(lp: _LP) -> float:
    p = expit(lp.values)
    v = p * (1 - p)
    i00, i01, i11 = lp.mean(v), lp.mean(v * lp.values), lp.mean(v * lp.values ** 2)
    det = i00 * i11 - i01 ** 2
    if det <= 0:
        raise ValueError("the predicted probabilities have no spread: the slope is not defined")
    return i00 / det


def _net_benefit_unit_variance(lp: _LP, prevalence: float, threshold: float) -> float:
    p = expit(lp.values)
    flagged = lp.values >= logit(threshold)
    sens = lp.mean(p * flagged) / lp.mean(p)
    spec = lp.mean((1 - p) * ~flagged) / lp.mean(1 - p)
    w = (1 - prevalence) / prevalence * threshold / (1 - threshold)
    return (sens * (1 - sens) / prevalence + w * w * spec * (1 - spec) / (1 - prevalence)
            + w * w * (1 - spec) ** 2 / (prevalence * (1 - prevalence)))


def c_statistic_se(n: float, c_statistic: float, prevalence: float) -> float:
    """Newcombe's standard error of the C-statistic for n clients (formula 3 above)."""
    c = c_statistic
    half = n / 2 - 1
    var = c * (1 - c) * (1 + half * (1 - c) / (2 - c) + half * c / (1 + c)) / (
        n * n * prevalence * (1 - prevalence))
    return math.sqrt(var)


def _widths(n: float, prevalence: float, c_statistic: float, lp: _LP,
            targets: Targets) -> dict[str, float]:
    out = {"oe": 2 * math.sinh(Z95 * math.sqrt(_oe_unit_variance(prevalence) / n)),
           "calibration_slope": 2 * Z95 * math.sqrt(_slope_unit_variance(lp) / n),
           "c_statistic": 2 * Z95 * c_statistic_se(n, c_statistic, prevalence)}
    if targets.threshold is not None:
        v = _net_benefit_unit_variance(lp, prevalence, targets.threshold)
        out["net_benefit"] = 2 * Z95 * math.sqrt(v / n)
    return out


def _c_statistic_n(c: float, prevalence: float, width: float) -> int:
    """Smallest N with 2 * 1.96 * SE(C) <= width. SE^2 N^2 phi(1-phi) is linear in N, so the
    boundary is the positive root of a quadratic; the integer is then checked directly."""
    a = (1 - c) / (2 - c) + c / (1 + c)
    se = width / (2 * Z95)
    qa = prevalence * (1 - prevalence) * se * se
    qb = -c * (1 - c) * a / 2
    qc = -c * (1 - c) * (1 - a)
    n = max(2, math.ceil((-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)))
    while n > 2 and 2 * Z95 * c_statistic_se(n - 1, c, prevalence) <= width:
        n -= 1
    while 2 * Z95 * c_statistic_se(n, c, prevalence) > width:
        n += 1
    return n


def _check_rates(prevalence: float, c_statistic: float) -> None:
    if not (isinstance(prevalence, (int, float)) and 0 < prevalence < 1):
        raise ValueError(f"prevalence must be between 0 and 1, got {prevalence!r}")
    if not (isinstance(c_statistic, (int, float)) and 0 < c_statistic < 1):
        raise ValueError(f"c_statistic must be between 0 and 1, got {c_statistic!r}")


def required_sample_size(prevalence: float, c_statistic: float, p_sample=None,
                         lp_normal: tuple[float, float] | None = None,
                         targets: Targets = Targets()) -> list[Criterion]:
    """Clients (and clients with the outcome) an external validation needs for each criterion.
    The study needs the largest of them. `prevalence`: the expected share of clients with the
    outcome (here: not reliably improved by the end of care); `c_statistic`: the anticipated
    AUROC in the new population."""
    _check_rates(prevalence, c_statistic)
    lp = _lp_distribution(prevalence, c_statistic, p_sample, lp_normal)

    def criterion(name: str, target: float, n: float) -> Criterion:
        n = max(1, math.ceil(n - 1e-9))  # ceiling, forgiving float noise in exact integers
        return Criterion(name, _LABELS[name], target, n, math.ceil(n * prevalence - 1e-9))

    se_ln_oe = math.asinh(targets.oe_width / 2) / Z95
    se_slope = targets.slope_width / (2 * Z95)
    out = [criterion("oe", targets.oe_width, _oe_unit_variance(prevalence) / se_ln_oe ** 2),
           criterion("calibration_slope", targets.slope_width,
                     _slope_unit_variance(lp) / se_slope ** 2),
           criterion("c_statistic", targets.c_width,
                     _c_statistic_n(c_statistic, prevalence, targets.c_width))]
    if targets.threshold is not None:
        se_nb = targets.net_benefit_width / (2 * Z95)
        v = _net_benefit_unit_variance(lp, prevalence, targets.threshold)
        out.append(criterion("net_benefit", targets.net_benefit_width, v / se_nb ** 2))
    return out


def _label(name: str, targets: Targets) -> str:
    label = _LABELS[name]
    if name == "net_benefit":
        label += f" at a risk threshold of {targets.threshold:g}"
    return label


def _count(k: int) -> str:
    return f"{k:,}"


def precision_check(n: int, events: int, prevalence: float | None, c_statistic: float,
                    p_sample=None, lp_normal: tuple[float, float] | None = None,
                    targets: Targets = Targets()) -> list[Check]:
    """Is a cohort of `n` clients, `events` of them with the outcome, big enough to validate the
    model? One `Check` per criterion: the 95% interval width to expect at this size, whether it
    meets the target, and a sentence. `prevalence`: the outcome proportion to plan with; None
    takes this cohort's own (events / n). `p_sample`: the model's predictions on this cohort."""
    for name, v in (("n", n), ("events", events)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {v!r}")
    if events > n:
        raise ValueError(f"events ({events}) cannot exceed n ({n})")
    if prevalence is None and 0 < events < n:
        prevalence = events / n
    names = ["oe", "calibration_slope", "c_statistic"] + (
        ["net_benefit"] if targets.threshold is not None else [])
    target_of = {"oe": targets.oe_width, "calibration_slope": targets.slope_width,
                 "c_statistic": targets.c_width, "net_benefit": targets.net_benefit_width}
    needed = ({c.name: c for c in required_sample_size(prevalence, c_statistic, p_sample,
                                                        lp_normal, targets)}
              if prevalence is not None else {})

    if n == 0 or events == 0 or events == n:
        if n == 0:
            why = "No clients: nothing can be estimated."
        elif events == 0:
            why = f"No outcome events among the {_count(n)} clients: nothing can be estimated."
        else:
            why = (f"All {_count(n)} clients had the outcome: nothing can be estimated "
                   "(calibration and discrimination need clients with and without it).")
        checks = []
        for name in names:
            c = needed.get(name)
            extra = (f" {_label(name, targets)[0].upper()}{_label(name, targets)[1:]} with a "
                     f"95% interval narrower than {target_of[name]:g} needs about "
                     f"{_count(c.n)} clients ({_count(c.events)} with the outcome)."
                     if c else "")
            checks.append(Check(name, target_of[name], float("nan"), c.n if c else None,
                                c.events if c else None, False, why + extra))
        return checks

    lp = _lp_distribution(prevalence, c_statistic, p_sample, lp_normal)
    widths = _widths(n, prevalence, c_statistic, lp, targets)
    checks = []
    for name in names:
        c = needed[name]
        meets = n >= c.n
        head = "Enough" if meets else "Too small"
        sentence = (f"{head} for {_label(name, targets)} with a 95% interval narrower than "
                    f"{c.target:g} (about {widths[name]:.2f} expected at this size): that needs "
                    f"about {_count(c.n)} clients ({_count(c.events)} with the outcome); "
                    f"this cohort has {_count(n)} ({_count(events)}).")
        checks.append(Check(name, c.target, widths[name], c.n, c.events, meets, sentence))
    return checks
