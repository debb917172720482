"""What a worker does for one experiment run, wherever it runs (this process, a Ray worker on any node).

Owns: `call_run` (one training with its output in RUN/train.log and its failure turned into a message) and
`run_task` (the run's own folder decides whether it resumes, and a run that is done already is not trained
again).
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from pathlib import Path
from typing import Callable

from darktune.errors import DarktuneError
from darktune.experiment.runs import DONE, run_status
from darktune.files import folder_lock

TrainFn = Callable[[dict, bool], object]  # (TrainConfig keyword arguments, progress) -> anything


def call_run(train_fn: TrainFn, kwargs: dict) -> str | None:
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


def run_task(train_fn: TrainFn, kwargs: dict, device: str, threads: int) -> tuple[str | None, str | None]:
    """One run in a worker: (error or None, the run's status as its summary.json says after training).

    Read from the run's folder when the task starts, not when it was planned: a retried task (its worker or
    node died) resumes from the checkpoint the dead one left, and a run whose summary already says it ended
    (the worker died after finishing) is not trained a second time. The run's folder is locked while it
    trains (RUN/.lock), so a worker that outlived its driver cannot train the same run beside a new attempt. The
    status goes back with the answer, so the driver never reads a result file that another machine may still be
    writing."""
    run_dir = Path(kwargs["out"])
    status = run_status(run_dir)
    if status in DONE:
        return None, status
    _thread_lock_for_tqdm()
    if device == "cpu" and threads > 0:
        import torch

        torch.set_num_threads(threads)
    try:
        with folder_lock(run_dir, "training"):  # a worker of a dead driver still on it: this attempt fails
            error = call_run(train_fn, {**kwargs, "device": device, "resume": (run_dir / "checkpoint.pt").is_file()})
    except DarktuneError as exc:
        error = str(exc)
    return error, run_status(run_dir)


def _thread_lock_for_tqdm() -> None:
    """tqdm makes a multiprocessing RLock (a named POSIX semaphore) at its first bar, even a disabled one; a
    worker killed mid-run never unregisters it, and a resource tracker then warns of a leaked semaphore. A run's
    bars (if any) go to its train.log: a thread lock is all they need."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
