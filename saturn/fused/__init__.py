"""Fused sweeps (issue 36): jobs of one shape that differ in optimizer hyperparameters and seed
train as one batched model on one device. `grouping` decides who may fuse (torch-free, for the
planner), `vmap_check` refuses user models that do not vmap, `engine` trains a group, `runner`
runs it as several jobs (own metrics, checkpoints, leaving early)."""
