"""Execute experiment runs: in this process, one after another, or as Ray tasks (darktune/experiment/ray_executor).

Owns: `execute(plans, ...)`: skip the runs that are done, run the others, one outcome per plan. What a worker
does for one run is darktune/experiment/task.py. A run that fails by itself is one failed outcome with its
message; the other runs go on. darktune owns no scheduler: more than one run at a time is Ray's work.
"""

from __future__ import annotations

from pathlib import Path

from darktune.experiment.progress import GridProgress
from darktune.experiment.ray_executor import RayPool
from darktune.experiment.runs import (
    DONE,
    RunInputs,
    RunOutcome,
    finish_run,
    prepare_run,
    run_status,
    train_config,
)
from darktune.experiment.spec import RunPlan
from darktune.experiment.task import TrainFn, call_run

def outcome_of(plan: RunPlan, run_dir: Path, error: str | None, status: str | None) -> RunOutcome:
    if error is None and status not in DONE:
        error = f"training ended with status {status!r}"
    return RunOutcome(plan, run_dir, status if error is None else "failed", error=error)


def execute(plans: list[RunPlan], inputs: RunInputs, train_fn: TrainFn, device: str, bar: GridProgress,
            pool: RayPool | None = None, keep_checkpoints: bool = False) -> list[RunOutcome]:
    """Run every plan that is not done yet, in this process (`pool` None) or as Ray tasks; returns one outcome
    per plan, in the plans' order. A run that finishes loses its checkpoint.pt at once unless
    `keep_checkpoints` (finish_run)."""
    outcomes: dict[int, RunOutcome] = {}
    tasks: list[tuple[int, dict]] = []
    for i, plan in enumerate(plans):
        run_dir, done, resume = prepare_run(plan, inputs)
        if done:
            outcomes[i] = RunOutcome(plan, run_dir, run_status(run_dir) or "finished", reused=True)
        else:
            tasks.append((i, {**train_config(plan, inputs.cfg, inputs.starts[plan.start], run_dir, device),
                              "resume": resume}))

    def ended(i: int, error: str | None, status: str | None) -> None:
        plan = plans[i]
        outcomes[i] = finish_run(outcome_of(plan, inputs.out_dir / plan.folder, error, status), keep_checkpoints)
        failed = outcomes[i].status not in DONE
        bar.count(done=int(not failed), failed=int(failed))

    if pool is not None:
        pool.run(train_fn, tasks, ended, bar)
    else:
        for i, kwargs in tasks:
            bar.count(running=1)
            bar.refresh(plans[i].name)
            error = call_run(train_fn, kwargs)
            bar.count(running=0)
            ended(i, error, run_status(Path(kwargs["out"])))
    return [outcomes[i] for i in range(len(plans))]
