"""The adaptation recommender's training side: its decision dataset and its evaluation.

* `decisions`: the decision rows (one per off-track client: features as of the decision
  session, the option received, its propensity, the outcome) and `fit_recommender`, the one fit
  of a learned recommender on them (used by `training.pipeline` for the bundle).
* `picks`: the policies compared and each policy's choice per decision row.
* `policy`: exact policy values on a simulated cohort (the simulator's counterfactuals).
* `offpolicy`: doubly robust policy values on a cohort's own records.
* `tracking`: the MLflow runs of both evaluations.

The outcomes come from `features.targets`. Modules here may import features, models and other
training modules; never serving.
"""
