"""The prior: what a step should cost before anyone measured it, and the profile rows it yields.

Modules, in the order data flows through them: `cost_model` (pure arithmetic: `MachineRates`,
`ModelShape`, `estimate`, `Calibration`), `machine` (this machine's rates, probed once and
cached beside the profile store, else datasheet figures), `shapes` (a job's `ModelShape`),
`calibration` (measured rows -> ratios and anchors), `rows` (`with_prior`: a profile table plus
one `estimated` row per option nothing covers; `trial_priors`: the profiler's guesses).

Why one package: the prior used to bounce between `profiler/prior_rows.py`, `profiler/session.py`,
`profiles/prior.py` and `profiles/store.py`, importing each other. Now the API (`profiles_table`)
and the profiler's session call into it; it reads only the profiler's torch-free leaf modules
(`cells`: a job's options, `hardware`, `table`, `value`), which never import it.
"""
