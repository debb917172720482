"""A run under a wall-clock budget (``time``): applies `darktune.train.budget`'s fit to the run (its length, lr
schedule, multi-scale's last stretch, evaluation points) and says when the next iteration no longer fits."""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from darktune.train import budget as B
from darktune.train.config import parse_duration
from darktune.train.state import Run


CLOCK_ENV = "DARKTUNE_BUDGET_CLOCK"  # "cpu": see `clock`


def clock(run: Run) -> float:
    """Seconds the budget counts, since the run began (earlier processes of a resumed run included): the wall
    clock; or, with DARKTUNE_BUDGET_CLOCK=cpu (for benchmarks on a shared machine), this process's CPU seconds
    divided by torch's threads, i.e. about the wall clock of the same work on idle cores."""
    if os.environ.get(CLOCK_ENV) == "cpu":
        if run.cpu_start is None:
            run.cpu_start = time.process_time()
        spent = (time.process_time() - run.cpu_start) / max(1, torch.get_num_threads())
    else:
        spent = time.perf_counter() - run.t_start
    return (run.elapsed_base or 0.0) + spent


def start(run: Run, saved: dict | None = None) -> None:
    """run.budget from the config (and a resumed run's saved measurements); None without ``time``."""
    c = run.config
    if c.time is None:
        run.budget = None
        return
    run.budget = B.Budget.from_dict(saved, parse_duration(c.time), c.iterations)
    if run.budget.iterations:  # a resume: the fitted schedule goes on
        _apply(run, run.budget.iterations, first=False)


CPU_BATCH = 8  # a timed run on a CPU: 8 images per update, whatever the cfg says (1 in the zoo's yolov3-tiny.cfg,
# a testing cfg; 64 in yolov4-tiny.cfg, darknet's GPU batch: 15 minutes on a CPU then make a dozen updates)


def with_defaults(config, net_batch: int, cuda: bool):
    """The config of a timed run (``time``) on a CPU, with what the user left unset filled as
    docs/real_data.md measured it: batch 8 (subdivisions 1) and no multi-scale (new heads' objectness starts at
    0.01 in every run: `darktune.train.init.DEFAULT_OBJ_PRIOR`).
    Anything else, and every run without ``time`` or on a GPU, as given."""
    if config.time is None or cuda:
        return config
    changes = {}
    if config.batch is None and net_batch != CPU_BATCH:
        changes.update(batch=CPU_BATCH, subdivisions=config.subdivisions or 1)
    if config.multi_scale is None:  # sizes up to 1.4x cost up to 2.1x an iteration, and learnt less per iteration
        changes["multi_scale"] = False
    return dataclasses.replace(config, **changes) if changes else config


def provisional_iterations(config) -> int:
    """The run's length until the first fit: the cap (``iterations``) or a large number."""
    return config.iterations or B.PROVISIONAL


def _user_points(run: Run) -> bool:
    return bool(run.config.eval_every or run.config.eval_at)


def _apply(run: Run, n: int, first: bool) -> None:
    c, b = run.config, run.budget
    b.iterations = n
    run.iterations = n
    run.data.iterations = B.size_iterations(n)  # multi-scale: the largest size for the fitted last stretch
    changes = {}
    if c.burn_in is None:  # fixed at the first fit: the ramp must not jump later (a resume keeps it)
        if first or b.burn_in is None:
            b.burn_in = B.burn_in_for(n)
        changes["burn_in"] = b.burn_in
    if c.steps is None:
        changes.update(policy="steps", steps=tuple(max(1, round(f * n)) for f in B.STEPS), scales=(0.1,) * len(B.STEPS))
    run.net_params = dataclasses.replace(run.net_params, **changes)
    if run.eval_points or run.budget_evaluates:
        user = set(c.eval_at) | set(range(c.eval_every, n + 1, c.eval_every or n + 1))
        if first:  # fixed at the first fit, so the evaluations do not move when the length is fitted again
            b.eval_every = max(1, round(n / B.EVALUATIONS))
        points = user if _user_points(run) else {p for p in range(b.eval_every, n + 1, b.eval_every)
                                                  if n - p >= b.eval_every / 2}  # none right before the last
        done = {m[0] for m in run.state.maps}  # a refit at an evaluation point's own iteration keeps it
        run.eval_points = {p for p in points if run.step <= p <= n and p not in done} | {n}
    if run.progress is not None:
        run.progress.total = n
        run.progress.refresh()


def _evals_left(run: Run) -> int:
    return sum(1 for p in run.eval_points if p > run.step) if run.budget_evaluates else 0


def _eval_px(run: Run) -> float:
    n_valid = len(run.eval_set) if run.eval_set is not None else 0
    return n_valid * run.spec.net.width * run.spec.net.height


def refit(run: Run, elapsed: float) -> None:
    """Fit the run's length again from the speed so far; not in the last tenth of the run (the lr steps are
    behind it, and the end is then only ever brought forward, by `next_fits`)."""
    b = run.budget
    first = b.iterations is None
    if not first and run.step >= B.STEPS[-1] * b.iterations:
        return
    n = B.fit(b, elapsed=elapsed, step=run.step, batch=run.batch, seed=run.config.seed, base=run.spec.net.width,
              multi_scale=run.data.scale_coef if run.data.multi_scale else False, largest=run.data.largest_size,
              evals_left=_evals_left(run) if not first else B.EVALUATIONS, eval_px=_eval_px(run))
    n = _agree(run, n)
    before = b.iterations
    if n == before:
        return
    _apply(run, n, first)
    if first or abs(n - before) > 0.05 * before:
        net = run.net_params
        points = ",".join(str(p) for p in sorted(run.eval_points))
        run.log(f"time budget {run.config.time}: {b.seconds_per_px() * run.batch * run.spec.net.width ** 2:.2f} s "
                f"per iteration at {run.spec.net.width} px so far -> {n} iterations; burn_in {net.burn_in}, lr steps "
                f"{','.join(str(s) for s in net.steps)}, largest size for the last {B.last_stretch(n)}"
                + (f", evaluations at {points}" if points else ""))


def after_iteration(run: Run, it: int, seconds: float, size: int, elapsed: float) -> None:
    b = run.budget
    b.record(it, seconds, run.batch, size)
    if it == B.PROBE or (it > B.PROBE and it % B.REFIT_EVERY == 0):
        refit(run, elapsed)


def after_evaluation(run: Run, it: int, seconds: float, elapsed: float) -> None:
    if it > 0:  # the evaluation of the start weights also decodes the valid images once: not a typical one
        run.budget.eval_s = seconds
    if run.budget.iterations is not None:
        refit(run, elapsed)


def next_fits(run: Run, it: int, elapsed: float) -> bool:
    """Whether iteration `it` (and the evaluations left, and the end of the run) still fits the budget."""
    size = run.data.size_at(it - 1)
    ok = B.next_fits(run.budget, elapsed=elapsed, iteration_px=run.batch * size * size,
                     evals_left=_evals_left(run), eval_px=_eval_px(run))
    return bool(_agree(run, int(ok)))


def _agree(run: Run, value: int) -> int:
    """Rank 0's decision on every rank (timings differ between processes)."""
    if run.dist.world <= 1:
        return value
    import torch.distributed as td

    t = torch.tensor([float(value)])
    td.broadcast(t, 0)
    return int(t.item())
