"""What one training run holds while it trains (`Run`, with its `Dist` placement and its `RunState`) and what it
returns (`TrainResult`).

`RunState` is what a run has measured and must carry across a resume: the checkpoint's "state" entry is its
`to_checkpoint()` dict (the same keys as checkpoints of older darktune, which `from_checkpoint` reads: a key
they lack takes its default, a key it does not know is ignored)."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from darktune.errors import DarktuneError
from darktune.train.config import TrainConfig
from darktune.train.recovery import GuardState


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class RunState:
    """A run's measurements and resume-relevant facts (plain values: it goes into checkpoint.pt)."""

    best_map: float | None = None
    final_map: float | None = None
    time_to_target: dict | None = None  # {"iteration", "seconds" (training), "elapsed_seconds"}
    maps: list = field(default_factory=list)  # [iteration, mAP] per evaluation
    train_seconds: float = 0.0  # training steps only (no evaluation, checkpoints, start-up)
    elapsed_seconds: float = 0.0  # wall time of the run so far, at the last checkpoint
    skipped_steps: int = 0  # bad iterations (non-finite loss or spike), update skipped
    bad_in_row: int = 0
    schedule_offset: int = 0  # --continue-schedule: the weights' iteration, where the lr schedule goes on
    init: dict = field(default_factory=dict)  # what init_model loaded (mode, weights, upto, layers)
    input: str | None = None  # the input path (cpu loader / gpu_augment): a resume must use the same
    digests_before: dict = field(default_factory=dict)  # layer -> sha256 at the start (freeze proof)
    digests_at_unfreeze: dict | None = None  # layer -> sha256 after iteration --unfreeze-at
    scaler: dict | None = None  # GradScaler state (fp16 AMP)
    last_saved_step: int | None = None

    def to_checkpoint(self) -> dict:
        """The checkpoint's "state" dict; optional entries that were never set are left out, as before."""
        out = asdict(self)
        for key in ("digests_at_unfreeze", "scaler"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_checkpoint(cls, saved: dict) -> RunState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


@dataclass
class Run:
    """Everything one run holds while it trains."""

    config: TrainConfig
    dist: Dist
    dir: Path
    spec: object
    model: torch.nn.Module  # the Darknet
    net: torch.nn.Module  # what the step calls (frozen-prefix wrapper, DDP, compile)
    opt: object  # train_setup.DarknetSGD
    data: object  # TrainBatches
    loss_fn: object
    iterations: int
    batch: int
    subdivisions: int
    eval_points: set
    frozen: list[int]
    amp_dtype: torch.dtype | None
    scaler: object
    channels_last: bool
    net_params: object = None  # [net] with the run's schedule overrides
    names: list = field(default_factory=list)  # class names (RUN/obj.names)
    step: int = 0
    state: RunState = field(default_factory=RunState)
    guard: GuardState = field(default_factory=GuardState)  # snapshots, spike reference, lr drop (recovery)
    budget: object = None  # budget.Budget with --time (darktune.train.timed), else None
    budget_evaluates: bool = False  # --time and a valid list: evaluations follow the fitted length
    notes: list = field(default_factory=list)  # lines to log once the run has started
    elapsed_base: float | None = None  # elapsed seconds of earlier processes of this run (set on start)
    eval_set: object = None
    eval_cache: object = None  # evaluate.PrefixCache: the frozen layers' outputs on eval_set
    feature_cache: object = None  # train_cache.FeatureCache: the frozen layers' outputs on training images
    metrics: object = None  # open file
    tb: object = None
    t_start: float = 0.0
    cpu_start: float | None = None  # process CPU seconds at the start (DARKTUNE_BUDGET_CLOCK=cpu)
    progress: object = None
    log_file: object = None  # RUN/train.log, open (None where stderr already goes there)

    def log(self, message: str, important: bool = True) -> None:
        """An event line (rank 0) on stderr, above the progress bar or, without one (--no-progress), as a plain
        line; and in RUN/train.log. Every event is shown: `important` is accepted for older callers."""
        if not self.dist.main:
            return
        if self.progress is not None and not self.progress.disable:
            self.progress.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)
        if self.log_file is not None:
            try:
                self.log_file.write(message + "\n")
            except OSError as exc:
                raise DarktuneError(f"cannot write: {exc.strerror or exc}", path=str(self.dir / "train.log")) from None


@dataclass
class TrainResult:
    """What a run did (also in RUN/summary.json). mAP values are fractions under ``config.protocol``; seconds
    of training exclude evaluation, checkpoints and start-up; images_per_s = iterations * batch / training s."""

    run_dir: Path
    status: str  # finished | stopped_at_target | failed
    iterations_done: int
    best_map: float | None
    final_map: float | None
    time_to_target: dict | None  # {"iteration", "seconds" (training), "elapsed_seconds"}
    images_per_s: float
    train_seconds: float
    elapsed_seconds: float
    skipped_steps: int
    maps: list[tuple[int, float]]
    message: str = ""
