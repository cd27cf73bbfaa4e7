"""The instrument registry holds every instrument of shared/reference/instruments.md."""


import pytest

from features.instruments import REGISTRY, Direction, Role, get, jacobson_truax_rci

EXPECTED = {"PHQ-9", "GAD-7", "OQ-45", "OQ-30", "ORS", "SRS", "CORE-10", "CORE-OM", "BDI-II",
            "WAI-SR"}


def test_every_reference_instrument_is_registered():
    assert EXPECTED <= set(REGISTRY)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_entries_are_complete_and_cite_a_source(code):
    inst = get(code)
    assert inst.source and len(inst.source) > 10
    assert inst.score_min < inst.score_max
    assert inst.n_items > 0
    assert inst.item_min < inst.item_max
    if inst.cutoff is not None:
        assert inst.score_min <= inst.cutoff <= inst.score_max
    for k in inst.risk_items:
        assert 1 <= k <= inst.n_items


def test_directions():
    for code in ("ORS", "SRS", "WAI-SR"):
        assert REGISTRY[code].direction is Direction.HIGHER_IS_BETTER
    for code in ("PHQ-9", "GAD-7", "OQ-45", "CORE-10", "BDI-II"):
        assert REGISTRY[code].direction is Direction.HIGHER_IS_WORSE
    assert REGISTRY["SRS"].role is Role.ALLIANCE


def test_published_constants():
    """NHS Talking Therapies manual: PHQ-9 caseness >= 10, reliable change 6; GAD-7 8 and 4.
    LOINC: PHQ-9 total 44261-6, item 9 44260-8; GAD-7 total 70274-6."""
    phq, gad = get("PHQ-9"), get("GAD-7")
    assert (phq.cutoff, phq.rci, phq.risk_items) == (10, 6, (9,))
    assert (gad.cutoff, gad.rci) == (8, 4)
    assert phq.loinc_total == "44261-6" and phq.loinc_items[9] == "44260-8"
    assert gad.loinc_total == "70274-6"
    assert get("CORE-10").risk_items == (6,) and get("OQ-45").risk_items == (8,)


def test_unverified_values_are_flagged():
    for code in ("ORS", "CORE-10", "CORE-OM", "BDI-II", "OQ-30"):
        assert REGISTRY[code].verified is False


def test_reliable_change_of_a_published_worked_example():
    """Wodrich, *School and Educational Assessment*, "How to calculate a reliable change index
    (RCI)" (University of Arizona open textbook, back matter), from the Piers-Harris-2 manual
    (Piers & Herzberg 2002): SEM 3.07, S_diff 4.34, RCI 1.96 x 4.34 = 8.51; a total that rises
    from 24 to 35 (11 points) is a reliable change. The formula takes SD and reliability
    (SEM = SD * sqrt(1 - r)), so the manual's SEM goes in as SD 3.07 with r = 0."""
    assert jacobson_truax_rci(3.07, 0.0, z=1.0) == pytest.approx(4.34, abs=0.005)
    assert jacobson_truax_rci(3.07, 0.0) == pytest.approx(8.51, abs=0.005)
    assert 35 - 24 >= jacobson_truax_rci(3.07, 0.0)


def test_the_single_client_example_of_jacobson_and_truax():
    """Jacobson & Truax (1991), J Consult Clin Psychol 59:12, the single-client example as
    transcribed in the ReliableTrendIndex R package (McAleavey; README and
    data-raw/jt_example_data_1.R): pretest 47.5, posttest 32.5, S_diff 4.74, RC = 15 / 4.74 =
    3.16 > 1.96, a reliable change. The published S_diff is what is checked; SD 7.5 (the
    example's population SD) with reliability .80 are inputs that give it, the .80 not read
    from the paper itself."""
    s_diff = jacobson_truax_rci(7.5, 0.80, z=1.0)
    assert s_diff == pytest.approx(4.74, abs=0.005)
    assert (47.5 - 32.5) / s_diff == pytest.approx(3.16, abs=0.005)
    assert 47.5 - 32.5 >= jacobson_truax_rci(7.5, 0.80)


def test_the_bdi_ii_threshold_follows_from_its_published_sd_and_reliability():
    """BDI-II: outpatient SD 12.75 and alpha .92 (Beck, Steer & Brown 1996) give a reliable
    change of 1.96 * sqrt(2) * 12.75 * sqrt(.08) = 10.0 points."""
    assert jacobson_truax_rci(12.75, 0.92) == pytest.approx(9.996, abs=0.001)
    assert get("BDI-II").rci == pytest.approx(10.0, abs=0.05)


def test_severity_is_direction_aware():
    assert get("PHQ-9").severity(27) == 1.0 and get("PHQ-9").severity(0) == 0.0
    assert get("ORS").severity(40) == 0.0 and get("ORS").severity(0) == 1.0


def test_unknown_instrument_error_names_the_code():
    with pytest.raises(KeyError, match="XYZ-1"):
        get("XYZ-1")


def test_alliance_drop_rule():
    """OpenFIT: an SRS fall of 1 point or more since the previous session is worth raising;
    WAI-SR has no published rule, so any fall counts."""
    srs = get("SRS")
    assert srs.dropped(1.0 / 40) and srs.dropped(2.0 / 40)
    assert not srs.dropped(0.5 / 40) and not srs.dropped(0.0) and not srs.dropped(float("nan"))
    assert get("WAI-SR").dropped(0.01)
