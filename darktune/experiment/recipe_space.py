"""The candidates of `darktune recipe`: its settings and the axes it searches (start point, frozen layers, input size,
learning rate, burn-in), each with a default the user can narrow or widen.

Owns: `RecipeSettings` (validated; `identity()` decides whether a search folder may be continued), `Candidate`
(one recipe: its name, its trials' RunPlans) and `candidates(settings)`.

Start points (the model's names, darktune.darknet.transfer): `scratch`; `backbone` (the first layers of
`--backbone FILE`, or, without one, a stand-in: the COCO weights' layers up to the stride-16 maxpool, as
`reproduce` uses); the COCO partial start (`coco15` / `coco29`); `coco` (every COCO layer that fits the cfg:
all but the class-dependent [yolo] convs when the classes differ); `domain` (every layer of `--domain FILE`,
e.g. weights trained on a large related data set); `coco-keep` (asked for by name: the whole COCO model with the
rows of the classes your data shares with COCO kept, `darktune train --keep-classes`; a data set without a COCO
class name makes its trials fail with that message). Frozen layers: the study's cuts and the ones between, each
only for a start that loads those layers (a random layer is never frozen).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from darktune.darknet.transfer import MODELS
from darktune.errors import DarktuneError
from darktune.experiment.spec import RunPlan

# The stand-in backbone's layers (the COCO weights up to the stride-16 maxpool: v3 layer 7, v4 layer 17), as
# `darktune reproduce` uses them (darktune/reproduce.py says why).
STAND_IN_LAYERS = {"yolov3-tiny": 8, "yolov4-tiny": 18}
# Default frozen counts: none, the stand-in's cut, the backbone, the COCO partial start, the study's deepest cut.
DEFAULT_FREEZE = {"yolov3-tiny": (0, 8, 13, 15, 20), "yolov4-tiny": (0, 18, 27, 29, 35)}
START_ORDER = ("scratch", "backbone", "partial", "coco", "coco-keep", "domain")
_SAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class RecipeSettings:
    """Everything that decides a search. Axes left None take the model's defaults (`axes()`)."""

    data: str
    target_map: float
    model: str = "yolov3-tiny"
    cfg: str | None = None  # None: the zoo cfg of `model`
    starts: tuple[str, ...] | None = None  # names of START_ORDER, `partial` or the model's own (coco15)
    freeze: tuple[int, ...] | None = None
    sizes: tuple[int, ...] | None = None  # None: the cfg's size
    lrs: tuple[float, ...] = (0.001,)
    burn_ins: tuple[int, ...] = (20,)
    backbone: str | None = None  # a darknet .weights whose first `backbone_layers` layers are the backbone start
    backbone_layers: int | None = None  # default: the model's backbone with --backbone, the stand-in's without
    domain: str | None = None  # a user's domain weights: the `domain` start
    first_rung: int = 100  # iterations of every candidate in the first rung
    eval_every: int = 10  # evaluation interval (iterations): the resolution of the time to target
    eta: int = 3  # each rung keeps 1/eta of its trials and gives them eta times the seconds
    max_iterations: int = 2000  # no trial trains longer
    seeds: int = 3  # seeds of each finalist (seed 0 included), to tell a real difference from noise
    finalists: int = 2  # candidates checked across seeds at the end
    train: dict = field(default_factory=dict)  # TrainConfig options for every trial (batch, protocol, ...)

    def __post_init__(self):
        checks = [
            (0 < self.target_map <= 1, f"--target-map is a fraction in (0, 1] (0.8 = 80 mAP), got {self.target_map}"),
            (self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model}"),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.first_rung >= self.eval_every,
             f"--first-rung ({self.first_rung}) must be at least --eval-every ({self.eval_every})"),
            (self.max_iterations >= self.first_rung,
             f"--max-iterations ({self.max_iterations}) must be at least --first-rung ({self.first_rung})"),
            (self.eta >= 2, f"--eta must be >= 2, got {self.eta}"),
            (self.seeds >= 1 and self.finalists >= 1, "--seeds and --finalists must be >= 1"),
            (all(s >= 32 and s % 32 == 0 for s in self.sizes or ()), f"--size: multiples of 32, got {self.sizes}"),
            (all(v > 0 for v in self.lrs) and self.lrs, f"--lr: numbers above 0, got {self.lrs}"),
            (all(v >= 0 for v in self.burn_ins) and self.burn_ins, f"--burn-in: integers >= 0, got {self.burn_ins}"),
            (all(v >= 0 for v in self.freeze or ()), f"--freeze: integers >= 0, got {self.freeze}"),
            (self.backbone_layers is None or self.backbone_layers >= 1, "--backbone-layers must be >= 1"),
        ]
        checks += [(not isinstance(v, int) or isinstance(v, bool) or v >= 1,
                    f"--{k.replace('_', '-')} must be >= 1, got {v}") for k, v in self.train.items()]
        for ok, message in checks:
            if not ok:
                raise DarktuneError(message)
        for what, path in (("the data set (DATA)", self.data), ("--domain", self.domain),
                           ("--backbone", self.backbone), ("--cfg", self.cfg)):
            if path is not None and not Path(path).exists():
                raise DarktuneError(f"{what}: not found", path=path)
        unknown = [s for s in self.starts or () if s not in START_ORDER + (MODELS[self.model].partial,)]
        if unknown:
            raise DarktuneError(f"--starts: unknown start {unknown[0]!r} (known: scratch, backbone, "
                                f"{MODELS[self.model].partial}, coco, coco-keep, domain)")
        if "domain" in (self.starts or ()) and self.domain is None:
            raise DarktuneError("--starts domain needs --domain FILE (your weights trained on a related data set)")

    @property
    def stand_in(self) -> bool:
        return self.backbone is None

    @property
    def backbone_count(self) -> int:
        if self.backbone_layers is not None:
            return self.backbone_layers
        return MODELS[self.model].backbone_layers if self.backbone else STAND_IN_LAYERS[self.model]

    def axes(self) -> dict:
        """The searched values of each axis, defaults filled in."""
        partial = MODELS[self.model].partial
        starts = self.starts or ("scratch", "backbone", "partial", "coco") + (("domain",) if self.domain else ())
        starts = tuple(dict.fromkeys(partial if s == "partial" else s for s in starts))
        return {"starts": starts, "freeze": tuple(sorted(set(self.freeze or DEFAULT_FREEZE[self.model]))),
                "sizes": tuple(self.sizes or (None,)), "lrs": tuple(self.lrs), "burn_ins": tuple(self.burn_ins)}

    def loaded_layers(self, start: str) -> int:
        """How many leading layers a start loads (a frozen count above it would freeze random layers)."""
        m = MODELS[self.model]
        return {"scratch": 0, "backbone": self.backbone_count, m.partial: m.partial_layers}.get(start, 10**6)

    def identity(self) -> dict:
        """What a search folder records and must match to be continued (paths resolved)."""
        d = asdict(self)
        for key in ("data", "cfg", "backbone", "domain"):
            if d[key] is not None:
                d[key] = str(Path(d[key]).resolve())
        d.update(axes={k: list(v) for k, v in self.axes().items()}, starts=None, freeze=None, sizes=None)
        d["lrs"], d["burn_ins"] = list(self.lrs), list(self.burn_ins)
        return d


@dataclass(frozen=True)
class Candidate:
    """One recipe: a start point, frozen layers, input size (None: the cfg's), learning rate and burn-in."""

    start: str
    freeze: int
    size: int | None
    lr: float
    burn_in: int

    @property
    def name(self) -> str:
        size = f"-{self.size}" if self.size else ""
        return _SAFE.sub("_", f"{self.start}-f{self.freeze}{size}-lr{self.lr:g}-b{self.burn_in}")

    def options(self, settings: RecipeSettings) -> dict:
        """The TrainConfig options of its trials (besides start, freeze, seed, iterations)."""
        opts = {k: v for k, v in settings.train.items() if k != "max_images"}  # max_images: the plan's images
        opts.update(lr=self.lr, burn_in=self.burn_in, eval_every=settings.eval_every, target_map=settings.target_map,
                    stop_at_target=True)
        if self.size:
            opts["size"] = self.size
        if self.start == "coco-keep":
            opts["keep_classes"] = True
        return opts

    def plan(self, settings: RecipeSettings, seed: int, iterations: int) -> RunPlan:
        """The run plan of its trial with `seed`, trained to `iterations` (a later rung extends the same run)."""
        start_key = {"domain": settings.domain, "coco-keep": "coco"}.get(self.start, self.start)
        return RunPlan(name=f"{self.name}-s{seed}", group="grid", start=start_key, start_label=self.start,
                       data=settings.data, freeze=self.freeze, images=settings.train.get("max_images"), seed=seed,
                       iterations=iterations, eval_at=(), options=self.options(settings), model=settings.model)

    def to_dict(self) -> dict:
        return {"name": self.name, "start": self.start, "freeze": self.freeze, "size": self.size, "lr": self.lr,
                "burn_in": self.burn_in}


def candidates(settings: RecipeSettings) -> list[Candidate]:
    """Every combination of the axes, less the frozen counts a start does not load (scratch trains unfrozen)."""
    ax = settings.axes()
    out = []
    for start, freeze, size, lr, burn_in in itertools.product(ax["starts"], ax["freeze"], ax["sizes"], ax["lrs"],
                                                              ax["burn_ins"]):
        if freeze <= settings.loaded_layers(start):
            out.append(Candidate(start, freeze, size, lr, burn_in))
    if not out:
        raise DarktuneError("no candidate left: every frozen count is above the layers each start loads")
    return out

