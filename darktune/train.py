"""Training a darknet detector by transfer learning: the public API (`TrainConfig`, `train`, `TrainResult`).

    from darktune.train import TrainConfig, train
    result = train(TrainConfig(cfg="yolov3-tiny.cfg", data="obj.data", weights="yolov3-tiny.conv.15",
                               freeze=13, iterations=400, batch=16, size=160, eval_at=[100, 200, 300, 400],
                               target_map=0.9, out="runs/conv15_f13"))
    result.time_to_target  # {"iteration": 300, "seconds": 41.2, "elapsed_seconds": 47.9} or None

Semantics (darknet's unless said):
  * Iteration = one weight update over ``batch`` images, accumulated in ``subdivisions`` micro-batches.
    The loss is summed over images and divided by ``batch``; SGD(momentum, weight decay = ``decay`` on conv
    weights only) then makes darknet's exact update (see `darktune.train_setup`). lr from the cfg's [net]
    (burn_in with power, policy steps/scales, ...; `darktune.schedule`), overridable with ``lr``,
    ``burn_in``, ``steps``/``scales``.
  * The classes and the convs before each [yolo] follow the dataset's names; what loads from ``weights`` and
    what starts fresh is written to RUN/init.json (`darktune.train_setup.init_model`).
  * ``freeze=N`` freezes layers 0..N-1, ``freeze_layers`` a listed set (`darktune.freeze`): no update, BN
    statistics fixed, no backward through a frozen prefix. ``unfreeze_at=K``: frozen for iterations 1..K,
    trainable from K+1 (optimizer rebuilt, momentum of already-trained parameters kept); K must be before the
    last iteration and needs frozen layers. ``freeze`` is at most the network's layer count.
  * Evaluation on the valid list every ``eval_every`` iterations, at ``eval_at`` and at the end, darknet's
    ``detector map`` decoding (score 0.005, NMS 0.45), protocol ``protocol``; with ``eval_every`` or
    ``eval_at`` also the start weights, at iteration 0 before the first update (once: a resume does not
    repeat it), so mAP curves start at the start. Time to target = the first
    evaluated iteration with mAP >= ``target_map`` (0 when the start weights meet it), with training seconds (evaluation, checkpoints and
    start-up excluded) and elapsed seconds (everything since start); ``stop_at_target`` (needs ``target_map``)
    ends the run there. An ``eval_at`` point past the last iteration is an error.
  * Non-finite loss: the update is skipped (grads dropped, batch-norm statistics restored) and counted;
    ``max_bad_steps`` in a row fail the run. One host sync per iteration decides it (none other unless logged).
  * Data: darknet's augmentation from the cfg (jitter of the first [yolo]; hue, saturation, exposure, flip,
    mosaic of [net]); batches are a pure function of (seed, iteration) (`darktune.train_data`);
    ``max_images=N`` takes a seeded subset (a smaller N is a subset of a larger one; N in 1..the usable
    training images, else an error). Two input paths, the
    same images per sample: the CPU loader (per-image OpenCV augmentation, `darktune.train_data`) or, with
    ``gpu_augment`` (default on CUDA), a decode-once uint8 cache augmented batch-wise on the device
    (`darktune.train_device`); metrics.jsonl and summary.json say which ("input").
  * Multi-scale (``multi_scale``, default: the cfg's [yolo] random=1): a new square size every 10 iterations,
    a multiple of 32 in [size / 1.4, size * 1.4], a pure function of (seed, iteration // 10); every
    metrics.jsonl training row has its "size". Evaluation always runs at ``size``.
  * Outputs in ``out`` (RUN): metrics.jsonl, weights/last.weights, weights/best.weights, checkpoint.pt,
    init.json, model.cfg, freeze_proof.json (fields: `darktune.freeze`), chart.png, summary.json (status
    finished / stopped_at_target / failed), train.log (the event lines also printed on stderr: init, evaluations,
    unfreeze, warnings; appended to on resume). A burn_in of half the run or more is warned about at the start.
    ``resume=True`` continues from RUN/checkpoint.pt exactly (same batches, lr, step; on CPU the same losses).
  * channels_last on by default (CPU: oneDNN convolutions are ~1.25x faster with it). CUDA: AMP (bf16 where
    supported, else fp16 with loss scaling) and torch.compile on by default; ``amp=True`` on CPU autocasts
    to bf16 (2.3-2.5x faster on this AVX512-BF16 CPU at 160 px; numerics change, so it is opt-in there).
  * DDP under torchrun (RANK/WORLD_SIZE; gloo on CPU): ``batch`` stays the global batch; each process
    takes its slice of every micro-batch; batch-norm statistics are per process (plain DDP), rank 0's are saved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from darktune.errors import DarktuneError

PROTOCOLS = ("darknet", "voc07", "coco101", "coco")


@dataclass
class TrainConfig:
    """Everything a run needs; plain values only (it is stored in checkpoints and summary.json)."""

    cfg: str
    data: str
    weights: str | None = None  # None or "none": from scratch
    upto: int | None = None  # load only layers 0..upto-1 of `weights`
    freeze: int = 0  # layers 0..freeze-1 frozen
    freeze_layers: list[int] | None = None  # or exactly these layers
    unfreeze_at: int | None = None  # frozen for iterations 1..K only
    iterations: int | None = None  # default: [net] max_batches
    batch: int | None = None  # default: [net] batch
    subdivisions: int | None = None  # default: [net] subdivisions
    size: int | None = None  # network width = height (multiple of 32); default: the cfg's
    eval_every: int = 0
    eval_at: list[int] = field(default_factory=list)
    target_map: float | None = None  # 0..1
    stop_at_target: bool = False
    protocol: str = "darknet"
    device: str = "cpu"
    out: str = "runs/train"
    resume: bool = False
    seed: int = 0
    workers: int = 0  # background threads preparing batches
    threads: int | None = None  # torch CPU threads for this process (None: leave torch's setting)
    max_images: int | None = None  # seeded subset of the training list
    max_valid_images: int | None = None
    lr: float | None = None
    burn_in: int | None = None
    # darknet without -clear: the lr schedule goes on from the weights' seen / batch (no second burn-in)
    continue_schedule: bool = False
    steps: list[int] | None = None
    scales: list[float] | None = None
    augment: bool = True
    obj_prior: float | None = None  # new yolo heads: objectness bias = logit(p) (None: darknet's 0)
    gpu_augment: bool | None = None  # None: on for CUDA (device-side input path, `darktune.train_device`)
    multi_scale: bool | None = None  # None: as the cfg's [yolo] random=1 says (off with augment=False)
    amp: bool | None = None  # None: on for CUDA
    channels_last: bool | None = None  # None: on
    compile: bool | None = None  # None: on for CUDA
    feature_cache: bool | None = None  # None/True: on where it applies (darktune.train_cache); False: off
    log_every: int = 1
    checkpoint_every: int = 100
    max_bad_steps: int = 10
    eval_batch: int = 32
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.weights is not None and str(self.weights).lower() == "none":
            self.weights = None
        checks = [
            (self.freeze >= 0, f"--freeze must be >= 0, got {self.freeze}"),
            (not self.continue_schedule or self.weights is not None,
             "--continue-schedule needs --weights (a file whose header counts the images it has seen)"),
            (self.iterations is None or self.iterations >= 1, "--iterations must be >= 1"),
            (self.batch is None or self.batch >= 1, "--batch must be >= 1"),
            (self.subdivisions is None or self.subdivisions >= 1, "--subdivisions must be >= 1"),
            (self.size is None or (self.size >= 32 and self.size % 32 == 0), "--size must be a multiple of 32"),
            (self.eval_every >= 0, "--eval-every must be >= 0"),
            (all(k >= 1 for k in self.eval_at), "--eval-at iterations must be >= 1"),
            (self.target_map is None or 0 <= self.target_map <= 1, "--target-map is a fraction in [0, 1]"),
            (self.protocol in PROTOCOLS, f"--protocol must be one of {', '.join(PROTOCOLS)}"),
            (self.log_every >= 1 and self.checkpoint_every >= 1 and self.max_bad_steps >= 1,
             "--log-every, --checkpoint-every and --max-bad-steps must be >= 1"),
            (self.lr is None or self.lr >= 0, "--lr must be >= 0"),
            (self.obj_prior is None or 0 < self.obj_prior < 1, "--obj-prior is a probability in (0, 1)"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            (self.unfreeze_at is None or self.unfreeze_at >= 1,
             f"--unfreeze-at must be >= 1 (the layers stay frozen for iterations 1..K), got {self.unfreeze_at}"),
            (not (self.freeze and self.freeze_layers), "give --freeze or --freeze-layers, not both"),
            (self.freeze_layers is None or len(self.freeze_layers) > 0,
             "--freeze-layers is empty: give layers such as 0-12,15 (or leave the option out)"),
            (not self.freeze_layers or min(self.freeze_layers) >= 0,
             f"--freeze-layers must list layers >= 0, got {self.freeze_layers}"),
            (self.unfreeze_at is None or bool(self.freeze or self.freeze_layers),
             f"--unfreeze-at {self.unfreeze_at} needs frozen layers to unfreeze: give --freeze N or --freeze-layers"),
            (not self.stop_at_target or self.target_map is not None,
             "--stop-at-target needs --target-map (the mAP at which to stop)"),
            (self.max_images is None or self.max_images >= 1,
             f"--max-images must be >= 1, got {self.max_images} (leave it out to use every training image)"),
        ]
        for ok, message in checks:
            if not ok:
                raise DarktuneError(message)
        self.eval_at = sorted({int(k) for k in self.eval_at})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Config fields that may differ when resuming (they do not change the batches or updates already made;
# `iterations` also sets the length of the poly/sgdr schedules).
RESUMABLE_CHANGES = frozenset({"iterations", "eval_every", "eval_at", "target_map", "stop_at_target", "device",
                               "out", "resume", "workers", "log_every", "checkpoint_every", "max_bad_steps",
                               "eval_batch", "tensorboard", "compile", "max_valid_images", "protocol",
                               "threads", "feature_cache"})


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


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Run (or resume) one training run; see the module docstring. Raises DarktuneError on bad input, CUDA
    out-of-memory (with advice) and a failed resume; a run stopped by non-finite losses returns status failed."""
    from darktune.train_loop import run_training

    return run_training(config, progress)
