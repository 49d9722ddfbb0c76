"""Bridges from hyperparameter-search frameworks to Saturn (optional dependencies, imported lazily).

* `saturn.integrations.optuna`: `optimize(study, make_job, orchestrator, n_trials, batch_size)`:
  Optuna decides what to train (batched ask/tell), Saturn how and when; pruned trials cancel jobs.
* `saturn.integrations.ray_tune`: `SaturnTrainable` (a Tune class trainable whose trials are
  Saturn jobs on a shared orchestrator actor) - see its docstring for the design and its limits.
"""
