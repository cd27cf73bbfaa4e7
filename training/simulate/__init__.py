"""Cohort simulator with a Bayes oracle (GitHub issue 3). See docs/simulator.md."""

from training.simulate.generative import SimulatedCohort, simulate_cohort

__all__ = ["SimulatedCohort", "simulate_cohort"]
