"""Training a darknet detector by transfer learning: the public API (`TrainConfig`, `train`, `TrainResult`).

    from darktune.train.config import TrainConfig
    from darktune.train.loop import train
    result = train(TrainConfig(cfg="yolov3-tiny.cfg", data="obj.data", weights="yolov3-tiny.conv.15",
                               freeze=13, iterations=400, batch=16, size=160, eval_at=[100, 200, 300, 400],
                               target_map=0.9, out="runs/conv15_f13"))
    result.time_to_target  # {"iteration": 300, "seconds": 41.2, "elapsed_seconds": 47.9} or None

Every option is declared once, as a TrainConfig field whose `Option` (the field's metadata) says its help, how
its `darktune train` flag reads it, whether an experiment spec may set it, whether a resume may change it and
whether it is part of a run's identity; the flags, `config_from_args`, the spec's keys (`SPEC_OPTIONS`),
`RESUMABLE_CHANGES` and the identity are derived from it (`OPTIONS`).

Semantics (darknet's unless said):
  * Iteration = one weight update over ``batch`` images, accumulated in ``subdivisions`` micro-batches.
    The loss is summed over images and divided by ``batch``; SGD(momentum, weight decay = ``decay`` on conv
    weights only) then makes darknet's exact update (see `darktune.train.init`). lr from the cfg's [net]
    (burn_in with power, policy steps/scales, ...; `darktune.train.schedule`), overridable with ``lr``,
    ``burn_in``, ``steps``/``scales``.
  * The classes and the convs before each [yolo] follow the dataset's names; what loads from ``weights`` and
    what starts fresh is written to RUN/init.json (`darktune.train.init.init_model`).
  * ``freeze=N`` freezes layers 0..N-1, ``freeze_layers`` a listed set (`darktune.train.freeze`): no update, BN
    statistics fixed, no backward through a frozen prefix. ``unfreeze_at=K``: frozen for iterations 1..K,
    trainable from K+1 (optimizer rebuilt, momentum of already-trained parameters kept); K must be before the
    last iteration and needs frozen layers. ``freeze`` is at most the network's layer count.
  * Evaluation on the valid list every ``eval_every`` iterations, at ``eval_at`` and at the end, darknet's
    ``detector map`` decoding (score 0.005, NMS 0.45), protocol ``protocol``; with ``eval_every`` or
    ``eval_at`` also the start weights, at iteration 0 before the first update (once: a resume does not
    repeat it), so mAP curves start at the start. Time to target = the first
    evaluated iteration with mAP >= ``target_map`` (0 when the start weights meet it), with training seconds
    (evaluation, checkpoints and start-up excluded) and elapsed seconds (everything since start); ``stop_at_target``
    (needs ``target_map``) ends the run there. An ``eval_at`` point past the last iteration is an error.
  * Non-finite loss: the update is skipped (grads dropped, batch-norm statistics restored) and counted;
    ``max_bad_steps`` in a row fail the run. One host sync per iteration decides it (none other unless logged).
  * Data: darknet's augmentation from the cfg (jitter of the first [yolo]; hue, saturation, exposure, flip,
    mosaic of [net]); batches are a pure function of (seed, iteration) (`darktune.train.inputs`);
    ``max_images=N`` takes a seeded subset (a smaller N is a subset of a larger one; N in 1..the usable
    training images, else an error). Two input paths, the
    same images per sample: the CPU loader (per-image OpenCV augmentation, `darktune.train.inputs`) or, with
    ``gpu_augment`` (default on CUDA), a decode-once uint8 cache augmented batch-wise on the device
    (`darktune.train.device_inputs`); metrics.jsonl and summary.json say which ("input").
  * Multi-scale (``multi_scale``, default: the cfg's [yolo] random=1): a new square size every 10 iterations,
    darknet's roundl(r * size / 32 + 1) * 32 with r drawn in [1/1.4, 1.4] (320..608 at 416, 256..480 at 320),
    the largest for the first 10 and the last 100 iterations, a pure function of (seed, iteration // 10); the
    log says so at the start, every metrics.jsonl training row has its "size", summary.json's "sizes" counts
    the iterations at each. Evaluation always runs at ``size``.
  * Outputs in ``out`` (RUN): metrics.jsonl, weights/last.weights, weights/best.weights, checkpoint.pt,
    init.json, model.cfg, freeze_proof.json (fields: `darktune.train.freeze`), chart.png, summary.json (status
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
from dataclasses import MISSING, dataclass, field
from types import MappingProxyType
from typing import Any

from darktune.errors import DarktuneError
from darktune.numbers import (COUNT, FRACTION, NET_SIZE, PROBABILITY_OPEN, SEED, SHARE, THREADS, TILE, Domain, integer,
                              real)

PROTOCOLS = ("darknet", "voc07", "coco101", "coco")
KINDS = ("str", "int", "float", "int-list", "float-list", "layer-list", "store_true", "store_false", "tristate")
NUMERIC_KINDS = ("int", "float", "int-list", "float-list", "layer-list")  # kinds whose Option has a domain
LAYERS = integer(0, 10_000)  # a layer index (no darknet cfg comes near 10,000 layers)
ITERATIONS = integer(1, 100_000_000)  # darknet's COCO runs take 500,200 iterations


@dataclass(frozen=True)
class Option:
    """What one TrainConfig field is to the rest of darktune: the field's `metadata["option"]`.

    The `darktune train` flags (darktune.cli.train), the keys an experiment spec may set
    (darktune.experiment.spec), the changes a resume accepts (darktune.train.loop) and a run's identity
    (darktune.experiment.spec.identity_options) are all read from these, so an option is declared once.
      help       the flag's help text
      kind       how the flag reads its value: str, int, float; int-list / float-list ("1,2,3"); layer-list
                 ("0-12,15", parsed by `darktune.train.freeze.parse_layer_list`); store_true; store_false
                 (the flag is --no-NAME); tristate (--NAME / --no-NAME; None when neither is given)
      resumable  may differ on --resume (it does not change the batches or updates already made)
      identity   decides a run's result, so it is part of an experiment run's identity (a finished run is
                 reused only when its identity matches); identity_with: only while that switch is set
      cli        False: no `darktune train` flag (library and experiment specs only)
      cli_after  listed in `darktune train --help` right after this option (kept where it always was)
      spec       an experiment spec may set it (train:, stages, grid, per_start): its place in the spec's list of
                 keys (kept from the list it replaces, so the spec's "known: ..." errors read as before)
      domain     the values a numeric option takes (darktune.numbers; each element of a list kind): the flag's
                 argparse type, the spec's check and TrainConfig's own, so a flag and a spec key are refused
                 by the same rule
    """

    help: str
    kind: str
    resumable: bool
    identity: bool
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    exclusive: str | None = None  # name of a group of mutually exclusive flags
    cli: bool = True
    cli_after: str | None = None
    spec: int | None = None
    identity_with: str | None = None
    domain: Domain | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Option kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.domain is not None and self.kind not in NUMERIC_KINDS:
            raise ValueError(f"Option of kind {self.kind!r} takes no domain (only {', '.join(NUMERIC_KINDS)})")
        if self.domain is None and self.kind in NUMERIC_KINDS:  # at least finite, and an int within INT_MAX
            object.__setattr__(self, "domain", integer() if self.kind in ("int", "int-list", "layer-list")
                               else real())

    def flag(self, name: str) -> str:
        """The `darktune train` flag of field `name` (tristates also have --no-NAME)."""
        dashed = name.replace("_", "-")
        return f"--no-{dashed}" if self.kind == "store_false" else f"--{dashed}"


def option(default: Any = MISSING, *, factory: Any = MISSING, **meta: Any) -> Any:
    """A TrainConfig field carrying its Option (keywords as Option's)."""
    return field(default=default, default_factory=factory, metadata={"option": Option(**meta)})


@dataclass
class TrainConfig:
    """Everything a run needs; plain values only (it is stored in checkpoints and summary.json)."""

    cfg: str = option(help="darknet .cfg (classes follow the data's names)", kind="str", resumable=False,
                      identity=True)
    data: str = option(help="obj.data (train/valid lists, names)", kind="str", resumable=False, identity=True)
    weights: str | None = option(  # None or "none": from scratch
        None, help="darknet .weights to start from, or 'none' (scratch)", kind="str", resumable=False, identity=True)
    upto: int | None = option(  # load only layers 0..upto-1 of `weights`
        None, help="load only layers 0..N-1 of --weights (a partial file, e.g. conv.15)", kind="int",
        resumable=False, identity=True, domain=integer(1, 10_000))
    keep_classes: bool = option(  # darktune.darknet.classes: COCO's person rows for the data's "person"
        False, help="start from every layer of --weights (a whole model for other classes, e.g. COCO's 80) and "
                    "keep, in each head's output conv, every anchor's box and objectness rows and the rows of the "
                    "data's classes the weights have, matched by name (case, spaces, _ and - ignored; aliases "
                    "such as pedestrian=person, VOC's motorbike=motorcycle); the other classes' rows start "
                    "fresh. RUN/init.json says which row came from where",
        kind="store_true", resumable=False, identity=True)
    weights_names: str | None = option(  # the class names of --weights, for keep_classes
        None, help="--keep-classes: the names file of --weights' classes (default: one beside --weights: <stem>"
                   ".names, obj.names or its folder's only .names, e.g. the zoo's coco.names)",
        kind="str", metavar="FILE", resumable=False, identity=True)
    freeze: int = option(0, help="freeze layers 0..N-1", kind="int", metavar="N", exclusive="freeze",
                         resumable=False, identity=True, domain=LAYERS)
    freeze_layers: list[int] | None = option(  # or exactly these layers
        None, help="freeze these layers, e.g. 0-12,15", kind="layer-list", metavar="LIST", exclusive="freeze",
        spec=12, resumable=False, identity=True, domain=LAYERS)
    unfreeze_at: int | None = option(  # frozen for iterations 1..K only
        None, help="unfreeze everything after iteration K (before the last; needs --freeze or --freeze-layers)",
        kind="int", metavar="K", spec=11, resumable=False, identity=True, domain=ITERATIONS)
    iterations: int | None = option(  # default: [net] max_batches
        None, help="iterations (default: [net] max_batches)", kind="int", resumable=True, identity=True,
        domain=ITERATIONS)
    batch: int | None = option(  # default: [net] batch
        None, help="images per iteration (default: [net] batch)", kind="int", spec=1, resumable=False,
        identity=True, domain=COUNT)
    subdivisions: int | None = option(  # default: [net] subdivisions
        None, help="micro-batches per iteration (default: [net] subdivisions)", kind="int", spec=2,
        resumable=False, identity=True, domain=COUNT)
    size: int | None = option(  # network width = height (multiple of 32); default: the cfg's
        None, help="network width=height, a multiple of 32 (default: the cfg's): the size evaluation runs at; with "
                   "multi-scale, training sizes vary around it (see --multi-scale)", kind="int", spec=3,
        resumable=False, identity=True, domain=NET_SIZE)
    eval_every: int = option(0, help="mAP on the valid list every E iterations", kind="int", metavar="E", spec=8,
                             resumable=True, identity=True, domain=integer(0, 100_000_000))
    eval_at: list[int] = option(factory=list, help="and at these iterations (each at most --iterations)",
                                kind="int-list", metavar="LIST", resumable=True, identity=True, domain=ITERATIONS)
    target_map: float | None = option(  # 0..1
        None, help="target mAP (fraction, e.g. 0.9)", kind="float", metavar="M", spec=14, resumable=True,
        identity=True, identity_with="stop_at_target", domain=FRACTION)
    stop_at_target: bool = option(False, help="stop at the first evaluation reaching --target-map (needs it)",
                                  kind="store_true", spec=13, resumable=True, identity=True)
    protocol: str = option(
        "darknet", help="mAP protocol: darknet (detector map), voc07 (11-point), coco101 (AP50, 101-point), "
                        "coco (AP50-95); default darknet",
        kind="str", choices=PROTOCOLS, spec=9, resumable=True, identity=True)
    device: str = option("cpu", help="cpu, cuda or cuda:N (default cpu)", kind="str", resumable=True,
                         identity=False)
    out: str = option("runs/train", help="run folder (default runs/train); one that already holds a run needs "
                                         "--resume or --overwrite",
                      kind="str", metavar="RUN", resumable=True, identity=False)
    resume: bool = option(False, help="continue RUN/checkpoint.pt", kind="store_true", resumable=True,
                          identity=False)
    seed: int = option(0, help="seed of the initialisation, batches and augmentation", kind="int", resumable=False,
                       identity=True, domain=SEED)
    workers: int = option(  # background threads preparing batches
        0, help="background threads preparing batches (CPU loader; --gpu-augment needs none)", kind="int",
        spec=10, resumable=True, identity=False, domain=integer(0, 1024))
    threads: int | None = option(  # torch CPU threads for this process (None: leave torch's setting)
        None, help="torch CPU threads (default: torch's; use 1 per process when several trainings share the "
                   "cores)",
        kind="int", resumable=True, identity=False, domain=THREADS)
    max_images: int | None = option(  # seeded subset of the training list
        None, help="use a seeded subset of N training images (1 up to the number of usable images; default: all)",
        kind="int", metavar="N", resumable=False, identity=True, domain=COUNT)
    max_valid_images: int | None = option(None, help="evaluate on the first N valid images", kind="int",
                                          metavar="N", spec=16, resumable=True, identity=True, domain=COUNT)
    eval_tile: int | None = option(  # darktune.eval.tiled: whole-image mAP of a model trained on tiles
        None, help="score the valid list's whole images by sliced detection in tiles of PX x PX pixels, as "
                   "`detect --tile PX` runs them (for a model trained on `data tile` tiles)",
        kind="int", metavar="PX", resumable=True, identity=True, domain=TILE)
    eval_overlap: float = option(0.2, help="--eval-tile: overlap of neighbouring tiles (default 0.2)",
                                 kind="float", metavar="F", resumable=True, identity=True, domain=SHARE)
    lr: float | None = option(None, help="override [net] learning_rate", kind="float", spec=4, resumable=False,
                              identity=True, domain=real(0, 10))
    burn_in: int | None = option(
        None, help="override [net] burn_in: the lr ramps up as lr * (i/N)^power over the first N iterations. "
                   "yolov3-tiny.cfg says burn_in=1000, which keeps the lr near 0 for a short run (a run warns "
                   "when burn_in is at least half its iterations): for a run of a few hundred iterations give "
                   "e.g. a tenth of them; 0: no burn-in",
        kind="int", metavar="N", spec=5, resumable=False, identity=True, domain=integer(0, 100_000_000))
    # darknet without -clear: the lr schedule goes on from the weights' seen / batch (no second burn-in)
    continue_schedule: bool = option(
        False, help="go on with the learning-rate schedule of --weights, as darknet does without -clear: it "
                    "starts at iteration seen/batch of the file's header (no second burn-in; steps count from "
                    "there); this run's iterations and metrics still count from 0",
        kind="store_true", spec=22, resumable=False, identity=True)
    steps: list[int] | None = option(None, help="override [net] steps (policy becomes steps)", kind="int-list",
                                     spec=6, resumable=False, identity=True, domain=integer(0, 100_000_000))
    scales: list[float] | None = option(None, help="override [net] scales", kind="float-list", spec=7,
                                        resumable=False, identity=True, domain=real(0, 1000))
    augment: bool = option(True, help="no jitter/colour/flip", kind="store_false", spec=15, resumable=False,
                           identity=True)
    obj_prior: float | None = option(  # new yolo heads: objectness bias = logit(p) (None: init.DEFAULT_OBJ_PRIOR)
        None, help="start new yolo heads' objectness at probability P (bias logit(P)); default 0.01, so a fresh "
                   "head predicts few objects and its objectness loss does not swing (docs/darknet_training.md); "
                   "0.5 is darknet's bias 0",
        kind="float", metavar="P", cli_after="lr", spec=21, resumable=False, identity=True,
        domain=PROBABILITY_OPEN)
    gpu_augment: bool | None = option(  # None: on for CUDA (device-side input path, `darktune.train.device_inputs`)
        None, help="device-side input path: images decoded once into a uint8 cache, whole batches "
                   "augmented on --device (default: on for CUDA, off on CPU)",
        kind="tristate", spec=20, resumable=False, identity=True)
    multi_scale: bool | None = option(  # None: as the cfg's [yolo] random=1 says (off with augment=False)
        None, help="darknet multi-scale training: every 10 iterations a new size roundl(r*S/32+1)*32 for S = "
                   "--size and r drawn in [1/1.4, 1.4] (at 416: 320..608; at 320: 256..480), and the largest for "
                   "the first 10 and the last 100 iterations; the run's log gives the range and the iterations "
                   "at each size, metrics.jsonl each iteration's size, summary.json the totals (default: on when "
                   "the cfg's [yolo] layers say random=1, unless --no-augment)",
        kind="tristate", spec=19, resumable=False, identity=True)
    amp: bool | None = option(  # None: on for CUDA
        None, help="mixed precision: bf16 (fp16 on GPUs without bf16); default on for CUDA, off on CPU",
        kind="tristate", resumable=False, identity=True)
    channels_last: bool | None = option(None, help="channels_last memory format (default: on)",  # None: on
                                        kind="tristate", resumable=False, identity=True)
    compile: bool | None = option(None, help="torch.compile (default: on for CUDA)",  # None: on for CUDA
                                  kind="tristate", resumable=True, identity=True)
    # None/True: on where it applies (darktune.train.feature_cache); False: off
    feature_cache: bool | None = option(
        None, help="with frozen layers and no augmentation, compute each training image's frozen layers once "
                   "and reuse them every epoch (bit-identical, checked on the run; default: on where it applies)",
        kind="tristate", spec=23, resumable=True, identity=False)
    log_every: int = option(1, help="metrics.jsonl line every N iterations", kind="int", resumable=True,
                            identity=False, domain=COUNT)
    checkpoint_every: int = option(100, help="checkpoint.pt and last.weights every N iterations", kind="int",
                                   spec=17, resumable=True, identity=False, domain=COUNT)
    max_bad_steps: int = option(10, help="stop after K bad iterations in a row (non-finite loss or spike, each "
                                         "already followed by a recovery)", kind="int", resumable=True,
                                identity=True, domain=COUNT)
    # darktune.train.recovery: a bad iteration goes back to the last good state with a lower lr
    spike_factor: float = option(
        10.0, help="an iteration whose loss per image (scaled to --size) is above F times the median of the "
                   "last good ones is a spike: not applied, the run goes back to its last good state and lowers "
                   "the lr for a while, as for a non-finite loss (default 10; 0: only non-finite losses)",
        kind="float", metavar="F", resumable=True, identity=True)
    # darktune.train.budget: the schedule fitted to a wall-clock budget
    time: str | None = option(
        None, help="wall-clock budget of the run, e.g. 15m, 90s, 1h: the speed of the first iterations sets the "
                   "iterations, burn-in, lr steps, multi-scale's last stretch and evaluation points, and the run "
                   "ends within the budget with a final evaluation (--iterations: at most that many)",
        kind="str", metavar="T", spec=24, resumable=True, identity=True)
    eval_weights: bool = option(False, help="keep RUN/weights/iter_K.weights of every evaluation",
                                kind="store_true", resumable=True, identity=False)
    eval_batch: int = option(32, help="images per evaluation forward pass", kind="int", cli=False, spec=18,
                             resumable=True, identity=True, domain=COUNT)
    tensorboard: bool = option(False, help="TensorBoard logs (if tensorboard is installed)", kind="store_true",
                               resumable=True, identity=False)

    def __post_init__(self) -> None:
        if self.weights is not None and str(self.weights).lower() == "none":
            self.weights = None
        try:  # the checks that say more than a domain; a value of the wrong type fails its domain below
            checks = self._checks()
        except TypeError:
            checks = []
        for ok, message in checks:
            if not ok:
                raise DarktuneError(message)
        self._check_domains()
        self.eval_at = sorted({int(k) for k in self.eval_at})

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.freeze >= 0, f"--freeze must be >= 0, got {self.freeze}"),
            (not self.keep_classes or (self.weights is not None and self.upto is None),
             "--keep-classes needs --weights of a whole model (every layer; not with --upto)"),
            (self.weights_names is None or self.keep_classes, "--weights-names is for --keep-classes"),
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
            (self.spike_factor == 0 or self.spike_factor > 1,
             f"--spike-factor must be 0 (off) or above 1, got {self.spike_factor}"),
            (self.time is None or parse_duration(self.time) is not None,
             f"--time must be a duration such as 15m, 90s, 1h or 1h30m, got {self.time!r}"),
            (self.eval_tile is None or self.eval_tile >= 32,
             f"--eval-tile must be >= 32 pixels, got {self.eval_tile}"),
            (0 <= self.eval_overlap < 1, f"--eval-overlap must be in [0, 1), got {self.eval_overlap}"),
            (self.max_images is None or self.max_images >= 1,
             f"--max-images must be >= 1, got {self.max_images} (leave it out to use every training image)"),
        ]

    def _check_domains(self) -> None:
        """Every numeric option within its Option's domain (finite, range, integer; each element of a list), the
        rule its flag and its spec key are checked by: one line naming the flag."""
        for f in dataclasses.fields(self):
            option, value = f.metadata["option"], getattr(self, f.name)
            if option.domain is None or value is None:
                continue
            if option.kind in ("int-list", "float-list", "layer-list"):
                if not isinstance(value, (list, tuple)):
                    raise DarktuneError(f"{option.flag(f.name)} must be a list, got {value!r}")
                for v in value:
                    option.domain.check(v, f"each value of {option.flag(f.name)}")
            else:
                option.domain.check(value, option.flag(f.name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_duration(text: str) -> float | None:
    """Seconds of a duration such as 90s, 15m, 1h, 1h30m, 2.5m or a plain number of seconds; None if malformed
    or not positive."""
    total, number, units = 0.0, "", {"h": 3600.0, "m": 60.0, "s": 1.0}
    for ch in str(text).strip().lower() + "s" * str(text).strip()[-1:].isdigit():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number and number.count(".") <= 1:
            total, number = total + float(number) * units[ch], ""
        else:
            return None
    return total if total > 0 and not number else None


# Derived from the fields' Options (see Option): the one declaration of every training option.
OPTIONS: MappingProxyType[str, Option] = MappingProxyType(
    {f.name: f.metadata["option"] for f in dataclasses.fields(TrainConfig)})
# Config fields that may differ when resuming (they do not change the batches or updates already made;
# `iterations` also sets the length of the poly/sgdr schedules).
RESUMABLE_CHANGES = frozenset(name for name, o in OPTIONS.items() if o.resumable)
# The TrainConfig fields an experiment spec may set, in the spec's order.
SPEC_OPTIONS = tuple(sorted((name for name, o in OPTIONS.items() if o.spec is not None),
                            key=lambda name: OPTIONS[name].spec))
