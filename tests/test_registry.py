"""The instrument registry holds every instrument of shared/reference/instruments.md."""

import math

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


def test_jacobson_truax_formula():
    """Jacobson & Truax 1991: RC threshold = 1.96 * sqrt(2) * SD * sqrt(1 - r)."""
    assert jacobson_truax_rci(10.0, 0.75) == pytest.approx(1.96 * math.sqrt(2) * 10 * 0.5)
    # BDI-II entry derived from Beck et al. 1996 outpatient SD 12.75, alpha .92.
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
