"""Cohort simulator with a Bayes oracle. See docs/simulator.md.

    from training.simulate import simulate_cohort, summary, counterfactual_outcomes
    cohort = simulate_cohort(10_000, seed=1, oracle_clients=500)
    cohort.write("data/sim", "csv")
    rows = summary(cohort.sessions, cohort.clients, cohort.truth)
"""

from training.simulate.counterfactual import counterfactual_outcomes
from training.simulate.generative import SimulatedCohort, simulate_cohort
from training.simulate.params import DEFAULT, Params, tiny_two_class
from training.simulate.summary import SummaryRow, summary

__all__ = ["DEFAULT", "Params", "SimulatedCohort", "SummaryRow", "counterfactual_outcomes",
           "simulate_cohort", "summary", "tiny_two_class"]
