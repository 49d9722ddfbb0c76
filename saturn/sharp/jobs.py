"""Job -> SHARP member: the same seeded model, dataset, engine and checkpoint resume as the
`spilling` technique's worker builds for a solo run (which is what makes the two equivalent).
"""

from __future__ import annotations

from typing import Any, Optional

from saturn.sharp.group import Member


def build_member(job: Any, knobs: Optional[dict[str, Any]], device: Any, *, end_step: int,
                 ckpt_dir: Optional[str] = None, checkpoint_every: int = 0,
                 step_time_s: Optional[float] = None, **engine_extra: Any) -> Member:
    """A member for `job`, resumed from the newest checkpoint in `ckpt_dir` if there is one.
    `step_time_s` (the job's profiled spilling step time) seeds the scheduler's estimate."""
    from saturn.techniques.spilling import SpillingEngine, engine_kwargs
    from saturn.training import catalog, loop

    model = loop.build_model(job)
    dataset = loop.build_dataset(job, model)
    engine = SpillingEngine(model, device, **{**engine_kwargs(job, knobs or {}), **engine_extra})
    rng = engine.rng_state()  # right after the seeded build, as in a solo run
    start = 0
    latest = catalog.latest_checkpoint(ckpt_dir, catalog.Owner.of(job, end_step)) if ckpt_dir else None
    if latest:
        start = int(engine.load_checkpoint(latest)["step"])
    tasks = len(engine.tasks())
    return Member(name=job.name, engine=engine, dataset=dataset, batch_size=job.batch_size,
                  start_step=start, end_step=end_step, ckpt_dir=ckpt_dir,
                  checkpoint_every=checkpoint_every, rng=rng,
                  task_time_s=(step_time_s / tasks) if step_time_s else 1.0,
                  meta={"job": job.name, "definition": catalog.Owner.of(job, end_step).definition})
