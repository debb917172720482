"""A fake trainer for the experiment tests: writes a run folder as darktune.train.config does (metrics.jsonl,
summary.json, checkpoint.pt, weights/last.weights) with a made-up mAP curve per starting point, in milliseconds.

The curve: map(it) = cap * (1 - exp(-it / tau)), tau and cap chosen per starting point and frozen layers so
that the study's findings hold (domain fastest, coco15 before backbone before scratch, N=20 much worse), in
the trained model's own numbering (yolov4-tiny: coco29, N=27/35).
`FAIL_AFTER` (env DARKTUNE_FAKE_FAIL_AFTER) makes a run raise KeyboardInterrupt after that many iterations,
to test resuming.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from darktune.darknet.transfer import MODELS

TAU = {"domain": 8.0, "coco": 30.0, "coco15": 60.0, "backbone": 120.0, "scratch": 400.0}
CAP = {0: 0.98, 13: 0.85, 20: 0.3}


def _study(kwargs: dict):
    """The known model whose zoo cfg the run trains (yolov4-tiny.cfg -> yolov4-tiny), else yolov3-tiny's
    numbering: its starts and frozen counts play the study's (coco29 is coco15, 35 frozen layers are 20)."""
    return MODELS.get(Path(str(kwargs.get("cfg") or "")).stem, MODELS["yolov3-tiny"])


def start_kind(kwargs: dict) -> str:
    """Which starting point a run's kwargs describe (as resolve_starts sets weights/upto), in the study's names."""
    weights, upto, study = kwargs["weights"], kwargs.get("upto"), _study(kwargs)
    if weights is None:
        return "scratch"
    if "stages" in Path(weights).parts:
        return "domain"
    return {study.backbone_layers: "backbone", study.partial_layers: "coco15"}.get(upto, "coco")


def curve(kwargs: dict, iteration: int) -> float:
    tau = TAU[start_kind(kwargs)]
    cap = CAP.get(_study(kwargs).study_n(kwargs["freeze"]), 0.9)
    return round(cap * (1 - math.exp(-iteration / tau)) + 0.001 * kwargs["seed"], 6)


def fake_train(kwargs: dict, progress: bool) -> dict:
    """(TrainConfig kwargs, progress) -> summary; resumes from checkpoint.pt's iteration when resume is set."""
    out = Path(kwargs["out"])
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    if kwargs.get("resume") and (out / "checkpoint.pt").is_file():
        start = int(json.loads((out / "checkpoint.pt").read_text())["iteration"])
    fail_after = int(os.environ.get("DARKTUNE_FAKE_FAIL_AFTER", "0"))
    evals = set(kwargs["eval_at"]) | set(range(0, kwargs["iterations"] + 1, kwargs.get("eval_every") or 10**9))
    with open(out / "metrics.jsonl", "a") as f:
        for it in range(start + 1, kwargs["iterations"] + 1):
            f.write(json.dumps({"iteration": it, "loss": 1.0 / it, "lr": 0.001, "images_per_s": 100.0,
                                "train_s": it * 0.01, "elapsed_s": it * 0.012}) + "\n")
            if it in evals:
                m = curve(kwargs, it)
                f.write(json.dumps({"iteration": it, "map": m, "protocol": kwargs.get("protocol", "darknet"),
                                    "train_s": it * 0.01, "elapsed_s": it * 0.012}) + "\n")
            (out / "checkpoint.pt").write_text(json.dumps({"iteration": it}))
            f.flush()
            if fail_after and it == start + fail_after:
                raise KeyboardInterrupt
    (out / "weights").mkdir(exist_ok=True)
    (out / "weights" / "last.weights").write_bytes(b"fake")
    summary = {"status": "finished", "iterations_done": kwargs["iterations"], "device": kwargs["device"],
               "train_seconds": kwargs["iterations"] * 0.01, "train_images": kwargs.get("max_images") or 40,
               "config": {k: v for k, v in kwargs.items()}}
    (out / "summary.json").write_text(json.dumps(summary))
    return summary
