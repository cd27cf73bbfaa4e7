"""Compiled (numba) kernels: the per-session equations, written ONCE and used by the cohort
generator, the counterfactual re-simulation and the oracle's forward simulation.

Randomness: every uniform is a counter-based draw ``u(key, counter)`` (SplitMix64 of a
per-client 64-bit key that the caller draws from ``numpy.random.Generator(seed)``). Slot ``s``
uses counters ``s * 64 + j`` with a fixed meaning for each ``j`` (``_J_*`` below), so the same
client under another adaptation sees the same random numbers (common random numbers) and the
output does not depend on threads or batch sizes.

Observable state of a course (``st``; identical for every latent hypothesis, except the last
residual ``ST_R`` that the oracle keeps per hypothesis) is updated by `update_attended` /
`update_missed`; the latent symptom and alliance levels of a slot are `eta_struct` / `alliance`.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from training.simulate.params import IDX, N_DOM, N_OPT, N_TRAJ, SG_TAU

# --- parameter indices (compile-time constants for numba) ---
P_SG = IDX["sudden_gain_drop"]
P_B0_MU, P_B0_SD, P_B0_FEMALE, P_B0_MED = (IDX["b0_mu"], IDX["b0_sd"], IDX["b0_female"],
                                           IDX["b0_medication"])
P_EG_SD, P_A0_MU, P_A0_SD, P_A0_ALL = IDX["eg_sd"], IDX["a0_mu"], IDX["a0_sd"], IDX["a0_alliance"]
P_SRS_SCALE, P_DRIFT = IDX["srs_item_scale"], IDX["alliance_drift"]
P_C_AS, P_C_SA, P_RHO = IDX["c_alliance_symptom"], IDX["c_symptom_alliance"], IDX["rho"]
P_WEEK, P_WEEK_P = IDX["week_shock"], IDX["week_prob"]
P_LE_ETA, P_LE_MISS = IDX["le_eta"], IDX["le_miss"]
P_MISS0, P_MISS_MOT, P_MISS_ALL = IDX["miss0"], IDX["miss_motivation"], IDX["miss_alliance"]
P_DROP0, P_DROP_INTAKE, P_DROP_ALL = IDX["drop0"], IDX["drop_intake"], IDX["drop_alliance"]
P_DROP_PROG, P_DROP_MOT, P_DROP_MISS = (IDX["drop_progress"], IDX["drop_motivation"],
                                        IDX["drop_after_miss"])
P_FIN0, P_FIN_REC, P_FIN_SESS = IDX["fin0"], IDX["fin_recovered"], IDX["fin_session"]
P_OFF_TOL, P_OFF_RC, P_OFF_SRS = (IDX["offtrack_tol"], IDX["offtrack_rc_session"],
                                  IDX["offtrack_srs"])
P_FLOOR = IDX["prop_floor"]
P_Z_ALL, P_Z_MOT, P_Z_LE, P_Z_MED, P_Z_CHG = (IDX["prop_z_alliance"], IDX["prop_z_motivation"],
                                              IDX["prop_z_life_events"], IDX["prop_z_medication"],
                                              IDX["prop_z_change"])
P_AD_GEN, P_AD_BOOST, P_AD_RAMP = (IDX["adapt_generic"], IDX["adapt_alliance_boost"],
                                   IDX["adapt_ramp"])
P_MAXS = IDX["max_slots"]
P_B1SD = IDX["b1_sd_client"]
P_A_BETWEEN, P_A_REF, P_CONF = IDX["alliance_between"], IDX["alliance_ref"], IDX["prop_confound"]
P_AD_MOTREL, P_AD_LEREL = IDX["adapt_motivation_relief"], IDX["adapt_life_relief"]
P_AD_HALT = IDX["adapt_alliance_halt"]
P_TRAJ_PRIOR, P_TRAJ_BETA = IDX["traj_prior"], IDX["traj_beta"]
P_B0_DIAG, P_EG_MU = IDX["b0_diag"], IDX["eg_mu"]
P_DOM_PREV, P_DOM_PEN = IDX["dom_prev"], IDX["dom_slope_penalty"]
P_LE_H, P_DROP_AGE, P_PROP_Z, P_AD_MATCH = (IDX["le_hazard"], IDX["drop_age"], IDX["prop_z"],
                                            IDX["adapt_matched"])

# --- domain bits ---
D_ALL, D_MOT, D_SOC, D_LE, D_MED = 0, 1, 2, 3, 4
# --- options ---
O_NONE, O_ALLIANCE, O_MOTIVATION, O_SOCIAL, O_LIFE, O_MED, O_CHANGE = 0, 1, 2, 3, 4, 5, 6
# --- observable state ---
ST_PHQ1, ST_A1, ST_LASTPHQ, ST_LASTSRS = 0, 1, 2, 3
ST_SUMPHQ, ST_SUMSRS, ST_NATT, ST_NMISS, ST_MISSLAST, ST_MISSPREV = 4, 5, 6, 7, 8, 9
ST_OPT, ST_OPTSLOT, ST_R, ST_SLOT = 10, 11, 12, 13
NST = 14
# --- uniform streams within a slot ---
_J_LE, _J_MISS, _J_SRS, _J_PHQ, _J_GAD, _J_DECIDE, _J_END, _J_ROULETTE = 0, 1, 2, 6, 7, 8, 9, 10
_J_WEEK, _J_GAD_WEEK = 11, 12
_J_LATENT = 16  # slot 0 only: latent draws use counters 16..

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INV53 = 1.0 / 9007199254740992.0

JIT = dict(cache=True, nogil=True, error_model="numpy")


@nb.njit(**JIT)
def mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@nb.njit(**JIT)
def unif(key, ctr):
    """Uniform in (0, 1) from a 64-bit key and a counter (SplitMix64)."""
    z = mix64(key + (np.uint64(ctr) + np.uint64(1)) * _GOLD)
    return (float(z >> np.uint64(11)) + 0.5) * _INV53


@nb.njit(**JIT)
def subkey(key, a):
    return mix64(key ^ mix64(np.uint64(a) * _GOLD + np.uint64(0x632BE59BD9B4E019)))


@nb.njit(**JIT)
def normal(key, ctr):
    """Standard normal (Box-Muller on two counter draws)."""
    u1 = unif(key, ctr)
    u2 = unif(key, ctr + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@nb.njit(**JIT)
def sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@nb.njit(**JIT)
def softplus(x):
    if x > 0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@nb.njit(**JIT)
def week(P, u):
    """Good (-1) / ordinary (0) / bad (+1) week from one uniform."""
    p = P[P_WEEK_P]
    if u < p:
        return -1
    if u >= 1.0 - p:
        return 1
    return 0


@nb.njit(**JIT)
def bit(d, j):
    return (d >> j) & 1


# ------------------------------------------------------------------------------------------
# Measurement models
# ------------------------------------------------------------------------------------------
@nb.njit(**JIT)
def rasch_logz(eta, delta):
    s = 0.0
    for j in range(delta.shape[0]):
        s += softplus(eta + delta[j])
    return 3.0 * s


@nb.njit(**JIT)
def rasch_logz_poly(eta, gexp):
    """log sum_s g(s) exp(s eta) (= rasch_logz) by polynomial evaluation: one exp, one log."""
    n = gexp.shape[0]
    tot = 0.0
    if eta <= 0.0:
        x = math.exp(eta)
        for s in range(n - 1, -1, -1):
            tot = tot * x + gexp[s]
        return math.log(tot)
    x = math.exp(-eta)
    for s in range(n):
        tot = tot * x + gexp[s]
    return math.log(tot) + (n - 1) * eta


@nb.njit(**JIT)
def rasch_logpmf_poly(total, eta, logg, gexp):
    return logg[total] + total * eta - rasch_logz_poly(eta, gexp)


@nb.njit(**JIT)
def rasch_logpmf(total, eta, delta, logg):
    """log P(total | eta) in the binomial Rasch model (items 0..3, total sufficient)."""
    return logg[total] + total * eta - rasch_logz(eta, delta)


@nb.njit(**JIT)
def rasch_pmf(eta, delta, logg, out):
    lz = rasch_logz(eta, delta)
    for s in range(logg.shape[0]):
        out[s] = math.exp(logg[s] + s * eta - lz)


@nb.njit(**JIT)
def rasch_pmf_fast(eta, gexp, out):
    """Same as `rasch_pmf` by polynomial evaluation (gexp = exp(logg)): one exp, no overflow."""
    n = gexp.shape[0]
    tot = 0.0
    if eta <= 0.0:
        x = math.exp(eta)
        xp = 1.0
        for s in range(n):
            out[s] = gexp[s] * xp
            tot += out[s]
            xp *= x
    else:
        x = math.exp(-eta)
        xp = 1.0
        for s in range(n - 1, -1, -1):
            out[s] = gexp[s] * xp
            tot += out[s]
            xp *= x
    inv = 1.0 / tot
    for s in range(n):
        out[s] *= inv


@nb.njit(**JIT)
def rasch_sample(eta, delta, logg, u):
    lz = rasch_logz(eta, delta)
    c = 0.0
    n = logg.shape[0]
    for s in range(n):
        c += math.exp(logg[s] + s * eta - lz)
        if u < c:
            return s
    return n - 1


@nb.njit(**JIT)
def srs_item_sample(a, scale, u):
    """One SRS item in tenths (0..100): 10 * sigmoid(a + logistic noise), to one decimal."""
    x = a + scale * math.log(u / (1.0 - u))
    v = int(math.floor(100.0 * sigmoid(x) + 0.5))
    return min(max(v, 0), 100)


@nb.njit(**JIT)
def srs_item_logpmf(v, a, scale, cut):
    hi = 1.0 if v == 100 else sigmoid((cut[v + 1] - a) / scale)
    lo = 0.0 if v == 0 else sigmoid((cut[v] - a) / scale)
    return math.log(max(hi - lo, 1e-300))


@nb.njit(**JIT)
def srs_anchor(srs_total):
    p = min(max(srs_total / 40.0, 0.02), 0.98)
    return math.log(p / (1.0 - p))


# ------------------------------------------------------------------------------------------
# Latent levels of a slot
# ------------------------------------------------------------------------------------------
@nb.njit(**JIT)
def adapt_ramp(P, st, s):
    o = st[ST_OPT]
    if o < 1 or s <= st[ST_OPTSLOT]:
        return 0.0
    return min(1.0, (s - st[ST_OPTSLOT]) / P[P_AD_RAMP])


@nb.njit(**JIT)
def option_effect(P, k, d, o):
    """Effect on the symptom logit of adaptation option o for a client with latents (k, d)."""
    if o < 1:
        return 0.0
    e = P[P_AD_GEN]
    if o <= N_DOM:
        if bit(d, o - 1) == 1:
            e += P[P_AD_MATCH + o - 1]
    elif k == 2 or k == 3:  # change_approach helps non-responders and deteriorators
        e += P[P_AD_MATCH + 5]
    return e


@nb.njit(**JIT)
def eta_struct(P, k, d, b1, b0, s, st):
    """Structural symptom logit at slot s (before residual persistence and life events),
    anchored on the true intake severity b0 (so an intake score that was high by chance is
    followed by lower ones: regression to the mean)."""
    pen = 0.0
    for j in range(N_DOM):
        if bit(d, j) == 1:
            pen += P[P_DOM_PEN + j]
    # between-person alliance: progress is faster when the expected SRS is above the reference
    if P[P_A_BETWEEN] != 0.0:
        srs_exp = 40.0 * sigmoid(alliance(P, bit(d, D_ALL), s, st))
        pen -= P[P_A_BETWEEN] * (srs_exp - P[P_A_REF])
    eta = b0 - (P[P_TRAJ_BETA + k] + b1 - pen) * math.log(s)
    tau = SG_TAU[k]
    if tau > 0 and s >= tau:
        eta -= P[P_SG]
    # alliance at the last attended session, within-person (vs the running person mean)
    eta += P[P_C_AS] * (st[ST_LASTSRS] - st[ST_SUMSRS] / st[ST_NATT])
    ramp = adapt_ramp(P, st, s)
    if ramp > 0:
        eta -= ramp * option_effect(P, k, d, int(st[ST_OPT]))
    return eta


@nb.njit(**JIT)
def alliance(P, d_all, s, st):
    """Alliance logit A at slot s: anchored on the intake SRS."""
    a = st[ST_A1]
    if d_all == 1:
        ramp = adapt_ramp(P, st, s)
        if ramp > 0 and int(st[ST_OPT]) == O_ALLIANCE:
            h = P[P_AD_HALT]  # share of the drift that alliance repair halts
            a -= (P[P_DRIFT] * ((1.0 - h) * math.log(s) + h * math.log(st[ST_OPTSLOT]))
                  - P[P_AD_BOOST] * ramp)
        else:
            a -= P[P_DRIFT] * math.log(s)
    # symptoms at the last attended session, within-person (vs the running person mean)
    a += P[P_C_SA] * (st[ST_LASTPHQ] - st[ST_SUMPHQ] / st[ST_NATT])
    return a


@nb.njit(**JIT)
def motivation_active(P, d, s, st):
    if bit(d, D_MOT) == 0:
        return 0.0
    if int(st[ST_OPT]) == O_MOTIVATION:
        return 1.0 - P[P_AD_MOTREL] * adapt_ramp(P, st, s)
    return 1.0


@nb.njit(**JIT)
def p_life_event(P, d, s, st):
    h = P[P_LE_H + bit(d, D_LE)]
    if bit(d, D_LE) == 1 and int(st[ST_OPT]) == O_LIFE:
        h *= 1.0 - P[P_AD_LEREL] * adapt_ramp(P, st, s)
    return h


@nb.njit(**JIT)
def p_miss(P, d, e, s, st):
    x = (P[P_MISS0] + P[P_MISS_MOT] * motivation_active(P, d, s, st) + P[P_LE_MISS] * e
         + P[P_MISS_ALL] * max(0.0, 36.0 - st[ST_LASTSRS]) / 4.0)
    return sigmoid(x)


@nb.njit(**JIT)
def drop_logit(P, d, age, s, phq, srs, st):
    """Log-odds of dropout after an attended slot s with PHQ-9 = phq and SRS = srs there."""
    x = (P[P_DROP0] + P[P_DROP_ALL] * (36.0 - srs) / 4.0
         + P[P_DROP_PROG] * (st[ST_PHQ1] - phq) / 6.0
         + P[P_DROP_MOT] * motivation_active(P, d, s, st) + P[P_DROP_AGE + age])
    if s == 1:
        x += P[P_DROP_INTAKE]
    return x


@nb.njit(**JIT)
def p_drop(P, d, age, s, phq, srs, st):
    return sigmoid(drop_logit(P, d, age, s, phq, srs, st))


@nb.njit(**JIT)
def p_finish(P, s, phq):
    if s == 1:
        return 0.0
    if s >= P[P_MAXS]:
        return 1.0
    x = P[P_FIN0] + P[P_FIN_SESS] * (s - 2)
    if phq < 10:
        x += P[P_FIN_REC]
    return sigmoid(x)


@nb.njit(**JIT)
def p_drop_missed(P, d, age, s, st):
    x = (P[P_DROP0] + P[P_DROP_MISS] + P[P_DROP_MOT] * motivation_active(P, d, s, st)
         + P[P_DROP_AGE + age])
    return sigmoid(x)


# ------------------------------------------------------------------------------------------
# The simulated therapist
# ------------------------------------------------------------------------------------------
@nb.njit(**JIT)
def off_track(P, s, phq, srs, st):
    if s < 2 or st[ST_OPT] >= 0:
        return False
    expected = 6.0 * math.log(s) / math.log(P[P_OFF_RC])
    return phq > st[ST_PHQ1] - expected + P[P_OFF_TOL] or srs < P[P_OFF_SRS]


@nb.njit(**JIT)
def propensities(P, phq, srs, st, d, out):
    """Known propensities of the 7 options (none + 6 adaptations): from observables, plus
    ``prop_confound`` towards the adaptation matching each of the client's domains (what the
    therapist heard but did not record; 0 by default).

    Uses the state AFTER the slot's update (ST_MISSPREV = the previous slot was missed).
    Every option has probability >= prop_floor.
    """
    for o in range(N_OPT):
        out[o] = P[P_PROP_Z + o]
    if P[P_CONF] != 0.0:
        for j in range(N_DOM):
            if bit(d, j) == 1:
                out[1 + j] += P[P_CONF]
    if srs < 36.0:
        out[O_ALLIANCE] += P[P_Z_ALL]
    if st[ST_NMISS] >= 1:
        out[O_MOTIVATION] += P[P_Z_MOT]
    if st[ST_MISSPREV] >= 1:
        out[O_LIFE] += P[P_Z_LE]
    if phq >= 20:
        out[O_MED] += P[P_Z_MED]
    if phq >= st[ST_PHQ1]:
        out[O_CHANGE] += P[P_Z_CHG]
    m = out.max()
    tot = 0.0
    for o in range(N_OPT):
        out[o] = math.exp(out[o] - m)
        tot += out[o]
    f = P[P_FLOOR]
    for o in range(N_OPT):
        out[o] = f + (1.0 - N_OPT * f) * out[o] / tot


@nb.njit(**JIT)
def categorical(p, u):
    c = 0.0
    for i in range(p.shape[0]):
        c += p[i]
        if u < c:
            return i
    return p.shape[0] - 1


# ------------------------------------------------------------------------------------------
# State updates
# ------------------------------------------------------------------------------------------
@nb.njit(**JIT)
def init_state(st, phq1, srs1):
    st[:] = 0.0
    st[ST_PHQ1] = phq1
    st[ST_A1] = srs_anchor(srs1)
    st[ST_LASTPHQ] = phq1
    st[ST_LASTSRS] = srs1
    st[ST_SUMPHQ] = phq1
    st[ST_SUMSRS] = srs1
    st[ST_NATT] = 1.0
    st[ST_OPT] = -1.0
    st[ST_SLOT] = 1.0


@nb.njit(**JIT)
def update_attended(st, s, phq, srs, resid):
    st[ST_LASTPHQ] = phq
    st[ST_LASTSRS] = srs
    st[ST_SUMPHQ] += phq
    st[ST_SUMSRS] += srs
    st[ST_NATT] += 1.0
    st[ST_MISSPREV] = st[ST_MISSLAST]
    st[ST_MISSLAST] = 0.0
    st[ST_R] = resid
    st[ST_SLOT] = s


@nb.njit(**JIT)
def update_missed(st, s):
    st[ST_NMISS] += 1.0
    st[ST_MISSLAST] = 1.0
    st[ST_SLOT] = s


# ------------------------------------------------------------------------------------------
# Latent draws (slot 0 counters) shared by the generator and the counterfactuals
# ------------------------------------------------------------------------------------------
@nb.njit(**JIT)
def draw_latents(P, key, diag, gender, ther_eff, clinic_eff):
    """(trajectory, domain bits, b1, b0, eg, a0) for one client."""
    prior = P[P_TRAJ_PRIOR:P_TRAJ_PRIOR + N_TRAJ]
    k = categorical(prior, unif(key, _J_LATENT))
    d = 0
    for j in range(N_DOM):
        if unif(key, _J_LATENT + 1 + j) < P[P_DOM_PREV + j]:
            d |= 1 << j
    b1 = P[P_B1SD] * normal(key, _J_LATENT + 8) + ther_eff + clinic_eff
    b0 = (P[P_B0_MU] + P[P_B0_DIAG + diag] + P[P_B0_FEMALE] * (gender == 0)
          + P[P_B0_MED] * bit(d, D_MED) + P[P_B0_SD] * normal(key, _J_LATENT + 10))
    eg = P[P_EG_MU + diag] + P[P_EG_SD] * normal(key, _J_LATENT + 12)
    a0 = P[P_A0_MU] + P[P_A0_ALL] * bit(d, D_ALL) + P[P_A0_SD] * normal(key, _J_LATENT + 14)
    return k, d, b1, b0, eg, a0


# ------------------------------------------------------------------------------------------
# The generator: one course per client, sampled session by session
# ------------------------------------------------------------------------------------------
@nb.njit(**JIT)
def _simulate_one(P, phq_delta, gad_delta, phq_logg, gad_logg, phq_eta_hat, gad_eta_hat,
                  key, k, d, b1, b0, eg, a0, age, forced,
                  att, phq_o, gad_o, srs_o, props_o, info):
    """Simulate one full course. Writes per-slot arrays and info =
    [end_slot, end_status(1 finished, 2 dropout), option, option_slot, n_life_events]."""
    maxs = int(P[P_MAXS])
    scale = P[P_SRS_SCALE]
    st = np.empty(NST)
    pr = np.empty(N_OPT)
    # intake (slot 1)
    base = 64
    p1 = rasch_sample(b0, phq_delta, phq_logg, unif(key, base + _J_PHQ))
    g1 = rasch_sample(b0 + eg, gad_delta, gad_logg, unif(key, base + _J_GAD))
    srs = 0
    for j in range(4):
        v = srs_item_sample(a0, scale, unif(key, base + _J_SRS + j))
        srs_o[0, j] = v
        srs += v
    att[0] = 1
    phq_o[0] = p1
    gad_o[0] = g1
    init_state(st, p1, srs / 10.0)
    info[:] = 0.0
    info[2] = -1.0
    pd = p_drop(P, d, age, 1, p1, srs / 10.0, st)
    if unif(key, base + _J_END) < pd:
        info[0], info[1] = 1, 2
        return
    for s in range(2, maxs + 1):
        base = s * 64
        e = 1 if unif(key, base + _J_LE) < p_life_event(P, d, s, st) else 0
        info[4] += e
        i = s - 1
        if unif(key, base + _J_MISS) < p_miss(P, d, e, s, st):
            att[i] = 0
            update_missed(st, s)
            pdm = p_drop_missed(P, d, age, s, st)
            u = unif(key, base + _J_END)
            if s == maxs or u < pdm:
                info[0], info[1] = s, (2 if u < pdm else 1)
                return
            continue
        es = eta_struct(P, k, d, b1, b0, s, st)
        eta = (es + P[P_RHO] * st[ST_R] + P[P_LE_ETA] * e
               + P[P_WEEK] * week(P, unif(key, base + _J_WEEK)))
        a = alliance(P, bit(d, D_ALL), s, st)
        srs = 0
        for j in range(4):
            v = srs_item_sample(a, scale, unif(key, base + _J_SRS + j))
            srs_o[i, j] = v
            srs += v
        ph = rasch_sample(eta, phq_delta, phq_logg, unif(key, base + _J_PHQ))
        # GAD-7: the same structural course and life events, its own offset and weeks
        eta_g = (es + eg + P[P_LE_ETA] * e
                 + P[P_WEEK] * week(P, unif(key, base + _J_GAD_WEEK)))
        ga = rasch_sample(eta_g, gad_delta, gad_logg, unif(key, base + _J_GAD))
        att[i] = 1
        phq_o[i] = ph
        gad_o[i] = ga
        srs_pts = srs / 10.0
        pd = p_drop(P, d, age, s, ph, srs_pts, st)
        pf = p_finish(P, s, ph)
        if off_track(P, s, ph, srs_pts, st):
            update_attended(st, s, ph, srs_pts, phq_eta_hat[ph] - es)
            propensities(P, ph, srs_pts, st, d, pr)
            o = categorical(pr, unif(key, base + _J_DECIDE)) if forced < 0 else forced
            st[ST_OPT] = o
            st[ST_OPTSLOT] = s
            info[2], info[3] = o, s
            props_o[:] = pr
        else:
            update_attended(st, s, ph, srs_pts, phq_eta_hat[ph] - es)
        u = unif(key, base + _J_END)
        if u < pd:
            info[0], info[1] = s, 2
            return
        if u < pd + (1.0 - pd) * pf:
            info[0], info[1] = s, 1
            return
    info[0], info[1] = maxs, 1


@nb.njit(**JIT)
def simulate_courses(P, phq_delta, gad_delta, phq_logg, gad_logg, phq_eta_hat, gad_eta_hat,
                     keys, diag, gender, age, ther_eff, clinic_eff, forced):
    """Simulate every client. Returns (latents, att, phq, gad, srs, props, info)."""
    n = keys.shape[0]
    maxs = int(P[P_MAXS])
    att = np.zeros((n, maxs), dtype=np.int8)
    phq = np.full((n, maxs), -1, dtype=np.int16)
    gad = np.full((n, maxs), -1, dtype=np.int16)
    srs = np.full((n, maxs, 4), -1, dtype=np.int16)
    props = np.full((n, N_OPT), np.nan)
    info = np.zeros((n, 5))
    lat_i = np.zeros((n, 2), dtype=np.int64)
    lat_f = np.zeros((n, 4))
    for i in range(n):
        k, d, b1, b0, eg, a0 = draw_latents(P, keys[i], diag[i], gender[i], ther_eff[i],
                                            clinic_eff[i])
        lat_i[i, 0], lat_i[i, 1] = k, d
        lat_f[i, 0], lat_f[i, 1], lat_f[i, 2], lat_f[i, 3] = b1, b0, eg, a0
        _simulate_one(P, phq_delta, gad_delta, phq_logg, gad_logg, phq_eta_hat, gad_eta_hat,
                      keys[i], k, d, b1, b0, eg, a0, age[i], forced[i],
                      att[i], phq[i], gad[i], srs[i], props[i], info[i])
    return lat_i, lat_f, att, phq, gad, srs, props, info
