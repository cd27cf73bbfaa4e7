"""What a learned suggestion rests on, and the records that carry it: the options at a decision
point, the fewest similar cases a suggestion needs, the 95 % and claim levels, the Wilson interval
of a (weighted) rate, and the result records `LearnedSuggestion` and `Recommendation` with their
rationale in words.

Imports: numpy, `features.instruments` and `models.recommender.wording`; no other module of this
package (the estimators build on this one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from features.instruments import ADAPTATIONS
from models.recommender.wording import LABELS, PROMPTS, _ordinal, _pct

#: Options at a decision point: no adaptation + the contract's adaptation codes.
OPTIONS: tuple[str, ...] = ("none", *ADAPTATIONS)
Z95 = 1.959963984540054
#: z of the claims' simultaneous 95 % intervals: Bonferroni over the adaptations, two-sided
#: (Phi^-1(1 - 0.05 / (2 * 6)) = 2.638): under no personalised gain at all, the chance that any
#: adaptation's lower bound is above zero for a client is at most 2.5 %. The 95 % level is an
#: OnTrack choice (the usual one), not a clinical threshold from a source.
CLAIM_Z = 2.638257273476751
CLAIM_WORDS = "simultaneous 95 % interval over the adaptations, estimated on archived clients " \
              "held out from choosing the model's terms"


# ------------------------------------------------------------------------------------------
# Result records
# ------------------------------------------------------------------------------------------
@dataclass
class LearnedSuggestion:
    """One adaptation for one client, with the evidence behind it."""

    adaptation: str
    gain: float  # estimated gain in the chance of reliable improvement (probability)
    lower: float  # 95 % interval of the observed difference among the similar clients
    upper: float
    n_similar: int  # similar clients who received the adaptation
    n_without: int  # similar clients who did not
    rate_with: float
    rate_with_ci: tuple[float, float]
    rate_without: float
    rate_without_ci: tuple[float, float]
    drivers: list[str] = field(default_factory=list)
    method: str = ""
    rank: int = 0  # position among the adaptations by estimated gain for this client (1 = top)
    # the honest claim (`RLearnerUplift.claims`): the estimated gain in the chance of reliable
    # improvement over the comparator, with its simultaneous 95 % interval; NaN = no claim made
    claim_gain: float = float("nan")
    claim_lower: float = float("nan")
    claim_upper: float = float("nan")
    versus: str = ""  # the comparator in words
    claimed: bool = False  # shown as learned: the interval's lower bound is above zero
    same_as_rules: bool = False  # the comparator is the rules' top, and it is this adaptation

    @property
    def prompt(self) -> str:
        return PROMPTS[self.adaptation]

    @property
    def rationale(self) -> str:
        lo_w, hi_w = self.rate_with_ci
        lo_o, hi_o = self.rate_without_ci
        text = (f"Observational comparison: of {self.n_similar + self.n_without} similar clients "
                f"as of the decision session, {_pct(self.rate_with)} [{_pct(lo_w)}–{_pct(hi_w)}] "
                f"of the {self.n_similar} who received {LABELS[self.adaptation]} reliably "
                f"improved vs {_pct(self.rate_without)} [{_pct(lo_o)}–{_pct(hi_o)}] of the "
                f"{self.n_without} who did not (difference {100 * (self.rate_with - self.rate_without):+.0f} "
                f"percentage points [{100 * self.lower:+.0f} to {100 * self.upper:+.0f}], "
                f"weighted for who received what). The {self.method} ranks it "
                f"{_ordinal(self.rank)} of the {len(ADAPTATIONS)} adaptations for this client's "
                "chance of reliable improvement.")
        if np.isfinite(self.claim_gain):
            text += (f" Estimated gain over {self.versus}: "
                     f"{100 * self.claim_gain:+.0f} percentage points "
                     f"[{100 * self.claim_lower:+.0f} to {100 * self.claim_upper:+.0f}] "
                     f"({CLAIM_WORDS}); "
                     + ("the archive supports it." if self.claimed else
                        "the archive cannot tell it apart from no gain."))
        if self.drivers:
            text += " What drove it: " + "; ".join(self.drivers) + "."
        return text


@dataclass
class Recommendation:
    """The ranked learned suggestions for one client, or the reason there are none."""

    suggestions: list[LearnedSuggestion]
    fallback_reason: str | None = None

    @property
    def top(self) -> str | None:
        return self.suggestions[0].adaptation if self.suggestions else None

    @property
    def claimed(self) -> list[LearnedSuggestion]:
        """The suggestions whose gain the archive supports (lower bound above zero)."""
        return [s for s in self.suggestions if s.claimed]

    @property
    def unclaimed_reason(self) -> str | None:
        """Why nothing is shown as learned: the fallback reason, or the top suggestion's
        interval when it includes zero; None when a suggestion is claimed."""
        if not self.suggestions:
            return self.fallback_reason
        if self.claimed:
            return None
        s = self.suggestions[0]
        if not np.isfinite(s.claim_gain):
            return None  # an estimator without claims: its ranking stands as before
        if s.same_as_rules:
            return (f"the learned ranking agrees with the rule-based suggestion "
                    f"({LABELS[s.adaptation]}); the rule-based suggestions are shown")
        return (f"the learned top suggestion ({LABELS[s.adaptation]}) has an estimated gain "
                f"over {s.versus} of {100 * s.claim_gain:+.0f} percentage points "
                f"[{100 * s.claim_lower:+.0f} to {100 * s.claim_upper:+.0f}], an interval "
                "that includes no gain, so the archive it was learned from cannot support it; "
                "the rule-based suggestions are shown")


def wilson(p: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a proportion ``p`` from (effective) sample size ``n``."""
    p, n = np.asarray(p, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def top_from_gains(gains: np.ndarray) -> np.ndarray:
    """Index into ADAPTATIONS of the highest gain per row."""
    return np.asarray(gains).argmax(axis=1)
