"""Cohort simulator and Bayes oracle.

Published figures are named in each test's docstring; tolerances are the simulator's
target ranges. Timing lives in benchmarks/bench_simulate.py, never here.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from features.change import nhs_summary
from features.contract import load_cohort
from features.instruments import ADAPTATIONS
from features.targets import targets
from training.simulate import (
    counterfactual_outcomes,
    simulate_cohort,
    summary,
    tiny_two_class,
)
from training.simulate import kernels as K
from training.simulate.generative import option_effects
from training.simulate.oracle import oracle_arrays, oracle_for_cohort
from training.simulate.params import DEFAULT, OPTIONS, TRAJ_NAMES
from training.simulate.summary import cross_lagged


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(20_000, seed=101, oracle_clients=0)


@pytest.fixture(scope="module")
def small_with_oracle():
    return simulate_cohort(600, seed=7, oracle_clients=60)


# ------------------------------------------------------------------------------------------
# Contract, truth, determinism
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_written_cohort_passes_the_contract(small_with_oracle, tmp_path, fmt):
    small_with_oracle.write(tmp_path, fmt)
    loaded = load_cohort(tmp_path)
    assert loaded.n_clients == 600
    assert set(loaded.clients["end_status"]) <= {"finished", "dropout", "ongoing"}
    assert set(loaded.adaptations["adaptation"]) <= set(ADAPTATIONS)
    assert (tmp_path / "truth.csv").exists()


def test_clients_file_holds_no_latent_values(small_with_oracle):
    cols = set(small_with_oracle.clients.columns)
    assert cols == {"client_id", "end_status", "age_band", "gender", "diagnosis_group",
                    "intake_date"}


def test_missed_sessions_leave_gaps_and_items_are_integers(cohort):
    s = cohort.sessions
    phq = s[s["instrument"] == "PHQ-9"]
    gaps = phq.groupby("client_id")["session"].agg(lambda x: (np.diff(x) > 1).any())
    assert gaps.mean() > 0.05  # some courses skip session numbers
    items = phq[[f"item_{j}" for j in range(1, 10)]].to_numpy()
    assert np.array_equal(items, np.round(items)) and items.min() >= 0 and items.max() <= 3
    # PHQ-9 item 9 (risk item) is the least endorsed item, as in clinical samples
    assert items.mean(axis=0).argmin() == 8


def test_truth_matches_the_shared_target_definitions(cohort):
    t = cohort.truth.set_index("client_id")
    ref = targets(cohort.sessions, cohort.clients)
    pd.testing.assert_series_equal(t["failed"], ref["failed"], check_names=False)
    pd.testing.assert_series_equal(t["dropped_out"], ref["dropped_out"], check_names=False)
    assert set(t["trajectory_class"]) == set(TRAJ_NAMES)
    assert set(t["best_adaptation"]) <= set(ADAPTATIONS) | {"any"}


def test_propensities_are_known_and_at_least_005(cohort):
    """Every adaptation has probability >= 0.05 for every eligible (off-track) client."""
    p = cohort.truth["propensities"].dropna()
    p = p[p != ""]
    assert len(p) > 1000
    parsed = p.str.split(";").map(lambda kv: dict(x.split(":") for x in kv))
    vals = np.array([[float(d[o]) for o in OPTIONS] for d in parsed.head(2000)])
    assert vals.min() >= 0.05 - 1e-9
    np.testing.assert_allclose(vals.sum(axis=1), 1.0, atol=1e-5)


def test_vectorised_option_effects_equal_the_kernel():
    pk = DEFAULT.pack()
    traj = np.repeat(np.arange(10), 32)
    bits = np.tile(np.arange(32), 10)
    eff = option_effects(pk, traj, bits)
    ref = np.array([[K.option_effect(pk.vec, int(k), int(d), o) for o in range(1, 7)]
                    for k, d in zip(traj, bits, strict=True)])
    np.testing.assert_allclose(eff, ref, atol=1e-15)


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_gives_byte_identical_files(tmp_path, fmt):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate_cohort(400, seed=3, oracle_clients=25).write(a, fmt)
    simulate_cohort(400, seed=3, oracle_clients=25).write(b, fmt)
    simulate_cohort(400, seed=4, oracle_clients=25).write(c, fmt)
    assert _digest(a) == _digest(b)
    assert _digest(a)["truth.csv"] != _digest(c)["truth.csv"]
    assert _digest(a)[f"sessions.{fmt}"] != _digest(c)[f"sessions.{fmt}"]


# ------------------------------------------------------------------------------------------
# Published figures
# ------------------------------------------------------------------------------------------
def test_base_rates_land_in_the_published_ranges(cohort):
    """Dropout 20-35% (Swift & Greenberg 2012; ~30% outpatient CBT); NHS Talking Therapies
    reliable improvement 60-75%, reliable recovery 45-55%; deterioration 5-10% (domain.md)."""
    tg = targets(cohort.sessions, cohort.clients)
    assert 0.20 <= tg["dropped_out"].mean() <= 0.35
    nhs = nhs_summary(cohort.sessions)
    assert 0.60 <= nhs["reliable_improvement"] <= 0.75
    assert 0.45 <= nhs["reliable_recovery"] <= 0.55
    assert 0.05 <= nhs["reliable_deterioration"] <= 0.10
    rows = {r.figure: r for r in summary(cohort.sessions, cohort.clients)}
    assert all(r.in_range for r in rows.values() if r.tuned and r.in_range is not None)


def test_cross_lagged_coefficients_have_the_published_signs(cohort):
    """Flückiger et al. 2020: alliance_t -> symptoms_t+1 B = -0.065 and symptoms_t ->
    alliance_t+1 B = -0.148 (standardised, within-person). Not tuned: re-estimated here."""
    cl = cross_lagged(cohort.sessions)
    assert cl["alliance_to_symptom"] < 0
    assert cl["symptom_to_alliance"] < 0
    assert cl["pairs"] > 10_000


# ------------------------------------------------------------------------------------------
# Oracle
# ------------------------------------------------------------------------------------------
def _brute_pmf(delta):
    """P(total | eta) by enumerating every item answer (independent of the kernels' tables)."""
    delta = np.asarray(delta)
    combos = np.array(list(itertools.product(range(4), repeat=len(delta))))
    tot = combos.sum(axis=1)
    logc = np.log([math.comb(3, k) for k in range(4)])[combos].sum(axis=1)

    def pmf(eta):
        lp = logc + (combos * (eta + delta)).sum(axis=1) - 3 * np.log1p(np.exp(eta + delta)).sum()
        out = np.zeros(3 * len(delta) + 1)
        np.add.at(out, tot, np.exp(lp))
        return out

    return pmf


def _eta_for_mean(delta, s):
    top = 3 * len(delta)
    target = min(max(s, 0.5), top - 0.5)
    return brentq(lambda e: 3 * (1 / (1 + np.exp(-(e + np.asarray(delta))))).sum() - target,
                  -15, 15, xtol=1e-14)


def _pmf_table(delta):
    """P(total | eta) for an array of eta: the generating polynomial of the item answers by
    convolution (checked against brute-force enumeration), independent of the kernels."""
    delta = np.asarray(delta)
    poly = np.array([1.0])
    for d in delta:
        poly = np.convolve(poly, [math.comb(3, k) * math.exp(k * d) for k in range(4)])
    brute = _brute_pmf(delta)
    tot = np.arange(len(poly))

    def pmf(eta):
        eta = np.atleast_1d(np.asarray(eta, float))
        lp = (np.log(poly)[None, :] + tot[None, :] * eta[:, None]
              - 3 * np.log1p(np.exp(eta[:, None] + delta[None, :])).sum(axis=1)[:, None])
        return np.exp(lp)

    for x in (-1.3, 0.2, 1.7):
        assert np.allclose(pmf(x)[0], brute(x), atol=1e-13)
    return pmf


def test_oracle_matches_a_two_class_case_worked_by_hand():
    """Two classes (60% early responders, 40% non-responders), course ends at session 3.

    By hand: P(fail | data to s) = sum_c int P(c, b0 | data) P(PHQ_3 > PHQ_1 - 6 | c, b0) db0,
    with P(c, b0 | data) proportional to prior(c) N(b0) x the PHQ-9 likelihood of every score
    so far x int N(eg) prod_t P(GAD_t | b0 - beta_c log t + eg) deg (intake, SRS and attendance
    do not depend on the latents). The true severity b0 and the GAD-7 offset eg are integrated
    on fine grids; the oracle's adaptive quadrature (here with many nodes, and so many paths
    that almost every node is its own stratum: the pooled light nodes are sampled, about 1e-6
    of noise) must agree.
    """
    p = tiny_two_class()
    coh = simulate_cohort(60, seed=5, oracle_clients=0, params=p, censor=False)
    v, _, _ = oracle_for_cohort(p.pack(), coh.layout, coh.observed, np.arange(60), 5, (1, 2),
                                slope_sd=0.0, n_severity=24, n_gad=20, min_paths=100_000,
                                max_paths=400_000)
    fp, fg = _pmf_table(p.phq_delta), _pmf_table(p.gad_delta)
    obs, lay = coh.observed, coh.layout
    beta = {"E": p.traj_beta[0], "N": p.traj_beta[2]}
    prior = {"E": 0.6, "N": 0.4}
    checked = 0
    for i in range(60):
        phq, gad = obs.phq[i], obs.gad[i]
        if phq[0] < 10:
            assert np.isnan(v[i, 0])
            continue
        mu = p.b0_mu + p.b0_diag[lay.diag[i]] + p.b0_female * (lay.gender[i] == 0)
        emu = p.eg_mu[lay.diag[i]]
        b0 = np.linspace(mu - 7 * p.b0_sd, mu + 7 * p.b0_sd, 701)
        eg = np.linspace(emu - 7 * p.eg_sd, emu + 7 * p.eg_sd, 401)
        pb = np.exp(-0.5 * ((b0 - mu) / p.b0_sd) ** 2)
        pe = np.exp(-0.5 * ((eg - emu) / p.eg_sd) ** 2)
        l_phq1 = fp(b0)[:, phq[0]]
        g1 = fg((b0[:, None] + eg[None, :]).ravel())[:, gad[0]].reshape(len(b0), len(eg))
        post1, post2, fail = {}, {}, {}
        for c, b in beta.items():
            fail[c] = fp(b0 - b * math.log(3))[:, np.arange(28) > phq[0] - 6].sum(axis=1)
            post1[c] = prior[c] * pb * l_phq1 * (g1 * pe).sum(axis=1)
            l_phq2 = fp(b0 - b * math.log(2))[:, phq[1]]
            g2 = fg((b0[:, None] - b * math.log(2) + eg[None, :]).ravel())[:, gad[1]]
            post2[c] = prior[c] * pb * l_phq1 * l_phq2 * (g1 * g2.reshape(g1.shape) * pe).sum(
                axis=1)
        for post, col in ((post1, 0), (post2, 1)):
            z = sum(post[c].sum() for c in beta)
            by_hand = sum((post[c] * fail[c]).sum() for c in beta) / z
            assert v[i, col] == pytest.approx(by_hand, abs=1e-5)
        checked += 1
    assert checked > 25


def test_oracle_values_are_probabilities_with_stated_se(small_with_oracle):
    t = small_with_oracle.truth
    obs = small_with_oracle.observed
    vals = t[[f"oracle_failure_s{s}" for s in range(1, 7)]].to_numpy()
    ses = t[[f"oracle_se_s{s}" for s in range(1, 7)]].to_numpy()
    done = np.isfinite(vals)
    assert done.sum() > 100
    assert ((vals[done] >= 0) & (vals[done] <= 1)).all()
    assert (ses[done] <= 0.005).all()
    # empty where there is no PHQ-9 score at session t, or the intake is below caseness
    sel = np.isfinite(vals).any(axis=1)
    att = obs.att[:, :6] == 1
    assert not (done & ~att).any()
    assert (obs.phq[sel, 0] >= 10).all()


def test_a_worse_latest_score_never_lowers_the_oracle_risk(small_with_oracle):
    """Directional: the same history with a PHQ-9 five points higher at session 3."""
    coh = small_with_oracle
    obs, lay = coh.observed, coh.layout
    rows = np.flatnonzero((obs.att[:, 2] == 1) & (obs.phq[:, 0] >= 10) & (obs.phq[:, 2] <= 20)
                          & (obs.option_slot != 3))[:12]
    pts = np.zeros((len(rows), 6), dtype=bool)
    pts[:, 2] = True
    keys = np.arange(1, len(rows) + 1, dtype=np.uint64)

    def run(phq):
        v, s, _ = oracle_arrays(DEFAULT.pack(), DEFAULT.b1_sd, keys, lay.age[rows],
                                lay.gender[rows], lay.diag[rows], lay.t_cut[rows],
                                obs.att[rows, :6], phq, obs.gad[rows, :6], obs.srs[rows, :6],
                                obs.option[rows], obs.option_slot[rows], pts)
        return v[:, 2], s[:, 2]

    base, se0 = run(obs.phq[rows, :6])
    worse_phq = obs.phq[rows, :6].copy()
    worse_phq[:, 2] += 5
    worse, se1 = run(worse_phq)
    assert (worse - base > -3 * np.hypot(se0, se1)).all()
    assert (worse > base).mean() >= 0.9


def test_oracle_is_calibrated_and_not_beaten_by_a_fitted_model():
    """2,500 fresh clients, oracle at session 3: the calibration slope's 95% interval holds 1
    and the slope is within 0.85-1.15, and a gradient boosting model fitted on half the data
    does not beat the oracle's Brier score beyond the oracle's bootstrap 95% interval on the
    other half. The 50,000-client run (slope within 0.95-1.05) is
    ``benchmarks/validate_oracle.py``."""
    from training.simulate.oracle_check import oracle_check

    r = oracle_check(2500)
    assert r.n_scored > 1000
    assert r.slope_lo <= 1.0 <= r.slope_hi and 0.85 <= r.slope <= 1.15, r
    assert r.brier_model >= r.brier_oracle_lo, r


# ------------------------------------------------------------------------------------------
# Counterfactuals
# ------------------------------------------------------------------------------------------
def test_counterfactuals_use_common_random_numbers():
    coh = simulate_cohort(3000, seed=11, oracle_clients=0)
    cf = counterfactual_outcomes(coh)
    assert set(cf["option"]) == set(OPTIONS)
    wide = cf.pivot(index="client_id", columns="option", values="last_phq")
    elig = cf.drop_duplicates("client_id").set_index("client_id")["eligible"]
    # clients never off track: every option gives the same course
    same = wide[~elig.reindex(wide.index)].nunique(axis=1)
    assert (same == 1).all()
    # the factual option reproduces the factual course exactly
    fact = coh.courses.option
    ids = coh.layout.client_id
    for o, name in enumerate(OPTIONS):
        mine = fact == o
        got = cf[cf["option"] == name].set_index("client_id").loc[ids[mine]]
        ref = coh.truth.set_index("client_id").loc[ids[mine]]
        pd.testing.assert_series_equal(got["failed"], ref["failed"], check_names=False)
    # and adaptations do change outcomes for some eligible clients
    assert (wide[elig.reindex(wide.index)].nunique(axis=1) > 1).mean() > 0.2


# ------------------------------------------------------------------------------------------
# Clinical-support checklist and the size of the adaptation effects
# ------------------------------------------------------------------------------------------
def test_checklist_is_given_at_the_decision_session_with_the_anchored_accuracy(cohort):
    """One CSC row per client with an observed decision, at that session; a rating >= 2 flags
    the domain with sensitivity about 0.83 and specificity about 0.92 (the PHQ-2 anchor,
    Kroenke et al. 2003; params.csc_shift / csc_cuts)."""
    s = cohort.sessions
    csc = s[s["instrument"] == "CSC"].set_index("client_id")
    obs = cohort.observed
    decided = pd.Series(obs.option_slot, index=cohort.layout.client_id)[obs.option >= 0]
    assert csc.index.is_unique
    assert len(csc) >= 0.99 * len(decided)
    assert (csc["session"] == decided.reindex(csc.index)).all()
    items = csc[[f"item_{k}" for k in range(1, 6)]].to_numpy()
    assert (csc["score"].to_numpy() == items.sum(axis=1)).all()
    doms = cohort.truth.set_index("client_id")["domains"].reindex(csc.index).fillna("")
    for k, name in enumerate(("alliance", "motivation", "social_support", "life_events",
                              "medication")):
        has = doms.str.contains(name).to_numpy()
        sens, spec = (items[has, k] >= 2).mean(), (items[~has, k] < 2).mean()
        assert 0.78 < sens < 0.88 and 0.90 < spec < 0.94, (name, sens, spec)


def test_adaptation_effect_matches_the_published_range():
    """Feedback with clinical support tools for not-on-track clients: g = 0.36-0.53 (Barkham
    et al. 2023). Among flagged clients, the truly best adaptation vs none moves the last
    PHQ-9 score by g (mean difference / SD of the last score under none) in 0.30-0.53."""
    coh = simulate_cohort(8000, seed=12, oracle_clients=0)
    cf = counterfactual_outcomes(coh)
    cf = cf[cf["eligible"]]
    wide = cf.pivot(index="client_id", columns="option", values="last_phq")
    best = coh.truth.set_index("client_id")["best_adaptation"].reindex(wide.index)
    pick = best.where(best != "any", "none").to_numpy(dtype=object)
    col = wide.columns.get_indexer(pick)
    under_best = wide.to_numpy()[np.arange(len(wide)), col]
    g = np.nanmean(wide["none"].to_numpy() - under_best) / np.nanstd(wide["none"].to_numpy())
    assert 0.30 <= g <= 0.53, g


# ------------------------------------------------------------------------------------------
# Realism: regression to the mean, scenarios
# ------------------------------------------------------------------------------------------
def test_intake_scores_regress_to_the_true_severity():
    """With no change at all (every client a non-responder with slope 0, no shocks, no
    effects), a high intake score was high partly by measurement error: the next score is
    lower on average, and a low one is followed by a higher one."""
    prior = [0.0] * len(DEFAULT.traj_prior)
    prior[2] = 1.0
    beta = list(DEFAULT.traj_beta)
    beta[2] = 0.0
    p = DEFAULT.with_(traj_prior=tuple(prior), traj_beta=tuple(beta), b1_sd_client=0.0,
                      b1_sd_therapist=0.0, b1_sd_clinic=0.0, dom_prev=(0.0,) * 5,
                      week_prob=0.0, le_hazard=(0.0, 0.0), alliance_between=0.0,
                      c_alliance_symptom=0.0, rho=0.0)
    coh = simulate_cohort(20_000, seed=3, oracle_clients=0, params=p, censor=False)
    phq = coh.observed.phq
    both = (phq[:, 0] >= 0) & (phq[:, 1] >= 0)
    change = phq[both, 1] - phq[both, 0]
    high = phq[both, 0] >= 20
    low = phq[both, 0] <= 8
    assert change[high].mean() < -1.0
    assert change[low].mean() > 1.0
    assert abs(change.mean()) < 0.3  # no change on average: the true severity stays put


def test_scenarios_are_named_and_written_down(tmp_path):
    import json

    from training.simulate.scenarios import SCENARIOS, scenario

    assert set(SCENARIOS) == {"default", "null-effects", "confounded", "weak-signal", "shifted"}
    with pytest.raises(ValueError, match="known: default"):
        scenario("optimistic")
    coh = simulate_cohort(300, seed=2, oracle_clients=0, scenario="null-effects")
    assert coh.params.adapt_matched == (0.0,) * 6
    coh.write(tmp_path)
    meta = json.loads((tmp_path / "simulation.json").read_text())
    assert meta["scenario"] == "null-effects" and meta["clients"] == 300
    assert meta["simulator_version"]


def test_confounded_therapists_choose_by_domains_they_did_not_record():
    """In the confounded world the recorded propensities (observables only) no longer
    describe the choices: the matching adaptation is chosen more often than recorded."""

    def matched_share(name):
        coh = simulate_cohort(20_000, seed=4, oracle_clients=0, scenario=name)
        c = coh.courses
        o = c.option
        ok = (o >= 1) & (o <= 5)
        return float(((c.domains[ok] >> (o[ok] - 1)) & 1).mean())

    assert matched_share("confounded") > matched_share("default") + 0.05


# ------------------------------------------------------------------------------------------
# Streaming writer: client-hash partitions
# ------------------------------------------------------------------------------------------
STREAM_N, STREAM_SEED, STREAM_PARTS = 3000, 9, 7


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    from training.simulate.stream import stream_cohort

    out = tmp_path_factory.mktemp("streamed") / "cohort"
    figures = stream_cohort(STREAM_N, STREAM_SEED, out, partitions=STREAM_PARTS, chunk=1000)
    return out, figures


def _parts(out, name: str, partitions: int) -> list[pd.DataFrame]:
    from features.partitions import part_name

    return [pd.read_parquet(out / name / part_name(k)) for k in range(partitions)]


def _calendar(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    out = frame.reset_index(drop=True).copy()
    out[column] = pd.to_datetime(out[column]).astype("datetime64[s]")
    return out


def test_streamed_clients_are_each_in_the_one_bucket_their_id_hashes_to(streamed):
    from features.partitions import client_bucket, part_name

    out, figures = streamed
    for name in ("sessions", "clients", "adaptations"):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            part_name(k) for k in range(STREAM_PARTS)]  # every bucket, no temporary file
        owner: dict[str, int] = {}
        for k, part in enumerate(_parts(out, name, STREAM_PARTS)):
            assert (client_bucket(part["client_id"], STREAM_PARTS) == k).all(), (name, k)
            for c in part["client_id"].unique():
                assert owner.setdefault(c, k) == k  # never in two files
        if name != "adaptations":
            assert len(owner) == STREAM_N
    assert figures["clients"] == STREAM_N and figures["partitions"] == STREAM_PARTS


def test_streamed_cohort_has_simulate_cohorts_rows_and_scores(streamed):
    """The courses come from per-client keys: the streamed cohort (chunks of 1,000) has the
    same clients, adaptations, session rows, dates and PHQ-9 / GAD-7 / SRS scores as
    `simulate_cohort`; only the item answers and the checklist come from other draws."""
    out, figures = streamed
    ref = simulate_cohort(STREAM_N, seed=STREAM_SEED, oracle_clients=0)
    key = ["client_id", "session", "instrument"]
    got = pd.concat(_parts(out, "sessions", STREAM_PARTS)).sort_values(key)
    want = ref.sessions.sort_values(key)
    assert len(got) == len(want) == figures["rows"]
    got, want = _calendar(got, "date"), _calendar(want, "date")
    same = key + ["date", "clinic_id", "therapist_id"]
    pd.testing.assert_frame_equal(got[same], want[same], check_dtype=False)
    course = (want["instrument"] != "CSC").to_numpy()
    np.testing.assert_array_equal(got["score"].to_numpy()[course],
                                  want["score"].to_numpy()[course])
    srs = (want["instrument"] == "SRS").to_numpy()
    cols = [f"item_{j}" for j in range(1, 10)]
    np.testing.assert_array_equal(got[cols].to_numpy()[srs], want[cols].to_numpy()[srs])
    answers = got[cols].fillna(0).sum(axis=1).to_numpy()  # the items add up to the score
    np.testing.assert_allclose(answers[~srs], got["score"].to_numpy()[~srs])
    clients = pd.concat(_parts(out, "clients", STREAM_PARTS)).sort_values("client_id")
    pd.testing.assert_frame_equal(_calendar(clients, "intake_date"),
                                  _calendar(ref.clients, "intake_date"), check_dtype=False)
    adapt = pd.concat(_parts(out, "adaptations", STREAM_PARTS)).sort_values("client_id")
    pd.testing.assert_frame_equal(adapt.reset_index(drop=True),
                                  ref.adaptations.reset_index(drop=True), check_dtype=False)


def test_streamed_files_have_write_cohorts_parquet_types_and_a_marker(streamed, tmp_path):
    import json

    import pyarrow.parquet as pq

    from features.partitions import part_name, read_layout

    out, _ = streamed
    simulate_cohort(50, seed=1, oracle_clients=0).write(tmp_path, "parquet")
    for name in ("sessions", "clients", "adaptations"):
        assert pq.read_schema(out / name / part_name(0)) == pq.read_schema(
            tmp_path / f"{name}.parquet"), name
    assert read_layout(out).partitions == STREAM_PARTS
    meta = json.loads((out / "partitions.json").read_text())
    assert (meta["seed"], meta["clients"], meta["chunk"], meta["scenario"]) == (
        STREAM_SEED, STREAM_N, 1000, "default")
    assert meta["simulator_version"]


def test_streaming_is_deterministic_writes_empty_buckets_and_refuses_a_used_folder(tmp_path):
    from features.partitions import part_name
    from training.simulate.stream import stream_cohort

    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()  # an empty folder is fine
    for out in (a, b):
        stream_cohort(5, seed=3, out=out, partitions=16, chunk=2)
    for name in ("sessions", "clients", "adaptations"):
        assert _digest(a / name) == _digest(b / name)
    sizes = [len(p) for p in _parts(a, "clients", 16)]
    assert sum(sizes) == 5 and sizes.count(0) >= 11  # empty buckets are files too
    assert list(pd.read_parquet(a / "sessions" / part_name(sizes.index(0))).columns)[:3] == [
        "client_id", "session", "instrument"]
    with pytest.raises(ValueError, match="not an empty folder"):
        stream_cohort(5, seed=3, out=a, partitions=16)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        stream_cohort(5, seed=3, out=tmp_path / "c", partitions=16)

    def stop(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped half-way: nothing is left behind
        stream_cohort(5, seed=3, out=tmp_path / "d", partitions=16, chunk=2, progress=stop)
    assert not (tmp_path / "d").exists()


def test_simulate_command_streams_with_partitions(tmp_path):
    from typer.testing import CliRunner

    from features.partitions import read_layout
    from training.cli import app

    runner = CliRunner()
    out = tmp_path / "national"
    args = ["simulate", "--clients", "400", "--seed", "2", "--out", str(out), "--partitions", "3"]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "400 clients" in result.output and "3 partitions" in result.output
    assert read_layout(out).partitions == 3 and not (out / "truth.csv").exists()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not an empty folder" in again.output
    csv = runner.invoke(app, [*args[:-2], "--partitions", "3", "--format", "csv"])
    assert csv.exit_code == 2
