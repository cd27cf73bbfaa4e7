"""Every constant of the cohort simulator, with its source or the reason it has its value.

Three kinds of constant, marked in each `Param`:

* ``published``: taken from a named source (instrument ranges, cut-offs, reliable change, the
  Flückiger et al. 2020 cross-lagged coefficients before conversion).
* ``tuned``: chosen so that a simulated cohort lands inside the published base-rate ranges
  (dropout, reliable improvement / recovery / deterioration, mean sessions). The tuning targets
  are listed in ``docs/simulator.md``; nothing is fitted to the oracle.
* ``assumed``: a modelling choice with no published figure behind it (item difficulties, domain
  prevalences, adaptation effect sizes, ...). Stated, not hidden.

`Params` is a frozen dataclass; `Params.pack()` turns it into the flat float vector (plus lookup
tables) that the compiled kernels read. A tiny configuration for hand-checked tests is just another
`Params` (see `tiny_two_class`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from features.instruments import ADAPTATIONS

#: Version of the generative model. Figures in the docs name the version that produced them;
#: a change to the equations or a default parameter bumps it (docs/simulator.md, "Versions").
SIMULATOR_VERSION = "2.0.1"

# ------------------------------------------------------------------------------------------
# Fixed structure (not parameters)
# ------------------------------------------------------------------------------------------
#: Trajectory states. 0-3 are the classes; 4-9 are "sudden gainers" whose gain falls at
#: session tau = 3..8 (tau is part of the latent class, so the oracle enumerates it).
TRAJ_NAMES: tuple[str, ...] = (
    "early_responder", "gradual_responder", "non_responder", "deteriorator",
    *(f"sudden_gain_s{tau}" for tau in range(3, 9)),
)
N_TRAJ = len(TRAJ_NAMES)
SG_TAU = np.array([0, 0, 0, 0, 3, 4, 5, 6, 7, 8], dtype=np.float64)
#: Latent problem domains, in the order of the first five adaptation codes (each adaptation
#: i < 5 targets domain i; adaptation 5, change_approach, targets non-response).
DOMAINS: tuple[str, ...] = ("alliance", "motivation", "social_support", "life_events",
                            "medication")
N_DOM = len(DOMAINS)
#: Options at a decision point: 0 = no adaptation, 1..6 = ADAPTATIONS[0..5].
OPTIONS: tuple[str, ...] = ("none", *ADAPTATIONS)
N_OPT = len(OPTIONS)
AGE_BANDS: tuple[str, ...] = ("18-25", "26-35", "36-50", "51-65", "66+")
GENDERS: tuple[str, ...] = ("female", "male", "other")
DIAGNOSES: tuple[str, ...] = ("depression", "anxiety", "mixed")
MAX_SLOTS = 20  # hard cap on appointment slots; the course ends (finished) at the last one

# ------------------------------------------------------------------------------------------
# Flückiger et al. 2020 conversion
# ------------------------------------------------------------------------------------------
FLUCKIGER_ALLIANCE_TO_SYMPTOM = -0.065  # standardised within-person B, alliance_t -> symptom_t+1
FLUCKIGER_SYMPTOM_TO_ALLIANCE = -0.148  # standardised within-person B, symptom_t -> alliance_t+1
FLUCKIGER_SOURCE = ("Flückiger, Rubel, Del Re et al. 2020, J Consult Clin Psychol 88:829 "
                    "(two-stage IPD meta-analysis, first 7 sessions, n > 5,000)")
#: Within-person SDs used to put the standardised coefficients on raw points (assumed; the
#: summary re-estimates both SDs and both coefficients from every simulated cohort).
SD_WITHIN_PHQ = 3.7  # PHQ-9 points, within-person around the person mean, sessions 1-7
SD_WITHIN_SRS = 1.4  # SRS points, within-person around the person mean
#: Local slopes used to put raw points on the kernels' logit scales (derivative of the
#: expected total with respect to the latent at the typical level).
DPHQ_DETA = 6.5  # d E[PHQ-9] / d eta near PHQ-9 = 14 (Rasch model below)
DSRS_DA = 3.6  # d E[SRS] / d A near SRS = 36: 40 * 0.9 * 0.1


def fluckiger_raw() -> dict[str, float]:
    """The Flückiger coefficients converted to raw points and to the kernels' logit scales.

    A standardised within-person coefficient B (outcome SD units per predictor SD unit) becomes
    raw points per raw point as B * SD_w(outcome) / SD_w(predictor); dividing by the local slope
    of the expected total gives the effect on the latent logit.
    """
    as_points = FLUCKIGER_ALLIANCE_TO_SYMPTOM * SD_WITHIN_PHQ / SD_WITHIN_SRS  # PHQ pts / SRS pt
    sa_points = FLUCKIGER_SYMPTOM_TO_ALLIANCE * SD_WITHIN_SRS / SD_WITHIN_PHQ  # SRS pts / PHQ pt
    return {
        "alliance_to_symptom_points": as_points,
        "symptom_to_alliance_points": sa_points,
        "alliance_to_symptom_logit": as_points / DPHQ_DETA,  # eta per SRS point
        "symptom_to_alliance_logit": sa_points / DSRS_DA,  # A per PHQ-9 point
    }


# ------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    """All constants of the generative model. Units: eta and A are logits (see the docs)."""

    # --- trajectory classes (tuned mix and slopes; Finch, Lambert & Schaalje 2001: expected
    # change is linear in log(session)) ---
    # (simulator 2.0 moved 3 points from deteriorators to gradual responders and set their
    # slope to -0.30 from -0.40, retuned for the larger therapist and alliance effects)
    traj_prior: tuple[float, ...] = (0.30, 0.32, 0.17, 0.05, 0.04, 0.035, 0.03, 0.02, 0.02,
                                     0.015)
    traj_beta: tuple[float, ...] = (1.35, 0.75, 0.06, -0.30, 0.40, 0.40, 0.40, 0.40, 0.40, 0.40)
    sudden_gain_drop: float = 1.0  # logit drop at the gain session (tuned; assumed size)
    # --- random effects on the slope. The therapist SD is calibrated to the published
    # therapist share of outcome variance, about 5% (Johns, Barkham, Kellett & Saxon 2019,
    # Clin Psychol Rev 67:78, routine care; Baldwin & Imel 2013): on a calibration cohort
    # (seed 5, 20,000 clients) the mixed-model share of the summary was 1.7% at SD 0.117 (a
    # first-order derivation that ignored the floor of the scale and early endings), 9.2% at
    # 0.3 and 5.4% at 0.21. The share at other seeds and sizes is then a check of this
    # calibration, not an independent one. Client and clinic SDs assumed. ---
    b1_sd_client: float = 0.16
    b1_sd_therapist: float = 0.21
    b1_sd_clinic: float = 0.03
    # --- true intake severity b0: PHQ-9 mean about 15-16, SD about 5 in NHS Talking Therapies
    # referrals (assumed from NHS annual reports); covariates shift it (assumed). The intake
    # PHQ-9 / GAD-7 measure b0 (and b0 + eg) with the Rasch model's own error, and the course
    # is anchored on b0, not on the observed intake: regression to the mean. ---
    b0_mu: float = 0.08
    b0_sd: float = 0.72
    b0_diag: tuple[float, ...] = (0.15, -0.20, 0.10)  # depression, anxiety, mixed
    b0_female: float = 0.05
    b0_medication: float = 0.35  # clients who need a medication review start more severe
    eg_mu: tuple[float, ...] = (-0.65, 0.10, -0.20)  # GAD-7 latent offset by diagnosis
    eg_sd: float = 0.45  # the client's own GAD-7 offset; it persists over the course
    # GAD-7 shares the structural course and life events with the PHQ-9 but has its own good
    # and bad weeks (week_prob, week_shock, drawn independently): the two instruments are
    # correlated, not one latent plus an offset (assumed structure).
    # --- item difficulties (assumed; item 9 rarely endorsed, sleep/energy most) ---
    phq_delta: tuple[float, ...] = (0.25, 0.20, 0.55, 0.65, 0.15, -0.05, 0.0, -0.45, -2.6)
    gad_delta: tuple[float, ...] = (0.40, 0.15, 0.50, 0.30, -0.35, 0.30, -0.25)
    # --- alliance (SRS: mean about 36 of 40, Duncan et al. 2003; assumed spread) ---
    a0_mu: float = 2.25
    a0_sd: float = 0.65
    a0_alliance: float = -0.85  # alliance-problem domain: lower alliance at intake
    srs_item_scale: float = 0.32  # logistic scale of SRS item noise (logits)
    alliance_drift: float = 0.30  # alliance-problem domain: further decline per log(session)
    # --- between-person alliance effect on progress: the slope on log(session) changes by
    # alliance_between per SRS point of the client's current expected alliance above
    # alliance_ref (logits per SRS point per log session). Derived from the published
    # alliance-outcome correlation r = .278 (Flückiger, Del Re, Wampold & Horvath 2018,
    # Psychotherapy 55:316) by the first-order formula r = c * dE[PHQ]/deta * E[log s_end] *
    # SD(mean SRS) / SD(change): c = .278 * 6.14 / (6.5 * 1.854 * 4.06) = 0.035, with the
    # previous version's SDs (seed 5, 20,000 clients). So the simulated r is a consistency
    # check of this derivation, not an independent one. Reference: SRS mean about 36 of 40
    # (Duncan et al. 2003). ---
    alliance_between: float = 0.035
    alliance_ref: float = 36.0
    # --- cross-lagged paths (Flückiger et al. 2020, converted in `fluckiger_raw`) ---
    c_alliance_symptom: float = field(
        default_factory=lambda: fluckiger_raw()["alliance_to_symptom_logit"])
    c_symptom_alliance: float = field(
        default_factory=lambda: fluckiger_raw()["symptom_to_alliance_logit"])
    rho: float = 0.3  # persistence of the last observed residual (assumed)
    # --- good and bad weeks: a per-session symptom shock of +-week_shock with probability
    # week_prob each (assumed; makes week-to-week variation exceed item noise, as in ROM data) ---
    week_shock: float = 0.75
    week_prob: float = 0.25
    # --- domains (assumed prevalences; Lambert's Assessment for Signal Clients domains) ---
    dom_prev: tuple[float, ...] = (0.20, 0.25, 0.25, 0.20, 0.15)
    dom_slope_penalty: tuple[float, ...] = (0.12, 0.0, 0.14, 0.0, 0.18)
    # --- life events (assumed) ---
    le_hazard: tuple[float, ...] = (0.02, 0.16)  # per slot, without / with the domain
    le_eta: float = 0.45  # symptom shock in the session of the event
    le_miss: float = 1.6  # log-odds of missing that slot
    # --- attendance (tuned; DNA rates about 10-15% per appointment, NHS reports) ---
    miss0: float = -2.6
    miss_motivation: float = 1.0
    miss_alliance: float = 0.25  # per 4 SRS points below 36 at the last session
    # --- ending (tuned to the dropout and mean-sessions targets) ---
    drop0: float = -3.8
    drop_intake: float = 0.6  # extra log-odds of not returning after the assessment
    drop_alliance: float = 0.35  # per 4 SRS points below 36
    drop_progress: float = -0.30  # per 6 PHQ-9 points of improvement since intake
    drop_motivation: float = 0.8
    drop_age: tuple[float, ...] = (0.45, 0.25, 0.0, -0.15, -0.2)  # younger clients drop out more (Swift & Greenberg 2012)
    drop_after_miss: float = 0.8
    fin0: float = -3.7
    fin_recovered: float = 1.4  # PHQ-9 below caseness at the session
    fin_session: float = 0.20  # per session after the second
    # --- the simulated therapist (observable off-track rule; assumed) ---
    offtrack_tol: float = 2.0  # PHQ-9 points above the expected course
    offtrack_rc_session: float = 8.0  # expected course reaches 6 points at this session (Lambert)
    offtrack_srs: float = 30.0
    prop_floor: float = 0.05
    prop_z: tuple[float, ...] = (1.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # base scores per option
    prop_z_alliance: float = 1.2  # alliance_repair when SRS < 36
    prop_z_motivation: float = 0.9  # motivation when any session was missed
    prop_z_life_events: float = 0.9  # life_events when the last slot was missed
    prop_z_medication: float = 0.9  # medication_review when PHQ-9 >= 20
    prop_z_change: float = 0.7  # change_approach when PHQ-9 is not below intake
    # confounding: the therapist also hears about the client's problem domains and leans
    # towards the matching adaptation by this much (z units), unrecorded. 0 in the default
    # world (choices from observables only); the "confounded" scenario sets it (assumed).
    prop_confound: float = 0.0
    # --- adaptation effects (calibrated: feedback with clinical support tools for
    # not-on-track cases g = 0.36-0.53, Barkham et al. 2023). Calibrated to the lower end:
    # among flagged clients, the truly best adaptation vs none moves the last PHQ-9 score by
    # g = 0.36 of its SD (about 2.6 points; tests/test_simulator.py checks 0.30-0.53).
    # The first version (0.08 / 0.30-0.45) gave g = 0.19, half the published lower end. ---
    adapt_generic: float = 0.16
    adapt_matched: tuple[float, ...] = (0.60, 0.60, 0.70, 0.60, 0.90, 0.80)
    adapt_alliance_boost: float = 0.7  # A gain after alliance repair for alliance problems
    adapt_ramp: float = 2.0  # sessions until the full effect
    # matched effects by other roads (assumed): at the full ramp, work on motivation lifts
    # this share of a motivation problem's pull on missed sessions and dropout, and attention
    # to life events lowers the life-event hazard of a client with that domain by this share
    adapt_motivation_relief: float = 1.0
    adapt_life_relief: float = 0.5
    # and alliance repair halts this share of an alliance problem's drift from its session on
    adapt_alliance_halt: float = 1.0
    # --- clinical-support checklist (CSC, features/instruments.py), given at the decision
    # session; one item per domain (the first five adaptations), rating 0-4 = the latent
    # csc_shift * (has the domain) + N(0, 1) cut at csc_cuts. Assumed accuracy, anchored on a
    # brief screener: a rating >= 2 flags the domain with sensitivity 0.83 and specificity
    # 0.92, as the PHQ-2 at >= 3 does for major depression (Kroenke, Spitzer & Williams 2003,
    # Med Care 41:1284): cut 1.405 = z(0.92), shift 1.405 + z(0.83) = 2.36. The simulated
    # therapists do not read it (their choices and propensities are unchanged). ---
    csc_shift: float = 2.36
    csc_cuts: tuple[float, ...] = (0.5, 1.405, 2.3, 3.2)
    # --- course ---
    max_slots: int = MAX_SLOTS
    # --- cohort layout ---
    n_clinics: int = 12
    clients_per_therapist: int = 60
    extract_date: str = "2025-06-30"
    intake_window_days: int = 730
    age_probs: tuple[float, ...] = (0.2, 0.27, 0.28, 0.18, 0.07)
    gender_probs: tuple[float, ...] = (0.64, 0.34, 0.02)
    diag_probs: tuple[float, ...] = (0.35, 0.35, 0.30)

    def with_(self, **kw) -> Params:
        return replace(self, **kw)

    @property
    def b1_sd(self) -> float:
        """Total slope SD seen by one client (client + therapist + clinic effects)."""
        return math.sqrt(self.b1_sd_client**2 + self.b1_sd_therapist**2 + self.b1_sd_clinic**2)

    def pack(self) -> Packed:
        return _pack(self)


# Index layout of the flat parameter vector read by the kernels.
_SCALARS = (
    "sudden_gain_drop", "b0_mu", "b0_sd", "b0_female", "b0_medication", "eg_sd",
    "a0_mu", "a0_sd", "a0_alliance", "srs_item_scale", "alliance_drift",
    "c_alliance_symptom", "c_symptom_alliance", "rho", "week_shock", "week_prob", "le_eta",
    "le_miss",
    "miss0", "miss_motivation", "miss_alliance", "drop0", "drop_intake", "drop_alliance",
    "drop_progress", "drop_motivation", "drop_after_miss", "fin0", "fin_recovered",
    "fin_session", "offtrack_tol", "offtrack_rc_session", "offtrack_srs", "prop_floor",
    "prop_z_alliance", "prop_z_motivation", "prop_z_life_events", "prop_z_medication",
    "prop_z_change", "adapt_generic", "adapt_alliance_boost", "adapt_ramp", "max_slots",
    "b1_sd_client", "alliance_between", "alliance_ref", "prop_confound",
    "adapt_motivation_relief", "adapt_life_relief", "adapt_alliance_halt",
)
_ARRAYS = (
    ("traj_prior", N_TRAJ), ("traj_beta", N_TRAJ), ("b0_diag", 3), ("eg_mu", 3),
    ("dom_prev", N_DOM), ("dom_slope_penalty", N_DOM), ("le_hazard", 2), ("drop_age", 5),
    ("prop_z", N_OPT), ("adapt_matched", 6),
)
IDX: dict[str, int] = {}
_i = 0
for _name in _SCALARS:
    IDX[_name] = _i
    _i += 1
for _name, _n in _ARRAYS:
    IDX[_name] = _i
    _i += _n
N_PARAMS = _i


@dataclass(frozen=True)
class Packed:
    """What the kernels read: the flat vector and the instrument lookup tables."""

    vec: np.ndarray
    phq_delta: np.ndarray
    gad_delta: np.ndarray
    phq_logg: np.ndarray  # log g(s), s = 0..27 (Rasch total distribution)
    gad_logg: np.ndarray
    phq_eta_hat: np.ndarray  # eta whose expected total is s (clipped to 0.5..26.5)
    gad_eta_hat: np.ndarray
    srs_cut: np.ndarray  # logit boundaries of the 101 one-decimal SRS item values (102 long)


def rasch_logg(delta: np.ndarray, item_max: int = 3) -> np.ndarray:
    """log of g(s) = sum over item answers with total s of prod_j C(m, k_j) exp(k_j delta_j).

    In the binomial Rasch model (item j ~ Binomial(m, sigmoid(eta + delta_j))) the total s is
    sufficient for eta and P(S = s | eta) = g(s) exp(s eta) / prod_j (1 + exp(eta + delta_j))^m.
    """
    poly = np.array([1.0])
    for d in delta:
        f = np.array([math.comb(item_max, k) * math.exp(k * d) for k in range(item_max + 1)])
        poly = np.convolve(poly, f)
    return np.log(poly)


def rasch_mean(eta: float, delta: np.ndarray, item_max: int = 3) -> float:
    return float(item_max * np.sum(1.0 / (1.0 + np.exp(-(eta + delta)))))


def _eta_hat(delta: np.ndarray, item_max: int = 3) -> np.ndarray:
    top = item_max * len(delta)
    out = np.empty(top + 1)
    for s in range(top + 1):
        target = min(max(s, 0.5), top - 0.5)
        lo, hi = -12.0, 12.0
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            if rasch_mean(mid, delta, item_max) < target:
                lo = mid
            else:
                hi = mid
        out[s] = 0.5 * (lo + hi)
    return out


def _srs_cut() -> np.ndarray:
    """Boundaries: item value v (tenths 0..100) <=> latent x in [cut[v], cut[v+1])."""
    cut = np.empty(102)
    cut[0], cut[101] = -np.inf, np.inf
    for v in range(1, 101):
        p = (v - 0.5) / 100.0
        cut[v] = math.log(p / (1.0 - p))
    return cut


def _pack(p: Params) -> Packed:
    vec = np.zeros(N_PARAMS)
    for name in _SCALARS:
        vec[IDX[name]] = float(getattr(p, name))
    for name, n in _ARRAYS:
        vals = np.asarray(getattr(p, name), dtype=float)
        if vals.shape != (n,):
            raise ValueError(f"{name} must have {n} values, got {vals.shape}")
        vec[IDX[name]:IDX[name] + n] = vals
    prior = vec[IDX["traj_prior"]:IDX["traj_prior"] + N_TRAJ]
    if abs(prior.sum() - 1.0) > 1e-9 or (prior < 0).any():
        raise ValueError("traj_prior must be a probability vector")
    if p.max_slots > MAX_SLOTS or p.max_slots < 2:
        raise ValueError(f"max_slots must be in 2..{MAX_SLOTS}")
    pd_, gd = np.asarray(p.phq_delta, float), np.asarray(p.gad_delta, float)
    return Packed(vec, pd_, gd, rasch_logg(pd_), rasch_logg(gd), _eta_hat(pd_), _eta_hat(gd),
                  _srs_cut())


DEFAULT = Params()


def tiny_two_class() -> Params:
    """A configuration small enough to work the oracle out by hand (see tests).

    Two classes (early responders 60%, non-responders 40%), no domains, no slope random
    effect, no life events, no good or bad weeks, nobody misses or leaves early, no cross-lagged paths, no residual
    persistence, adaptations without effect, and the course ends at the third slot.
    """
    prior = [0.0] * N_TRAJ
    prior[0], prior[2] = 0.6, 0.4
    return Params(
        traj_prior=tuple(prior), b1_sd_client=0.0, b1_sd_therapist=0.0, b1_sd_clinic=0.0,
        dom_prev=(0.0,) * N_DOM, le_hazard=(0.0, 0.0), miss0=-60.0, drop0=-60.0,
        drop_intake=0.0, drop_after_miss=0.0, fin0=-60.0, fin_recovered=0.0, fin_session=0.0,
        c_alliance_symptom=0.0, c_symptom_alliance=0.0, rho=0.0, week_prob=0.0,
        alliance_between=0.0,
        adapt_generic=0.0,
        adapt_matched=(0.0,) * 6, adapt_alliance_boost=0.0, max_slots=3,
        intake_window_days=0, drop_age=(0.0,) * 5,
    )
