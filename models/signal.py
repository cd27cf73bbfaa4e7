"""The progress signal a therapist sees: grey, white, red, yellow or green, and why.

Colours follow the expected-treatment-response tradition (Finch, Lambert & Schaalje 2001;
Lambert's OQ-Analyst) with OpenFIT's grey for too little data. Rules, first match wins:

* ``grey``   fewer than 2 scores (or no expected course): nothing to compare yet;
* ``white``  the latest score is in the functional range (not clinical by the registry cut-off);
* ``red``    the latest score is beyond the failure boundary expected by this session
             (the client is *not on track*);
* ``yellow`` worse than the expected (median) score, within the boundary: less progress than
             expected;
* ``green``  at or better than the expected score: on track.

"Worse" honours the instrument's direction (ORS: lower is worse). Wording: a client is "not on
track", never a "failure"; the reason is one sentence a therapist can read to a client.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pandas as pd

from features.instruments import Instrument, get


class Colour(StrEnum):
    GREY = "grey"
    WHITE = "white"
    RED = "red"
    YELLOW = "yellow"
    GREEN = "green"


def _fmt(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def signal(latest_score, n_scores, expected_median, failure_boundary, session,
           instrument: str | Instrument) -> pd.DataFrame:
    """Signal per client, vectorised. Returns a DataFrame with ``colour`` and ``reason``.

    All array arguments broadcast together; ``expected_median`` and ``failure_boundary`` are
    the expected course at ``session`` (from `ExpectedResponse.expected` or the
    `NeighbourNavigator`).
    """
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    latest, n, med, bnd, ses = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, dtype=float))
          for a in (latest_score, n_scores, expected_median, failure_boundary, session)))
    worse = (lambda a, b: a < b) if inst.higher_is_better else (lambda a, b: a > b)
    above, below = ("below", "above") if inst.higher_is_better else ("above", "below")
    functional_side = "at or above" if inst.higher_is_better else "below"

    with np.errstate(invalid="ignore"):
        few = ~(n >= 2) | np.isnan(latest)
        no_course = ~few & (np.isnan(med) | np.isnan(bnd))
        grey = few | no_course
        white = ~grey & _functional(latest, inst)
        red = ~grey & ~white & worse(latest, bnd)
        yellow = ~grey & ~white & ~red & worse(latest, med)
    colour = np.select([grey, white, red, yellow],
                       [Colour.GREY.value, Colour.WHITE.value, Colour.RED.value,
                        Colour.YELLOW.value], Colour.GREEN.value).astype(object)

    code = inst.code
    reasons = np.empty(len(colour), dtype=object)
    for i in range(len(colour)):
        c, x, m, b = colour[i], latest[i], med[i], bnd[i]
        s = _fmt(ses[i]) if np.isfinite(ses[i]) else "?"
        if c == Colour.GREY:
            if few[i]:
                reasons[i] = (f"Fewer than two {code} scores so far: two are needed to "
                              "compare progress with the expected course.")
            else:
                reasons[i] = f"No expected course is available for {code} at session {s}."
        elif c == Colour.WHITE:
            reasons[i] = (f"{code} {_fmt(x)} is in the functional range ({functional_side} the clinical "
                          f"cut-off of {_fmt(inst.cutoff)}): consider discussing ending or "
                          "spacing sessions.")
        elif c == Colour.RED:
            reasons[i] = (f"{code} {_fmt(x)} is {above} the not-on-track boundary of {_fmt(b)} "
                          f"expected by session {s}: not on track; review alliance, "
                          "motivation, social support and life events.")
        elif c == Colour.YELLOW:
            reasons[i] = (f"{code} {_fmt(x)} is {above} the expected {_fmt(m)} for session {s}, "
                          f"within the not-on-track boundary of {_fmt(b)}: less progress than "
                          "expected.")
        else:
            reasons[i] = (f"{code} {_fmt(x)} is at or {below} the expected {_fmt(m)} for "
                          f"session {s}: on track.")
    return pd.DataFrame({"colour": colour, "reason": reasons})


def _functional(latest: np.ndarray, inst: Instrument) -> np.ndarray:
    """True where the score is outside the clinical range; never for instruments without a
    cut-off (OQ-30): they cannot be white."""
    if inst.cutoff is None:
        return np.zeros(latest.shape, dtype=bool)
    return latest >= inst.cutoff if inst.higher_is_better else latest < inst.cutoff
