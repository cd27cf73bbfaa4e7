"""The clinical language of the learned suggestions: the adaptations' labels, the conversation
prompts (shared with the rules), the source line, and the small helpers that turn numbers and
template sentences into the words of a rationale.

Imports: numpy and `models.suggestions` only; no other module of this package (every other module
may import this one).
"""

from __future__ import annotations

import numpy as np

from models.suggestions import PROMPTS as RULE_PROMPTS

LABELS = {
    "alliance_repair": "alliance repair", "motivation": "work on motivation and goals",
    "social_support": "work on social support", "life_events": "attention to life events",
    "medication_review": "a medication review", "change_approach": "a change of approach",
}
PROMPTS = RULE_PROMPTS  # one wording per adaptation, shared with the rules
SOURCE = "learned: similar clients (observational comparison)"


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}.get(
        n, f"number {n}")


def _pct(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{100 * p:.0f}%"


def _clause(text: str) -> str:
    """A sentence as a clause: first letter lower-cased unless it starts an acronym."""
    if len(text) > 1 and text[1].isupper():
        return text
    return text[0].lower() + text[1:]
