"""Trainers for the Ray tests (tests/experiment/test_ray.py), importable by Ray's worker processes (the tests put
this folder on their PYTHONPATH): the real trainer that pauses after its first checkpoint, so that a test can
kill its worker mid-run, and one that raises for one run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from darktune.experiment.runner import default_train


def pausing_train(kwargs: dict, progress: bool) -> object:
    """The real trainer; a first attempt (nothing to resume) writes RUN/paused after its first checkpoint and then
    sleeps, until the test kills its worker. A retried attempt resumes and trains straight through."""
    if not kwargs.get("resume"):
        import darktune.train.steps as steps

        real = steps.save_checkpoint

        def save_then_pause(path, **kw):
            real(path, **kw)
            (Path(kwargs["out"]) / "paused").write_text(json.dumps({"pid": os.getpid(), "step": kw["step"]}))
            time.sleep(120)

        steps.save_checkpoint = save_then_pause
    return default_train(kwargs, progress)


def raising_train(kwargs: dict, progress: bool) -> object:
    """fake_train, except that the runs with seed 1 raise."""
    from fake_train import fake_train

    if kwargs["seed"] == 1:
        raise ValueError("non-finite loss at iteration 3 (made up by the test)")
    return fake_train(kwargs, progress)
