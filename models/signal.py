"""The progress signal a therapist sees: grey, white, red, yellow or green, and why.

Colours follow the expected-treatment-response tradition (Finch, Lambert & Schaalje 2001;
Lambert's OQ-Analyst) with OpenFIT's grey for too little data. Rules, first match wins:

* ``grey``   fewer than 2 scores (or no expected course): nothing to compare yet;
* ``white``  the latest score is in the functional range (not clinical by the registry cut-off),
             no other outcome measure is still in the clinical range and no risk item was
             endorsed (safety wording always wins over "consider ending");
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


def colours(latest_score, n_scores, expected_median, failure_boundary,
            instrument: str | Instrument, hold_white=None) -> np.ndarray:
    """The colour per row (vectorised; object array of `Colour` values). ``hold_white``: rows
    that may not be white even in the functional range (another outcome measure is still in
    the clinical range, or a risk item was endorsed): their colour follows the course."""
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    latest, n, med, bnd = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, dtype=float))
          for a in (latest_score, n_scores, expected_median, failure_boundary)))
    hold = (np.zeros(latest.shape, dtype=bool) if hold_white is None
            else np.broadcast_to(np.asarray(hold_white, dtype=bool), latest.shape))
    worse = (lambda a, b: a < b) if inst.higher_is_better else (lambda a, b: a > b)
    with np.errstate(invalid="ignore"):
        few = ~(n >= 2) | np.isnan(latest)
        grey = few | np.isnan(med) | np.isnan(bnd)
        white = ~grey & _functional(latest, inst) & ~hold
        red = ~grey & ~white & worse(latest, bnd)
        yellow = ~grey & ~white & ~red & worse(latest, med)
    return np.select([grey, white, red, yellow],
                     [Colour.GREY.value, Colour.WHITE.value, Colour.RED.value,
                      Colour.YELLOW.value], Colour.GREEN.value).astype(object)


def signal(latest_score, n_scores, expected_median, failure_boundary, session,
           instrument: str | Instrument, others=None, safety=None) -> pd.DataFrame:
    """Signal per client, vectorised: `signal_arrays` as a DataFrame with ``colour`` and
    ``reason``."""
    colour, reasons = signal_arrays(latest_score, n_scores, expected_median, failure_boundary,
                                    session, instrument, others, safety)
    return pd.DataFrame({"colour": colour, "reason": reasons})


def signal_arrays(latest_score, n_scores, expected_median, failure_boundary, session,
                  instrument: str | Instrument, others=None, safety=None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Signal per client, vectorised. Returns (``colour``, ``reason``), object arrays.

    All array arguments broadcast together; ``expected_median`` and ``failure_boundary`` are
    the expected course at ``session`` (from `ExpectedResponse.expected` or the
    `NeighbourNavigator`). ``others``: per row, None or a phrase naming another outcome
    measure still in the clinical range (e.g. "GAD-7 15"): no ending is suggested then.
    ``safety``: per row, None or a phrase on an endorsed risk item: safety wording wins, so
    the row is never white and no reason reassures ("on track").
    """
    inst = instrument if isinstance(instrument, Instrument) else get(instrument)
    latest, n, med, bnd, ses = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, dtype=float))
          for a in (latest_score, n_scores, expected_median, failure_boundary, session)))
    size = len(latest)
    others = [None] * size if others is None else list(others)
    safety = [None] * size if safety is None else list(safety)
    hold = np.array([o is not None or f is not None for o, f in zip(others, safety,
                                                                    strict=True)], dtype=bool)
    colour = colours(latest, n, med, bnd, inst, hold)
    above, below = ("below", "above") if inst.higher_is_better else ("above", "below")
    functional_side = "at or above" if inst.higher_is_better else "below"
    functional = _functional(latest, inst)

    code = inst.code
    reasons = np.empty(size, dtype=object)
    for i in range(size):
        c, x, m, b = colour[i], latest[i], med[i], bnd[i]
        s = _fmt(ses[i]) if np.isfinite(ses[i]) else "?"
        if c == Colour.GREY:
            if not (n[i] >= 2) or np.isnan(x):
                text = (f"Fewer than two {code} scores so far: two are needed to "
                        "compare progress with the expected course.")
            else:
                text = f"No expected course is available for {code} at session {s}."
        elif c == Colour.WHITE:
            text = (f"{code} {_fmt(x)} is in the functional range ({functional_side} the "
                    f"clinical cut-off of {_fmt(inst.cutoff)}): consider discussing ending or "
                    "spacing sessions.")
        elif c == Colour.RED:
            text = (f"{code} {_fmt(x)} is {above} the not-on-track boundary of {_fmt(b)} "
                    f"expected by session {s}: not on track; review alliance, "
                    "motivation, social support and life events.")
        elif c == Colour.YELLOW:
            text = (f"{code} {_fmt(x)} is {above} the expected {_fmt(m)} for session {s}, "
                    f"within the not-on-track boundary of {_fmt(b)}: less progress than "
                    "expected.")
        elif safety[i] is not None:
            text = (f"{code} {_fmt(x)} is at or {below} the expected {_fmt(m)} for session "
                    f"{s}, but {safety[i]}: review risk first; the scores are no reassurance.")
        else:
            text = (f"{code} {_fmt(x)} is at or {below} the expected {_fmt(m)} for "
                    f"session {s}: on track.")
        if c not in (Colour.GREY, Colour.WHITE) and functional[i]:
            if safety[i] is not None:
                text += (f" {code} is in the functional range, but {safety[i]}, so ending is "
                         "not suggested.")
            elif others[i] is not None:
                text += (f" {code} is in the functional range, but {others[i]} is still in "
                         "the clinical range, so ending is not suggested yet.")
        reasons[i] = text
    return np.asarray(colour, dtype=object), np.asarray(reasons, dtype=object)


def _functional(latest: np.ndarray, inst: Instrument) -> np.ndarray:
    """True where the score is outside the clinical range; never for instruments without a
    cut-off (OQ-30): they cannot be white."""
    if inst.cutoff is None:
        return np.zeros(latest.shape, dtype=bool)
    return latest >= inst.cutoff if inst.higher_is_better else latest < inst.cutoff
