"""The Bayes oracle: P(failed = 1 | everything a model could see up to session t).

What it conditions on, per client: covariates (age band, gender, diagnosis group), the intake
date (it fixes when the extraction date censors the course), and for every slot up to t whether
it was attended, the PHQ-9 and GAD-7 totals, the four SRS items, and the adaptation decided at
earlier sessions (the decision at session t itself is treated as still to come). Never ids,
clinics, therapists or latent values: therapist and clinic effects are integrated out as part of
the slope random effect.

How (docs/simulator.md has the equations):

1. Exact enumeration of the discrete latents (10 trajectory states x 32 domain profiles) times a
   Gauss-Hermite rule over the slope random effect (`n_slope` nodes). Intake-only latents (PHQ-9
   / GAD-7 severity, alliance level) are integrated by a tensor Gauss-Hermite rule at intake.
2. Each node's weight is prior x the exact likelihood of every observation, slot by slot: the
   binomial Rasch likelihood of the PHQ-9 and GAD-7 totals (the total is sufficient), the exact
   interval likelihood of each one-decimal SRS item, attendance, continuation, with the
   per-slot life event summed out. Nothing is fitted to outcomes.
3. From the weighted nodes, paths are simulated forward with the generator's own equations,
   stratified by node (every node with weight >= 1/M gets its share of paths). Along a path the
   ending is Rao-Blackwellised: at each session the probability of ending there is summed over
   the 28 possible PHQ-9 totals in closed form (failure contribution) and the path continues
   with weight P(continue), conditioned on continuing (survival weighting, Russian roulette
   below weight 0.05).
4. The value is a ratio (failure and "failed is defined": >= 2 scores, course ended before the
   extraction date); its standard error is the stratified delta-method SE. Paths are topped up
   (to the number the current SE says is needed) until SE <= `se_target` (or `max_paths` is reached; the file states the SE of every value).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

import training.simulate.kernels as K
from training.simulate.kernels import (
    D_ALL,
    D_LE,
    D_MED,
    D_MOT,
    JIT,
    NST,
    ST_LASTPHQ,
    ST_LASTSRS,
    ST_NATT,
    ST_OPT,
    ST_OPTSLOT,
    ST_PHQ1,
    ST_R,
)
from training.simulate.params import N_DOM, N_OPT, N_TRAJ, Packed

N_DPROF = 1 << N_DOM
P_MAXS, P_RHO, P_LE_ETA, P_SRS_SCALE = K.P_MAXS, K.P_RHO, K.P_LE_ETA, K.P_SRS_SCALE
P_TRAJ_PRIOR, P_DOM_PREV = K.P_TRAJ_PRIOR, K.P_DOM_PREV
P_B0_MU, P_B0_SD, P_B0_DIAG, P_B0_FEMALE, P_B0_MED = (K.P_B0_MU, K.P_B0_SD, K.P_B0_DIAG,
                                                      K.P_B0_FEMALE, K.P_B0_MED)
P_EG_MU, P_EG_SD, P_A0_MU, P_A0_SD, P_A0_ALL = K.P_EG_MU, K.P_EG_SD, K.P_A0_MU, K.P_A0_SD, K.P_A0_ALL
P_DROP_PROG, P_FIN0, P_FIN_REC, P_FIN_SESS = K.P_DROP_PROG, K.P_FIN0, K.P_FIN_REC, K.P_FIN_SESS
_J_LE, _J_MISS, _J_SRS, _J_PHQ, _J_DECIDE, _J_ROULETTE = (K._J_LE, K._J_MISS, K._J_SRS, K._J_PHQ,
                                                          K._J_DECIDE, K._J_ROULETTE)
ROULETTE_W = 0.05
LIGHT_MIN_PATHS = 4
LIGHT_NEGLIGIBLE = 1e-12  # pooled posterior mass below this is dropped (bias < 1e-12)


def gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w with sum w f(z) ~ E f(Z), Z ~ N(0, 1)."""
    x, w = np.polynomial.hermite.hermgauss(n)
    return x * math.sqrt(2.0), w / math.sqrt(math.pi)


@nb.njit(**JIT)
def _logsumexp2(a, b):
    m = max(a, b)
    if m == -np.inf:
        return -np.inf
    return m + math.log(math.exp(a - m) + math.exp(b - m))


@nb.njit(**JIT)
def _week_mix(P, total, eta, logg, gexp):
    """log P(total | eta) with the good / ordinary / bad week summed out."""
    p = P[K.P_WEEK_P]
    acc = -np.inf
    for wk in range(-1, 2):
        pw = p if wk != 0 else 1.0 - 2.0 * p
        if pw <= 0.0:
            continue
        acc = _logsumexp2(acc, math.log(pw)
                          + K.rasch_logpmf_poly(total, eta + P[K.P_WEEK] * wk, logg, gexp))
    return acc


@nb.njit(**JIT)
def _lognorm(x, mu, sd):
    z = (x - mu) / sd
    return -0.5 * z * z - math.log(sd) - 0.9189385332046727


@nb.njit(**JIT)
def _grid_moments(lo, hi, logf):
    """Mean and SD of the density proportional to exp(logf) on an even grid over [lo, hi]."""
    n = logf.shape[0]
    mx = logf.max()
    tot = 0.0
    m1 = 0.0
    m2 = 0.0
    for g in range(n):
        x = lo + (hi - lo) * g / (n - 1)
        w = math.exp(logf[g] - mx)
        tot += w
        m1 += w * x
        m2 += w * x * x
    m = m1 / tot
    v = max(m2 / tot - m * m, 1e-8)
    return m, math.sqrt(v)


N_GRID = 241


@nb.njit(**JIT)
def intake_nodes(P, phq_delta, gad_delta, phq_logg, gad_logg, srs_cut, phq1, gad1, srs_items,
                 diag, gender, zb, wb, ze, we, z2, w2, b0_out, fb0, eg_out, feg, out_all):
    """Adaptive Gauss-Hermite nodes for the persistent continuous latents at intake.

    The true severity b0: nodes at the posterior mean and SD given the intake PHQ-9 and GAD-7
    (found on a grid), each weighted by prior(b0 | medication bit) x P(PHQ-9 | b0) / the node
    density (importance-weighted quadrature: exact as the nodes grow). For each b0 node, the
    GAD-7 offset eg likewise, weighted by prior(eg) x P(GAD-7 | b0 + eg) / the node density.
    The alliance level is intake-only (the course is anchored on the observed SRS) and is
    integrated out as before: out_all[bit] = log P(intake SRS items | alliance bit).
    """
    mu = P[P_B0_MU] + P[P_B0_DIAG + diag] + P[P_B0_FEMALE] * (gender == 0)
    sd = P[P_B0_SD]
    shift = P[P_B0_MED]
    pmed = P[P_DOM_PREV + D_MED]
    emu = P[P_EG_MU + diag]
    esd = P[P_EG_SD]
    # b0 posterior on a grid (medication bit and eg integrated)
    lo = mu + min(0.0, shift) - 6.0 * sd
    hi = mu + max(0.0, shift) + 6.0 * sd
    logf = np.empty(N_GRID)
    for g in range(N_GRID):
        b0 = lo + (hi - lo) * g / (N_GRID - 1)
        pr = _logsumexp2(math.log(max(1.0 - pmed, 1e-300)) + _lognorm(b0, mu, sd),
                         math.log(max(pmed, 1e-300)) + _lognorm(b0, mu + shift, sd))
        acc = -np.inf
        for j in range(z2.shape[0]):
            acc = _logsumexp2(acc, math.log(w2[j]) + K.rasch_logpmf(
                gad1, b0 + emu + esd * z2[j], gad_delta, gad_logg))
        logf[g] = pr + K.rasch_logpmf(phq1, b0, phq_delta, phq_logg) + acc
    m, v = _grid_moments(lo, hi, logf)
    elo, ehi = emu - 6.0 * esd, emu + 6.0 * esd
    logf_e = np.empty(N_GRID)
    for jb in range(zb.shape[0]):
        b0 = m + v * zb[jb]
        b0_out[jb] = b0
        base = math.log(wb[jb]) - _lognorm(b0, m, v) + K.rasch_logpmf(phq1, b0, phq_delta,
                                                                         phq_logg)
        fb0[jb, 0] = base + _lognorm(b0, mu, sd)
        fb0[jb, 1] = base + _lognorm(b0, mu + shift, sd)
        for g in range(N_GRID):
            eg = elo + (ehi - elo) * g / (N_GRID - 1)
            logf_e[g] = _lognorm(eg, emu, esd) + K.rasch_logpmf(gad1, b0 + eg, gad_delta,
                                                                gad_logg)
        me, ve = _grid_moments(elo, ehi, logf_e)
        for le in range(ze.shape[0]):
            eg = me + ve * ze[le]
            eg_out[jb, le] = eg
            feg[jb, le] = (math.log(we[le]) - _lognorm(eg, me, ve) + _lognorm(eg, emu, esd)
                           + K.rasch_logpmf(gad1, b0 + eg, gad_delta, gad_logg))
    scale = P[P_SRS_SCALE]
    for da in range(2):
        acc = -np.inf
        for i in range(z2.shape[0]):
            a0 = P[P_A0_MU] + P[P_A0_ALL] * da + P[P_A0_SD] * z2[i]
            ll = 0.0
            for j in range(4):
                ll += K.srs_item_logpmf(srs_items[j], a0, scale, srs_cut)
            acc = _logsumexp2(acc, math.log(w2[i]) + ll)
        out_all[da] = acc


@nb.njit(**JIT)
def forward_path(P, gexp, phq_eta_hat, k, d, b1, b0, age, pst, t, t_cut, pkey, probs, pr):
    """One forward path from the state after session t. Returns (failure mass, defined mass)."""
    maxs = int(P[P_MAXS])
    scale = P[P_SRS_SCALE]
    phq1 = pst[ST_PHQ1]
    a = 0.0
    b = 0.0
    w = 1.0
    # the therapist's decision at session t, then the ending after t (PHQ-9 at t is known)
    phq_t, srs_t = pst[ST_LASTPHQ], pst[ST_LASTSRS]
    if K.off_track(P, t, phq_t, srs_t, pst):
        K.propensities(P, phq_t, srs_t, pst, d, pr)
        pst[ST_OPT] = K.categorical(pr, K.unif(pkey, t * 64 + _J_DECIDE))
        pst[ST_OPTSLOT] = t
    pd = K.p_drop(P, d, age, t, phq_t, srs_t, pst)
    pf = K.p_finish(P, t, phq_t)
    pe = pd + (1.0 - pd) * pf
    if pst[ST_NATT] >= 2:
        b += pe
        if phq_t > phq1 - 6:
            a += pe
    w = 1.0 - pe
    if t >= t_cut:
        return a, b
    for s in range(t + 1, maxs + 1):
        if w <= 0.0:
            break
        base = s * 64
        e = 1 if K.unif(pkey, base + _J_LE) < K.p_life_event(P, d, s, pst) else 0
        if K.unif(pkey, base + _J_MISS) < K.p_miss(P, d, e, s, pst):
            K.update_missed(pst, s)
            pe = 1.0 if s == maxs else K.p_drop_missed(P, d, age, s, pst)
            if pst[ST_NATT] >= 2:
                b += w * pe
                if pst[ST_LASTPHQ] > phq1 - 6:
                    a += w * pe
            w *= 1.0 - pe
        else:
            es = K.eta_struct(P, k, d, b1, b0, s, pst)
            eta = (es + P[P_RHO] * pst[ST_R] + P[P_LE_ETA] * e
                   + P[K.P_WEEK] * K.week(P, K.unif(pkey, base + K._J_WEEK)))
            al = K.alliance(P, (d >> D_ALL) & 1, s, pst)
            srs = 0
            for j in range(4):
                srs += K.srs_item_sample(al, scale, K.unif(pkey, base + _J_SRS + j))
            srs_pts = srs / 10.0
            K.rasch_pmf_fast(eta, gexp, probs)
            # ending after s, for every possible PHQ-9 total S (closed form)
            x0 = K.drop_logit(P, d, age, s, phq1, srs_pts, pst)  # logit at S = PHQ1
            c = P[P_DROP_PROG] / 6.0  # logit changes by -c per point above PHQ1
            if s >= maxs:
                pf_hi, pf_lo = 1.0, 1.0
            else:
                xf = P[P_FIN0] + P[P_FIN_SESS] * (s - 2)
                pf_hi, pf_lo = K.sigmoid(xf), K.sigmoid(xf + P[P_FIN_REC])
            fa = 0.0
            fb = 0.0
            cont = 0.0
            # sigmoid(x0 - c (S - phq1)) by recurrence: exp(-x) = e0 * exp(c)^S
            e0 = math.exp(-(x0 + c * phq1))
            ec = math.exp(c)
            emx = e0
            for S in range(probs.shape[0]):
                pS = probs[S]
                if pS < 1e-300:
                    probs[S] = 0.0
                    emx *= ec
                    continue
                pd = 1.0 / (1.0 + emx) if emx < 1e300 else 0.0
                emx *= ec
                pf = pf_lo if S < 10 else pf_hi
                pe = pd + (1.0 - pd) * pf
                fb += pS * pe
                if S > phq1 - 6:
                    fa += pS * pe
                probs[S] = pS * (1.0 - pe)
                cont += probs[S]
            a += w * fa
            b += w * fb
            if cont <= 0.0:
                w = 0.0
                break
            u = K.unif(pkey, base + _J_PHQ) * cont
            acc = 0.0
            S_pick = probs.shape[0] - 1
            for S in range(probs.shape[0]):
                acc += probs[S]
                if u < acc:
                    S_pick = S
                    break
            w *= cont
            K.update_attended(pst, s, S_pick, srs_pts, phq_eta_hat[S_pick] - es)
            if K.off_track(P, s, S_pick, srs_pts, pst):
                K.propensities(P, S_pick, srs_pts, pst, d, pr)
                pst[ST_OPT] = K.categorical(pr, K.unif(pkey, base + _J_DECIDE))
                pst[ST_OPTSLOT] = s
        if s >= t_cut:
            break
        if 0.0 < w < ROULETTE_W:
            if K.unif(pkey, base + _J_ROULETTE) < 0.5:
                break
            w *= 2.0
    return a, b


@nb.njit(**JIT)
def _estimate(strata_w, cnt, sa, sb, saa, sbb, sab, n_strata):
    num = 0.0
    den = 0.0
    for h in range(n_strata):
        if cnt[h] > 0:
            num += strata_w[h] * sa[h] / cnt[h]
            den += strata_w[h] * sb[h] / cnt[h]
    if den <= 0.0:
        return np.nan, np.nan
    r = num / den
    # pooled within-stratum variance of z = a - r b, for strata with a single path
    pool_num = 0.0
    pool_df = 0.0
    for h in range(n_strata):
        m = cnt[h]
        if m >= 2:
            vz = (saa[h] - 2 * r * sab[h] + r * r * sbb[h]
                  - (sa[h] - r * sb[h]) ** 2 / m) / (m - 1)
            pool_num += max(vz, 0.0) * (m - 1)
            pool_df += m - 1
    pooled = pool_num / pool_df if pool_df > 0 else 0.25
    var = 0.0
    for h in range(n_strata):
        m = cnt[h]
        if m == 0:
            continue
        if m >= 2:
            vz = max((saa[h] - 2 * r * sab[h] + r * r * sbb[h]
                      - (sa[h] - r * sb[h]) ** 2 / m) / (m - 1), 0.0)
        else:
            vz = pooled
        var += strata_w[h] ** 2 * vz / m
    return r, math.sqrt(var) / den


@nb.njit(**JIT)
def _predict(P, gexp, phq_eta_hat, node_k, node_d, node_b1, node_b0, w, r_node, st, age, t,
             t_cut, ckey, se_target, m0, m_max):
    """Stratified forward simulation from the weighted nodes at session t.

    Strata: every node with weight >= 1/m0 on its own; the remaining ("light") nodes pooled by
    trajectory state, each pool sampled systematically with >= LIGHT_MIN_PATHS paths.
    """
    n_nodes = w.shape[0]
    heavy = np.empty(n_nodes, dtype=np.int64)
    n_heavy = 0
    light_w = np.zeros(N_TRAJ)
    for n in range(n_nodes):
        if w[n] >= 1.0 / m0:
            heavy[n_heavy] = n
            n_heavy += 1
        else:
            light_w[node_k[n]] += w[n]
    n_strata = n_heavy + N_TRAJ
    # light nodes listed by trajectory state, so a systematic draw walks one list once
    light_off = np.zeros(N_TRAJ + 1, dtype=np.int64)
    for n in range(n_nodes):
        if 0.0 < w[n] < 1.0 / m0:
            light_off[node_k[n] + 1] += 1
    for k in range(N_TRAJ):
        light_off[k + 1] += light_off[k]
    light_list = np.empty(light_off[N_TRAJ], dtype=np.int64)
    fill = light_off[:N_TRAJ].copy()
    for n in range(n_nodes):
        if 0.0 < w[n] < 1.0 / m0:
            light_list[fill[node_k[n]]] = n
            fill[node_k[n]] += 1
    strata_w = np.zeros(n_strata)
    for h in range(n_heavy):
        strata_w[h] = w[heavy[h]]
    for k in range(N_TRAJ):
        strata_w[n_heavy + k] = light_w[k]
    cnt = np.zeros(n_strata)
    sa = np.zeros(n_strata)
    sb = np.zeros(n_strata)
    saa = np.zeros(n_strata)
    sbb = np.zeros(n_strata)
    sab = np.zeros(n_strata)
    pst = np.empty(NST)
    probs = np.empty(gexp.shape[0])
    pr = np.empty(N_OPT)
    used = 0
    m_round = m0
    est, se = np.nan, np.nan
    rnd = 0
    while True:
        for h in range(n_strata):
            m_h = int(round(m_round * strata_w[h]))
            u0 = 0.0
            kk = -1
            if h < n_heavy:
                m_h = max(m_h, 1)
            else:  # a light pool: >= LIGHT_MIN_PATHS paths, so that its spread counts
                kk = h - n_heavy
                if strata_w[h] <= LIGHT_NEGLIGIBLE:
                    continue
                m_h = max(m_h, LIGHT_MIN_PATHS)
                u0 = K.unif(ckey, (t << 24) + (rnd << 8) + kk)
            ptr = light_off[kk] if kk >= 0 else 0
            acc = w[light_list[ptr]] if kk >= 0 and ptr < light_off[kk + 1] else 0.0
            for j in range(m_h):
                if h < n_heavy:
                    n = heavy[h]
                else:  # systematic draw among the light nodes of trajectory state kk
                    target = (u0 + j) / m_h * strata_w[h]
                    while acc <= target and ptr < light_off[kk + 1] - 1:
                        ptr += 1
                        acc += w[light_list[ptr]]
                    n = light_list[ptr]
                pst[:] = st
                pst[ST_R] = r_node[n]
                pkey = K.subkey(ckey, (np.int64(t) << 40) + used)
                used += 1
                a, b = forward_path(P, gexp, phq_eta_hat, node_k[n], node_d[n], node_b1[n],
                                    node_b0[n], age, pst, t, t_cut, pkey, probs, pr)
                cnt[h] += 1
                sa[h] += a
                sb[h] += b
                saa[h] += a * a
                sbb[h] += b * b
                sab[h] += a * b
        est, se = _estimate(strata_w, cnt, sa, sb, saa, sbb, sab, n_strata)
        if not (se > se_target) or used >= m_max:
            break
        # top up to the number of paths the current SE says is needed (+10%), at least +25%
        need = used * (se / se_target) ** 2 * 1.1
        m_round = int(min(max(need - used, 0.25 * used), m_max - used)) + 1
        rnd += 1
    return est, se, used


@nb.njit(parallel=True, **{k: v for k, v in JIT.items() if k != "nogil"})
def oracle_kernel(P, phq_delta, gad_delta, phq_logg, gad_logg, gexp, gad_gexp, phq_eta_hat,
                  srs_cut, keys, age, gender, diag, t_cut, att, phq, gad, srs, opt, opt_slot,
                  points, z_slope, w_slope, zb, wb, ze, we, z2, w2, se_target, m0, m_max):
    n_cl = keys.shape[0]
    n_pts = points.shape[1]
    out_v = np.full((n_cl, n_pts), np.nan)
    out_se = np.full((n_cl, n_pts), np.nan)
    out_m = np.zeros((n_cl, n_pts), dtype=np.int64)
    q_n = z_slope.shape[0]
    q_b = zb.shape[0]
    q_e = ze.shape[0]
    n_nodes = N_TRAJ * q_n * q_b * N_DPROF
    confounded = P[K.P_CONF] != 0.0
    for i in nb.prange(n_cl):
        t_stop = 0
        for j in range(n_pts):
            if points[i, j]:
                t_stop = j + 1
        if t_stop == 0 or phq[i, 0] < 10:
            continue
        # ---- nodes and prior: node n = ((k * q_n + q) * q_b + jb) * 32 + d ----
        node_k = np.empty(n_nodes, dtype=np.int64)
        node_d = np.empty(n_nodes, dtype=np.int64)
        node_b1 = np.empty(n_nodes)
        node_b0 = np.empty(n_nodes)
        node_jb = np.empty(n_nodes, dtype=np.int64)
        W = np.empty((n_nodes, q_e))  # log weight per node and GAD-7 offset node
        r_node = np.zeros(n_nodes)
        b0v = np.empty(q_b)
        fb0 = np.empty((q_b, 2))
        egv = np.empty((q_b, q_e))
        feg = np.empty((q_b, q_e))
        f_all = np.empty(2)
        srs1 = srs[i, 0]
        intake_nodes(P, phq_delta, gad_delta, phq_logg, gad_logg, srs_cut, phq[i, 0], gad[i, 0],
                     srs1, diag[i], gender[i], zb, wb, ze, we, z2, w2, b0v, fb0, egv, feg, f_all)
        for k in range(N_TRAJ):
            pk = P[P_TRAJ_PRIOR + k]
            for q in range(q_n):
                for jb in range(q_b):
                    for d in range(N_DPROF):
                        n = ((k * q_n + q) * q_b + jb) * N_DPROF + d
                        node_k[n], node_d[n], node_b1[n] = k, d, z_slope[q]
                        node_b0[n], node_jb[n] = b0v[jb], jb
                        lw = math.log(pk) + math.log(w_slope[q]) if pk > 0 else -np.inf
                        for jd in range(N_DOM):
                            pj = P[P_DOM_PREV + jd]
                            pj = pj if (d >> jd) & 1 else 1.0 - pj
                            lw += math.log(pj) if pj > 0 else -np.inf
                        if lw > -np.inf:
                            lw += fb0[jb, (d >> D_MED) & 1] + f_all[(d >> D_ALL) & 1]
                        for le in range(q_e):
                            W[n, le] = lw + feg[jb, le] if lw > -np.inf else -np.inf
        st = np.empty(NST)
        s1 = 0
        for j in range(4):
            s1 += srs1[j]
        K.init_state(st, phq[i, 0], s1 / 10.0)
        wts = np.empty(n_nodes)
        # per-slot cache, shared by nodes that differ only in domain bits the slot's symptom
        # level does not depend on (motivation, life events; unless that adaptation is active)
        stamp = np.zeros(n_nodes, dtype=np.int64)
        c_es = np.empty(n_nodes)
        c_ph = np.empty((n_nodes, 2))
        c_ga = np.empty((n_nodes, 2, q_e))
        ckey = keys[i]
        pr = np.empty(N_OPT)
        for s in range(1, t_stop + 1):
            if s >= 2:
                sp = s - 1  # index of slot s; sp - 1 is slot s - 1
                # (a) the client continued after slot s - 1
                cont_ll = np.empty(2)
                for mot in range(2):
                    dd = mot << D_MOT
                    if att[i, sp - 1] == 1:
                        ph, sr = st[ST_LASTPHQ], st[ST_LASTSRS]
                        pd = K.p_drop(P, dd, age[i], s - 1, ph, sr, st)
                        pf = K.p_finish(P, s - 1, ph)
                        cont_ll[mot] = math.log(max((1.0 - pd) * (1.0 - pf), 1e-300))
                    else:
                        cont_ll[mot] = math.log(max(1.0 - K.p_drop_missed(P, dd, age[i], s - 1,
                                                                          st), 1e-300))
                # (b) slot s: life event summed out, attendance, scores
                pm = np.empty((2, 2))
                for mot in range(2):
                    for e in range(2):
                        pm[mot, e] = K.p_miss(P, mot << D_MOT, e, s, st)
                hle = np.empty(2)
                for le in range(2):
                    hle[le] = K.p_life_event(P, le << D_LE, s, st)
                attended = att[i, sp] == 1
                srs_ll = np.zeros(2)
                ph_s = phq[i, sp]
                ga_s = gad[i, sp]
                srs_tot = 0
                if attended:
                    for da in range(2):
                        al = K.alliance(P, da, s, st)
                        for j in range(4):
                            srs_ll[da] += K.srs_item_logpmf(srs[i, sp, j], al, P[P_SRS_SCALE],
                                                            srs_cut)
                    for j in range(4):
                        srs_tot += srs[i, sp, j]
                ramp = K.adapt_ramp(P, st, s)
                o = int(st[ST_OPT])
                free = (1 << D_MOT) | (1 << D_LE)
                if ramp > 0 and o == 2:
                    free &= ~(1 << D_MOT)
                elif ramp > 0 and o == 4:
                    free &= ~(1 << D_LE)
                for n in range(n_nodes):
                    if W[n, 0] == -np.inf:
                        continue
                    d = node_d[n]
                    mot = (d >> D_MOT) & 1
                    le = (d >> D_LE) & 1
                    add = cont_ll[mot]
                    h = hle[le]
                    if attended:
                        key = n & ~free
                        if stamp[key] != s:
                            es = K.eta_struct(P, node_k[n], d & ~free, node_b1[n], node_b0[n], s,
                                              st)
                            eta0 = es + P[P_RHO] * r_node[n]
                            c_es[key] = es
                            for e in range(2):
                                c_ph[key, e] = _week_mix(P, ph_s, eta0 + P[P_LE_ETA] * e,
                                                         phq_logg, gexp)
                                for g in range(q_e):
                                    c_ga[key, e, g] = _week_mix(
                                        P, ga_s, es + egv[node_jb[n], g] + P[P_LE_ETA] * e,
                                        gad_logg, gad_gexp)
                            stamp[key] = s
                        es = c_es[key]
                        a0 = math.log(max((1.0 - h) * (1.0 - pm[mot, 0]), 1e-300)) + c_ph[key, 0]
                        a1 = math.log(max(h * (1.0 - pm[mot, 1]), 1e-300)) + c_ph[key, 1]
                        add += srs_ll[(d >> D_ALL) & 1]
                        for g in range(q_e):
                            W[n, g] += add + _logsumexp2(a0 + c_ga[key, 0, g],
                                                         a1 + c_ga[key, 1, g])
                        r_node[n] = phq_eta_hat[ph_s] - es
                    else:
                        add += math.log(max((1.0 - h) * pm[mot, 0] + h * pm[mot, 1], 1e-300))
                        for g in range(q_e):
                            W[n, g] += add
                if attended:
                    K.update_attended(st, s, ph_s, srs_tot / 10.0, 0.0)
                else:
                    K.update_missed(st, s)
            # (c) prediction at s
            if points[i, s - 1]:
                mx = -np.inf
                for n in range(n_nodes):
                    v = -np.inf
                    for g in range(q_e):
                        v = _logsumexp2(v, W[n, g])
                    wts[n] = v
                    mx = max(mx, v)
                tot = 0.0
                for n in range(n_nodes):
                    wts[n] = math.exp(wts[n] - mx) if wts[n] > -np.inf else 0.0
                    tot += wts[n]
                for n in range(n_nodes):
                    wts[n] /= tot
                est, se, used = _predict(P, gexp, phq_eta_hat, node_k, node_d, node_b1, node_b0,
                                         wts, r_node, st, age[i], s, t_cut[i], ckey, se_target,
                                         m0, m_max)
                out_v[i, s - 1] = est
                out_se[i, s - 1] = se
                out_m[i, s - 1] = used
            # (d) the decision observed at s (applies from the next slot); when therapists
            # also act on unrecorded domains, the choice itself is evidence about them
            if opt_slot[i] == s and opt[i] >= 0:
                if confounded:
                    lp = np.empty(N_DPROF)
                    for d in range(N_DPROF):
                        K.propensities(P, st[ST_LASTPHQ], st[ST_LASTSRS], st, d, pr)
                        lp[d] = math.log(pr[opt[i]])
                    for n in range(n_nodes):
                        if W[n, 0] > -np.inf:
                            for g in range(q_e):
                                W[n, g] += lp[node_d[n]]
                st[ST_OPT] = opt[i]
                st[ST_OPTSLOT] = s
    return out_v, out_se, out_m


def oracle_arrays(pk: Packed, slope_sd: float, keys, age, gender, diag, t_cut, att, phq, gad,
                  srs, opt, opt_slot, points, n_slope: int = 10, n_intake: int = 24,
                  n_severity: int = 6, n_gad: int = 4, se_target: float = 0.005,
                  m0: int = 512, m_max: int = 64000):
    """Run the oracle on observed arrays (slots in columns). Returns (value, se, paths).

    `slope_sd` is the SD of the slope random effect one client sees (client, therapist and
    clinic effects together: the oracle does not see therapist or clinic ids). `n_severity`
    and `n_gad` are the adaptive Gauss-Hermite nodes of the true intake severity and of the
    GAD-7 offset (docs/simulator.md measures their accuracy against more nodes).
    """
    z_s, w_s = gauss_hermite(n_slope if slope_sd > 0 else 1)
    z2, w2 = gauss_hermite(n_intake)
    zb, wb = gauss_hermite(n_severity)
    ze, we = gauss_hermite(n_gad)
    return oracle_kernel(
        pk.vec, pk.phq_delta, pk.gad_delta, pk.phq_logg, pk.gad_logg, np.exp(pk.phq_logg),
        np.exp(pk.gad_logg), pk.phq_eta_hat, pk.srs_cut, keys, age.astype(np.int64),
        gender.astype(np.int64), diag.astype(np.int64), t_cut.astype(np.int64),
        att.astype(np.int64), phq.astype(np.int64), gad.astype(np.int64), srs.astype(np.int64),
        opt.astype(np.int64), opt_slot.astype(np.int64), points, z_s * slope_sd, w_s, zb, wb,
        ze, we, z2, w2, se_target, m0, m_max)


def oracle_for_cohort(pk: Packed, lay, obs, subset: np.ndarray, seed: int,
                      sessions=(1, 2, 3, 4, 5, 6), se_target: float = 0.005,
                      max_paths: int = 64000, progress=None, n_slope: int = 10,
                      slope_sd: float | None = None, min_paths: int = 512,
                      n_severity: int = 6, n_gad: int = 4):
    """Oracle values for the clients in `subset` at `sessions` (only where PHQ-9 was scored)."""
    if slope_sd is None:
        from training.simulate.params import DEFAULT

        slope_sd = DEFAULT.b1_sd
    ncol = min(6, obs.att.shape[1])
    att = obs.att[subset, :ncol].astype(np.int64)
    points = np.zeros((len(subset), ncol), dtype=np.bool_)
    for t in sessions:
        if t <= ncol:
            points[:, t - 1] = att[:, t - 1] == 1
    rng = np.random.default_rng([seed, 3])
    keys = rng.integers(0, np.iinfo(np.uint64).max, size=len(subset), dtype=np.uint64,
                        endpoint=True)
    chunks = np.array_split(np.arange(len(subset)), max(1, len(subset) // 250))
    val = np.full((len(subset), 6), np.nan)
    se = np.full((len(subset), 6), np.nan)
    used = np.zeros((len(subset), 6), dtype=np.int64)
    for ch in chunks:
        ix = subset[ch]
        v, s, m = oracle_arrays(
            pk, slope_sd, keys[ch], lay.age[ix], lay.gender[ix], lay.diag[ix], lay.t_cut[ix],
            att[ch], obs.phq[ix, :ncol], obs.gad[ix, :ncol], obs.srs[ix, :ncol], obs.option[ix],
            obs.option_slot[ix], points[ch], n_slope=n_slope, n_severity=n_severity,
            n_gad=n_gad, se_target=se_target, m0=min_paths, m_max=max_paths)
        val[ch, :ncol], se[ch, :ncol], used[ch, :ncol] = v, s, m
        if progress is not None:
            progress(len(ch))
    ok = np.isfinite(se)
    info = {"max_se": float(se[ok].max()) if ok.any() else float("nan"),
            "mean_paths": float(used[ok].mean()) if ok.any() else float("nan"),
            "se_target": se_target, "slope_nodes": n_slope,
            "severity_nodes": n_severity, "gad_nodes": n_gad}
    return val, se, info
