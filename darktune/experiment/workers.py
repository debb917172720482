"""Execute experiment runs: in this process (one job), or in one worker process per device / job.

Owns: `execute(plans, ...)`, the work queue, the worker process loop (no multiprocessing object of a worker
outlives it: a Ctrl-C leaves no leaked semaphore behind), and the whole-grid progress bar (`GridProgress`,
polled from the runs' metrics files). Each worker takes the next pending run from a shared queue, so fast
runs (frozen layers) do not leave a device idle while another works through a long run. A worker's failure
is the failure of one run, recorded with its message; the other runs go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import traceback
from pathlib import Path
from typing import Callable

from darktune.errors import DarktuneError
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

TrainFn = Callable[[dict, bool], object]  # (TrainConfig keyword arguments, progress) -> anything


def _outcome(plan: RunPlan, run_dir: Path, error: str | None) -> RunOutcome:
    status = run_status(run_dir)
    if error is None and status not in DONE:
        error = f"training ended with status {status!r}"
    return RunOutcome(plan, run_dir, status if error is None else "failed", error=error)


def execute(plans: list[RunPlan], inputs: RunInputs, train_fn: TrainFn, devices: list[str], jobs: int,
            bar: GridProgress, keep_checkpoints: bool = False) -> list[RunOutcome]:
    """Run every plan that is not done yet; returns one outcome per plan, in the plans' order. A run that
    finishes loses its checkpoint.pt at once unless `keep_checkpoints` (finish_run)."""
    outcomes: dict[int, RunOutcome] = {}
    tasks = []
    for i, plan in enumerate(plans):
        run_dir, done, resume = prepare_run(plan, inputs)
        if done:
            outcomes[i] = RunOutcome(plan, run_dir, run_status(run_dir) or "finished", reused=True)
        else:
            tasks.append((i, plan, run_dir, resume))
    workers = devices if len(devices) > 1 else devices * max(1, jobs)
    workers = workers[:max(1, len(tasks))]
    if len(workers) <= 1:
        for i, plan, run_dir, resume in tasks:
            bar.refresh(plan.name)
            kwargs = {**train_config(plan, inputs.cfg, inputs.starts[plan.start], run_dir, workers[0]),
                      "resume": resume}
            outcomes[i] = finish_run(_outcome(plan, run_dir, _call(train_fn, kwargs)), keep_checkpoints)
            bar.refresh()
    elif tasks:
        outcomes.update(_parallel(tasks, inputs, train_fn, workers, bar, keep_checkpoints))
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


def _thread_lock_for_tqdm() -> None:
    """tqdm makes a multiprocessing RLock (a named POSIX semaphore, registered with the resource tracker) at its
    first bar, even a disabled one. A worker ended by terminate() on Ctrl-C never unregisters it, and the
    tracker then warns of a leaked semaphore. A worker's bars (if any) go to its run's train.log: a thread lock
    is all they need, and no semaphore is made."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _worker_main(device: str, threads: int, train_fn: TrainFn, tasks, results, parent: int | None = None) -> None:
    """Worker process: take (index, kwargs) until a None arrives; answer (index, error or None)."""
    if parent is not None:
        _die_with_parent(parent)
    _thread_lock_for_tqdm()
    if device.startswith("cpu") and threads > 0:
        import torch

        torch.set_num_threads(threads)
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            index, kwargs = task
            results.put((index, _call(train_fn, {**kwargs, "device": device})))
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the parent says "interrupted" once, no traceback each
        return


def _parallel(tasks: list, inputs: RunInputs, train_fn: TrainFn, workers: list[str], bar: GridProgress,
              keep_checkpoints: bool) -> dict[int, RunOutcome]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and CUDA state
    task_q, result_q = ctx.Queue(), ctx.Queue()
    by_index = {}
    for i, plan, run_dir, resume in tasks:
        by_index[i] = (plan, run_dir)
        task_q.put((i, {**train_config(plan, inputs.cfg, inputs.starts[plan.start], run_dir, "cpu"),
                        "resume": resume}))
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
            outcomes[index] = finish_run(_outcome(plan, run_dir, error), keep_checkpoints)
            bar.refresh()
    finally:
        for p in procs:
            if p.is_alive() and len(outcomes) < len(tasks):
                p.terminate()  # interrupted: the runs resume from their checkpoints next time
            p.join(timeout=10)
        for q in (task_q, result_q):  # tasks nobody took must not hold up this process's exit
            q.cancel_join_thread()
            q.close()
    for index, (plan, run_dir) in by_index.items():
        if index not in outcomes:
            outcomes[index] = RunOutcome(plan, run_dir, "failed", error="worker process exited without a result")
    return outcomes


def last_iteration(run_dir: Path) -> int:
    """The last iteration logged in RUN/metrics.jsonl (0 when none): read from the file's tail only."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class GridProgress:
    """One tqdm bar (stderr) over the iterations of every run, polled from the runs' metrics files."""

    def __init__(self, out_dir: Path, plans: list[RunPlan], enabled: bool = True, interval_s: float = 1.0):
        self.out_dir, self.plans, self.interval_s = out_dir, plans, interval_s
        self.total = sum(p.iterations for p in plans)
        self._stop = threading.Event()
        self._bar = None
        self._thread = None
        if enabled:
            from tqdm import tqdm

            done = self.iterations_done()
            self._bar = tqdm(total=self.total, initial=done, desc="experiment", unit="it", dynamic_ncols=True)
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def iterations_done(self) -> int:
        done = 0
        for p in self.plans:
            run_dir = self.out_dir / p.folder
            done += p.iterations if run_status(run_dir) in DONE else min(p.iterations, last_iteration(run_dir))
        return done

    def refresh(self, note: str | None = None) -> None:
        if self._bar is not None:
            self._bar.n = self.iterations_done()
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self.refresh()
            self._bar.close()
