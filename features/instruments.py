"""The instrument registry: every questionnaire OnTrack understands, with its published constants.

Adding an instrument is adding one `Instrument(...)` entry to `_ENTRIES`. Everything else
(validation rules, reliable change, caseness, normalised severity, FHIR codes) reads from here.

Every constant carries its source. Values that could not be confirmed from a primary source are
kept with ``verified=False`` (see ``shared/reference/instruments.md``); code and docs surface that
flag instead of hiding it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Direction(StrEnum):
    HIGHER_IS_WORSE = "higher_is_worse"
    HIGHER_IS_BETTER = "higher_is_better"


class Role(StrEnum):
    OUTCOME = "outcome"  # symptom / functioning measure, the thing we predict
    ALLIANCE = "alliance"  # therapeutic alliance measure (SRS, WAI-SR)
    # clinical-support checklist given when a client is not on track (one item per domain)
    SUPPORT = "support"


def jacobson_truax_rci(sd_pre: float, reliability: float, z: float = 1.96) -> float:
    """Smallest reliable raw change (Jacobson & Truax 1991).

    SE = SD_pre * sqrt(1 - r_xx); S_diff = sqrt(2 * SE^2); reliable when |change| > z * S_diff.
    """
    if not 0.0 <= reliability < 1.0:
        raise ValueError("reliability must be in [0, 1)")
    se = sd_pre * math.sqrt(1.0 - reliability)
    return z * math.sqrt(2.0 * se * se)


@dataclass(frozen=True, slots=True)
class Instrument:
    """One questionnaire. Scores are totals on ``[score_min, score_max]``."""

    code: str
    name: str
    role: Role
    n_items: int
    item_min: float
    item_max: float
    score_min: float
    score_max: float
    direction: Direction
    integer_scores: bool
    # Clinical cut-off on the total. For HIGHER_IS_WORSE: caseness is score >= cutoff.
    # For HIGHER_IS_BETTER: the clinical range is score < cutoff.
    cutoff: float | None
    # Smallest change in raw points that counts as reliable (change >= rci).
    rci: float | None
    source: str
    verified: bool
    risk_items: tuple[int, ...] = ()
    loinc_panel: str | None = None
    loinc_total: str | None = None
    loinc_items: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # LOINC answer codes (LA...) of the items and the item value each stands for
    loinc_answers: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    notes: str = ""
    # Alliance measures: the drop since the previous session (raw points) worth raising.
    # None = any drop.
    drop_alert: float | None = None
    # Support checklists: the adaptation each item is about (item k -> domains[k - 1]) and the
    # item rating from which the domain counts as a problem worth discussing.
    domains: tuple[str, ...] = ()
    item_cutoff: float | None = None
    # The lowest total of the instrument's published "severe" band (worse side), or None when
    # the instrument has none; its source is in ``source``.
    severe_from: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.direction is Direction.HIGHER_IS_BETTER

    @property
    def sign(self) -> int:
        """+1 when a rise is a worsening, -1 when a rise is an improvement."""
        return -1 if self.higher_is_better else 1

    @property
    def items_sum_to_score(self) -> bool:
        """The total is the sum of the items (not a mean or a scaled mean)."""
        return self.integer_scores and self.item_max * self.n_items == self.score_max

    @property
    def item_columns(self) -> tuple[str, ...]:
        return tuple(f"item_{i}" for i in range(1, self.n_items + 1))

    def severity(self, score: float) -> float:
        """Score mapped to [0, 1] with 1 = worst, so instruments share one scale."""
        frac = (score - self.score_min) / (self.score_max - self.score_min)
        return 1.0 - frac if self.higher_is_better else frac

    def dropped(self, normalised_drop: float) -> bool:
        """Whether a drop since the previous session (on the 0..1 scale of the features, where
        1 = the whole range) is one worth raising: at least `drop_alert` raw points, or any
        drop when the instrument has no published rule."""
        if normalised_drop is None or not math.isfinite(normalised_drop) or normalised_drop <= 0:
            return False
        raw = normalised_drop * (self.score_max - self.score_min)
        return raw >= self.drop_alert - 1e-9 if self.drop_alert is not None else True

    def in_clinical_range(self, score: float) -> bool:
        if self.cutoff is None:
            raise ValueError(f"{self.code} has no published clinical cut-off")
        return score < self.cutoff if self.higher_is_better else score >= self.cutoff


_NHS_MANUAL = "NHS Talking Therapies Manual (2023, v6) / IAPT data handbook"

#: The answer list shared by the PHQ-9 and GAD-7 items in LOINC (loinc.org, answer list LL358-3:
#: "Not at all" 0, "Several days" 1, "More than half the days" 2, "Nearly every day" 3).
_LOINC_FREQUENCY = MappingProxyType({"LA6568-5": 0, "LA6569-3": 1, "LA6570-1": 2,
                                     "LA6571-9": 3})

#: FHIR identities of instruments without LOINC codes: Questionnaire canonical URL
#: ``QUESTIONNAIRE_BASE + code`` (items by item number as linkId, the total as linkId
#: "total"), and Observation codes in the local CodeSystem ``CODE_SYSTEM`` (the registry code).
#: OnTrack's own identifiers (docs/ehr.md); a clinic can keep them or map its own onto them.
QUESTIONNAIRE_BASE = "http://ontrack.example.org/fhir/Questionnaire/"
CODE_SYSTEM = "http://ontrack.example.org/fhir/CodeSystem/instrument"
LOINC = "http://loinc.org"

_ENTRIES: tuple[Instrument, ...] = (
    Instrument(
        code="PHQ-9",
        name="Patient Health Questionnaire-9 (depression)",
        role=Role.OUTCOME,
        n_items=9, item_min=0, item_max=3, score_min=0, score_max=27,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=True,
        cutoff=10, rci=6,
        source=f"{_NHS_MANUAL}; Kroenke, Spitzer & Williams 2001, J Gen Intern Med 16:606",
        verified=True,
        risk_items=(9,),
        severe_from=20,  # Kroenke et al. 2001: 20-27 severe
        loinc_panel="44249-1", loinc_total="44261-6",
        # LOINC panel 44249-1 (PHQ-9 quick depression assessment panel), items in form order
        loinc_items=MappingProxyType({1: "44250-9", 2: "44255-8", 3: "44259-0", 4: "44254-1",
                                      5: "44251-7", 6: "44258-2", 7: "44252-5", 8: "44253-3",
                                      9: "44260-8"}),
        loinc_answers=_LOINC_FREQUENCY,
    ),
    Instrument(
        code="GAD-7",
        name="Generalized Anxiety Disorder-7",
        role=Role.OUTCOME,
        n_items=7, item_min=0, item_max=3, score_min=0, score_max=21,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=True,
        cutoff=8, rci=4,
        severe_from=15,  # Spitzer et al. 2006: 15-21 severe
        source=f"{_NHS_MANUAL}; Spitzer, Kroenke, Williams & Löwe 2006, Arch Intern Med 166:1092",
        verified=True,
        loinc_panel="69737-5", loinc_total="70274-6",
        # LOINC panel 69737-5 (Generalized anxiety disorder 7 item), items in form order
        loinc_items=MappingProxyType({1: "69725-0", 2: "68509-9", 3: "69733-4", 4: "69734-2",
                                      5: "69735-9", 6: "69689-8", 7: "69736-7"}),
        loinc_answers=_LOINC_FREQUENCY,
    ),
    Instrument(
        code="OQ-45",
        name="Outcome Questionnaire-45.2",
        role=Role.OUTCOME,
        n_items=45, item_min=0, item_max=4, score_min=0, score_max=180,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=True,
        cutoff=64, rci=14,
        source="OQ Measures (Lambert et al.), US norms: cut-off 63.5 (64), RCI 14",
        verified=True,
        risk_items=(8,),
        notes="Dutch norms: cut-off 56, RCI 18 (Timman, de Jong & de Neve-Enthoven 2017). "
        "No LOINC code: local CodeSystem.",
    ),
    Instrument(
        code="OQ-30",
        name="Outcome Questionnaire-30",
        role=Role.OUTCOME,
        n_items=30, item_min=0, item_max=4, score_min=0, score_max=120,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=True,
        cutoff=None, rci=10,
        source="OQ Measures (Lambert et al.); cut-off not confirmed (VERIFY)",
        verified=False,
    ),
    Instrument(
        code="ORS",
        name="Outcome Rating Scale (PCOMS)",
        role=Role.OUTCOME,
        n_items=4, item_min=0, item_max=10, score_min=0, score_max=40,
        direction=Direction.HIGHER_IS_BETTER, integer_scores=False,
        cutoff=25, rci=5,
        source="Miller, Duncan, Brown, Sparks & Claud 2003, J Brief Therapy 2:91 (PCOMS); OpenFIT knowledge base. Adult cut-off 25 "
        "(32 for children/adolescents); RCI 5 (VERIFY)",
        verified=False,
        notes="Visual-analogue items measured in cm (0-10), so totals are not integers.",
    ),
    Instrument(
        code="SRS",
        name="Session Rating Scale (alliance, PCOMS)",
        role=Role.ALLIANCE,
        n_items=4, item_min=0, item_max=10, score_min=0, score_max=40,
        direction=Direction.HIGHER_IS_BETTER, integer_scores=False,
        cutoff=36, rci=None,
        source="Duncan et al. 2003, J Brief Therapy 3:3 (PCOMS); OpenFIT alert rules: "
        "below 36, or a fall of 1 point or more since the previous session",
        verified=True,
        drop_alert=1.0,
    ),
    Instrument(
        code="CORE-10",
        name="Clinical Outcomes in Routine Evaluation-10",
        role=Role.OUTCOME,
        n_items=10, item_min=0, item_max=4, score_min=0, score_max=40,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=True,
        cutoff=11, rci=6,
        source="Barkham et al. 2013, Couns Psychother Res 13:3; cut-off 11 (some use 10) and "
        "RCI 6 (VERIFY)",
        verified=False,
        risk_items=(6,),
    ),
    Instrument(
        code="CORE-OM",
        name="CORE Outcome Measure (clinical score, mean x 10)",
        role=Role.OUTCOME,
        n_items=34, item_min=0, item_max=4, score_min=0, score_max=40,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=False,
        cutoff=10, rci=5,
        source="Connell et al. 2007, Br J Psychiatry 190:69 (n = 10,761): cut-off 10 (9.9) on "
        "the 0-40 clinical score; RCI about 5 (VERIFY)",
        verified=False,
        # Risk domain (Evans et al. 2002, Br J Psychiatry 180:51; CORE-OM scoring guide):
        # risk to self items 9 ("I have thought of hurting myself"), 16 ("I made plans to
        # end my life", CORE-10 item 6), 24 and 34; risk to others items 6 and 22.
        risk_items=(6, 9, 16, 22, 24, 34),
        notes="Clinical score = item mean x 10, so totals are not integers and items do not sum "
        "to the score. Risk items from the CORE-OM risk domain (Evans et al. 2002; CORE System "
        "Trust scoring guide).",
    ),
    Instrument(
        code="BDI-II",
        name="Beck Depression Inventory-II",
        role=Role.OUTCOME,
        n_items=21, item_min=0, item_max=3, score_min=0, score_max=63,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=True,
        # Severity bands (Beck, Steer & Brown 1996): 0-13 minimal, 14-19 mild, 20-28 moderate,
        # 29-63 severe. Caseness here = above the minimal band.
        cutoff=14, severe_from=29,
        # No primary RCI for the BDI-II (8.46 / 14.29 are for the original BDI, Seggar et al.
        # 2002). Jacobson-Truax from the outpatient norms in Beck et al. 1996: SD 12.75,
        # alpha .92 -> 1.96 * sqrt(2) * 12.75 * sqrt(0.08) = 10.0 points.
        rci=round(jacobson_truax_rci(sd_pre=12.75, reliability=0.92), 1),
        source="Beck, Steer & Brown 1996 (BDI-II manual): severity bands; RCI by the "
        "Jacobson-Truax formula from outpatient SD 12.75 and alpha .92 (VERIFY)",
        verified=False,
        risk_items=(9,),
        notes="Item 9 (suicidal thoughts or wishes) is treated as a risk item. Minimal "
        "important change = 17.5% reduction (Button et al. 2015).",
    ),
    Instrument(
        code="WAI-SR",
        name="Working Alliance Inventory - Short Revised",
        role=Role.ALLIANCE,
        n_items=12, item_min=1, item_max=5, score_min=1, score_max=5,
        direction=Direction.HIGHER_IS_BETTER, integer_scores=False,
        cutoff=None, rci=None,
        source="Hatcher & Gillaspy 2006, Psychother Res 16:12; no published cut-off or RCI",
        verified=True,
        notes="Scored as the item mean (1-5).",
    ),
    Instrument(
        code="CSC",
        name="OnTrack Clinical Support Checklist (one item per clinical-support domain)",
        role=Role.SUPPORT,
        n_items=5, item_min=0, item_max=4, score_min=0, score_max=20,
        direction=Direction.HIGHER_IS_WORSE, integer_scores=True,
        cutoff=None, rci=None,
        source="Domains from Lambert's Assessment for Signal Clients (alliance, motivation, "
        "social support, life events) and its decision step on a medication referral "
        "(Harmon et al. 2007; Whipple et al. 2003). Not a published instrument: items, 0-4 "
        "ratings and the item cut-off 2 are OnTrack's assumptions (VERIFY against the ASC)",
        verified=False,
        domains=("alliance_repair", "motivation", "social_support", "life_events",
                 "medication_review"),
        item_cutoff=2,
        notes="Given when a client is not on track, like the ASC. Item k rates how much domain "
        "k is a problem for the client now: 0 not at all, 1 a little, 2 somewhat, 3 a lot, "
        "4 very much. A clinic using the ASC can map its subscale flags onto these items.",
    ),
)

REGISTRY: MappingProxyType = MappingProxyType({i.code: i for i in _ENTRIES})

# Codes used by the data contract for adaptations a therapist may make.
ADAPTATIONS: tuple[str, ...] = (
    "alliance_repair",
    "motivation",
    "social_support",
    "life_events",
    "medication_review",
    "change_approach",
)


class UnknownInstrumentError(KeyError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"unknown instrument {self.code!r}; known: {', '.join(REGISTRY)}"


def get(code: str) -> Instrument:
    try:
        return REGISTRY[code]
    except KeyError:
        raise UnknownInstrumentError(code) from None


def codes(role: Role | None = None) -> tuple[str, ...]:
    return tuple(c for c, i in REGISTRY.items() if role is None or i.role is role)
