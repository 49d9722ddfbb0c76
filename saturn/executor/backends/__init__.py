"""How the executor runs attempts: `process` (local child processes, cold or on warm workers),
`ray` (a Ray cluster, with `ray_actor` on its nodes), `simulated` (a clock, for planning tests and
what-ifs); `base` holds the interface they share and `runner` the entry a job runner process calls."""
