"""Named simulator worlds: the default and four that a model's figures should survive.

Each scenario is a `Params` (so the oracle and the counterfactual outcomes follow it: they read
the same parameters). The changes are assumptions chosen to stress one thing each, not
estimates of any clinic:

* ``default``: `params.DEFAULT`.
* ``null-effects``: no adaptation matches a problem domain better than another: the matched
  effects on the symptom course are zero, and so are the matched effects by other roads (the
  lift alliance repair gives the alliance of a client with an alliance problem and the halt it
  puts to that alliance's drift, the relief work
  on motivation gives a motivation problem's missed sessions and dropout, the fall in life
  events that attention to them brings); every adaptation keeps the generic effect. A
  recommender that claims a personalised gain here is reading noise.
* ``confounded``: the simulated therapists also hear about the client's problem domains and
  lean towards the matching adaptation (``prop_confound``, in the same z units as the
  observable cues; 1.2 = the strongest of them), and that is not recorded: the recorded
  propensities leave out what drove the choice, so off-policy estimates are biased.
* ``weak-signal``: every adaptation effect (generic, matched and the matched effects by
  other roads) at half size.
* ``shifted``: another clinic: more depression and younger clients, intake 0.25 logits more
  severe (about 1.5 PHQ-9 points), and dropout 0.4 log-odds more likely after every session.
"""

from __future__ import annotations

from training.simulate.params import DEFAULT, Params


def _scaled_effects(p: Params, f: float) -> Params:
    return p.with_(adapt_generic=p.adapt_generic * f,
                   adapt_matched=tuple(m * f for m in p.adapt_matched),
                   adapt_alliance_boost=p.adapt_alliance_boost * f,
                   adapt_motivation_relief=p.adapt_motivation_relief * f,
                   adapt_life_relief=p.adapt_life_relief * f,
                   adapt_alliance_halt=p.adapt_alliance_halt * f)


SCENARIOS: dict[str, Params] = {
    "default": DEFAULT,
    "null-effects": DEFAULT.with_(adapt_matched=(0.0,) * len(DEFAULT.adapt_matched),
                                  adapt_alliance_boost=0.0, adapt_motivation_relief=0.0,
                                  adapt_life_relief=0.0, adapt_alliance_halt=0.0),
    "confounded": DEFAULT.with_(prop_confound=1.2),
    "weak-signal": _scaled_effects(DEFAULT, 0.5),
    "shifted": DEFAULT.with_(diag_probs=(0.50, 0.25, 0.25),
                             age_probs=(0.30, 0.30, 0.22, 0.13, 0.05),
                             b0_mu=DEFAULT.b0_mu + 0.25, drop0=DEFAULT.drop0 + 0.4),
}

DESCRIPTIONS: dict[str, str] = {
    "default": "the default world",
    "null-effects": "matched adaptation effects zero, by every road (generic effect kept)",
    "confounded": "therapists act on problem domains they heard but did not record",
    "weak-signal": "every adaptation effect at half size",
    "shifted": "another clinic: more depression, younger, more severe, more dropout",
}


def scenario(name: str) -> Params:
    """The parameters of a named scenario; a clear error naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
