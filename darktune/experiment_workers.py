"""Execute experiment runs: in this process (one job), or in one worker process per device / job.

Owns: `execute(plans, ...)`, the work queue, and the worker process loop. Each worker takes the next pending
run from a shared queue, so fast runs (frozen layers) do not leave a device idle while another works through a
long run. A worker's failure is the failure of one run, recorded with its message; the other runs go on.
"""

from __future__ import annotations

import contextlib
import os
import queue
import traceback
from pathlib import Path

from darktune.errors import DarktuneError
from darktune.experiment import (
    DONE,
    GridProgress,
    RunOutcome,
    StartWeights,
    TrainFn,
    prepare_run,
    run_status,
    train_config,
)
from darktune.experiment_spec import RunPlan


def _outcome(plan: RunPlan, run_dir: Path, error: str | None) -> RunOutcome:
    status = run_status(run_dir)
    if error is None and status not in DONE:
        error = f"training ended with status {status!r}"
    return RunOutcome(plan, run_dir, status if error is None else "failed", error=error)


def execute(plans: list[RunPlan], out_dir: Path, cfg: str, starts: dict[str, StartWeights], train_fn: TrainFn,
            devices: list[str], jobs: int, bar: GridProgress) -> list[RunOutcome]:
    """Run every plan that is not done yet; returns one outcome per plan, in the plans' order."""
    outcomes: dict[int, RunOutcome] = {}
    tasks = []
    for i, plan in enumerate(plans):
        run_dir, done, resume = prepare_run(plan, out_dir, starts[plan.start])
        if done:
            outcomes[i] = RunOutcome(plan, run_dir, run_status(run_dir) or "finished", reused=True)
        else:
            tasks.append((i, plan, run_dir, resume))
    workers = devices if len(devices) > 1 else devices * max(1, jobs)
    workers = workers[:max(1, len(tasks))]
    if len(workers) <= 1:
        for i, plan, run_dir, resume in tasks:
            bar.refresh(plan.name)
            kwargs = {**train_config(plan, cfg, starts[plan.start], run_dir, workers[0]), "resume": resume}
            outcomes[i] = _outcome(plan, run_dir, _call(train_fn, kwargs))
            bar.refresh()
    elif tasks:
        outcomes.update(_parallel(tasks, cfg, starts, train_fn, workers, bar))
    return [outcomes[i] for i in range(len(plans))]


def _call(train_fn: TrainFn, kwargs: dict) -> str | None:
    """Run one training; None on success, else the error message (bad input or a crash of that run).

    What the trainer prints goes to RUN/train.log, so the grid's one progress bar stays readable."""
    log_path = Path(kwargs["out"]) / "train.log"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log, \
                contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
            train_fn(kwargs, False)
    except DarktuneError as exc:
        return str(exc)
    except Exception as exc:  # one run's crash must not lose the rest of the grid; the message is kept
        return f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
    return None


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel end this worker when the process that started it dies, so a killed experiment
    does not leave orphan runs training on (they resume from their checkpoints next time)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the daemon flag still ends workers on a normal exit
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(device: str, threads: int, train_fn: TrainFn, tasks, results, parent: int | None = None) -> None:
    """Worker process: take (index, kwargs) until a None arrives; answer (index, error or None)."""
    if parent is not None:
        _die_with_parent(parent)
    if device.startswith("cpu") and threads > 0:
        import torch

        torch.set_num_threads(threads)
    while True:
        task = tasks.get()
        if task is None:
            return
        index, kwargs = task
        results.put((index, _call(train_fn, {**kwargs, "device": device})))


def _parallel(tasks: list, cfg: str, starts: dict[str, StartWeights], train_fn: TrainFn, workers: list[str],
              bar: GridProgress) -> dict[int, RunOutcome]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and CUDA state
    task_q, result_q = ctx.Queue(), ctx.Queue()
    by_index = {}
    for i, plan, run_dir, resume in tasks:
        by_index[i] = (plan, run_dir)
        task_q.put((i, {**train_config(plan, cfg, starts[plan.start], run_dir, "cpu"), "resume": resume}))
    cpu_workers = sum(1 for w in workers if w.startswith("cpu"))
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    procs = [ctx.Process(target=_worker_main, args=(w, threads, train_fn, task_q, result_q, os.getpid()),
                         daemon=True) for w in workers]
    for _ in procs:
        task_q.put(None)
    for p in procs:
        p.start()
    outcomes: dict[int, RunOutcome] = {}
    try:
        while len(outcomes) < len(tasks):
            try:
                index, error = result_q.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            plan, run_dir = by_index[index]
            outcomes[index] = _outcome(plan, run_dir, error)
            bar.refresh()
    finally:
        for p in procs:
            if p.is_alive() and len(outcomes) < len(tasks):
                p.terminate()  # interrupted: the runs resume from their checkpoints next time
            p.join(timeout=10)
    for index, (plan, run_dir) in by_index.items():
        if index not in outcomes:
            outcomes[index] = RunOutcome(plan, run_dir, "failed", error="worker process exited without a result")
    return outcomes
