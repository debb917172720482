"""Typed darknet layer specs: frozen dataclasses that validate themselves (no parsing, no torch).

`NetworkSpec` is a `[net]` section (`NetParams`) plus layers numbered from 0 as darknet does. Every spec
remembers where it was written (`Loc`) so that validation errors name the file and line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from darktune.errors import DarktuneError
from darktune.numbers import Domain, integer, real

ACTIVATIONS = ("linear", "leaky", "logistic", "relu", "mish", "swish", "tanh", "elu", "selu", "gelu", "hard_mish")


@dataclass(frozen=True)
class Loc:
    """Where a section and each of its keys were written (for error messages)."""

    path: str = "<cfg>"
    line: int = 0
    keys: tuple[tuple[str, int], ...] = ()

    def line_of(self, key: str) -> int:
        return dict(self.keys).get(key, self.line)

    def error(self, message: str, key: str | None = None) -> DarktuneError:
        return DarktuneError(message, path=self.path, line=self.line_of(key) if key else self.line)


# Domains of cfg keys whose nonsense values change what the network computes or asks for gigabytes (checked at
# parse time, naming the file and line; darktune.numbers). Keys not listed are checked by each spec's own rules.
KEY_DOMAINS: dict[str, dict[str, Domain]] = {
    # a pooling window past 64 pixels is a typo (darknet's SPP blocks pool 5, 9, 13); its padded copy of the
    # input grows with the square of the size
    "maxpool": {"size": integer(1, 64), "stride": integer(1, 64), "padding": integer(0, 127)},
    "convolutional": {"size": integer(1, 64), "stride": integer(1, 64), "dilation": integer(1, 64),
                      "padding": integer(0, 128)},
    "upsample": {"stride": integer(1, 64)},
    # decode: x = sigmoid(t) * s - (s - 1) / 2 must grow with t and reach the cell's edges (s >= 1; darknet's
    # cfgs use 1.05 to 2.0); random: multi-scale's coefficient (sizes from size/c to size*c; 1 = darknet's 1.4)
    "yolo": {"scale_x_y": real(1, 4), "random": real(0, 2)},
}


@dataclass(frozen=True)
class LayerBase:
    loc: Loc = field(default=Loc(), compare=False, repr=False)
    explicit: tuple[str, ...] = field(default=(), compare=False, repr=False)  # keys the cfg set (written back)
    stopbackward: bool = False
    dontload: bool = False
    dontloadscales: bool = False

    def check_domains(self, section: str) -> None:
        """Every key of KEY_DOMAINS[section] within its domain, else an error naming the file and the key's line."""
        for key, domain in KEY_DOMAINS.get(section, {}).items():
            value = getattr(self, key)
            problem = domain.problem(value)
            if problem:
                raise self.loc.error(f"[{section}] {key} {problem}, got {value}", key)


@dataclass(frozen=True)
class NetParams(LayerBase):
    batch: int = 1
    subdivisions: int = 1
    width: int = 416
    height: int = 416
    channels: int = 3
    momentum: float = 0.9
    decay: float = 0.0001
    angle: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    hue: float = 0.0
    aspect: float = 1.0
    learning_rate: float = 0.001
    burn_in: int = 0
    power: float = 4.0
    max_batches: int = 0
    policy: str = "constant"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    step: int = 1
    gamma: float = 1.0
    flip: bool = True
    mosaic: bool = False
    mixup: bool = False
    cutmix: bool = False
    blur: int = 0
    letter_box: bool = False
    gaussian_noise: bool = False
    label_smooth_eps: float = 0.0
    max_chart_loss: float = 20.0
    adam: bool = False
    B1: float = 0.9
    B2: float = 0.999
    eps: float = 1e-7
    inputs: int = 0
    min_crop: int = 0
    max_crop: int = 0
    track: int = 0
    time_steps: int = 1
    loss_scale: float = 1.0
    dynamic_minibatch: bool = False
    optimized_memory: int = 0
    workspace_size_limit_MB: int = 1024

    def __post_init__(self) -> None:
        for key in ("batch", "subdivisions", "width", "height", "channels"):
            if getattr(self, key) <= 0:
                raise self.loc.error(f"[net] {key} must be positive, got {getattr(self, key)}", key)
        if self.batch % self.subdivisions:
            raise self.loc.error(f"[net] batch={self.batch} is not divisible by subdivisions={self.subdivisions}",
                                 "subdivisions")
        if self.policy not in ("constant", "steps", "step", "exp", "poly", "sig", "random", "sgdr"):
            raise self.loc.error(f"[net] unknown policy '{self.policy}'", "policy")
        if self.policy == "steps" and len(self.steps) != len(self.scales):
            raise self.loc.error(f"[net] steps has {len(self.steps)} values but scales has {len(self.scales)}",
                                 "scales")
        if self.learning_rate < 0 or not 0 <= self.momentum < 1 or self.decay < 0:
            raise self.loc.error("[net] learning_rate and decay must be >= 0 and momentum in [0, 1)")


@dataclass(frozen=True)
class ConvSpec(LayerBase):
    filters: int = 1
    size: int = 1
    stride: int = 1
    pad: bool = False
    padding: int = 0
    groups: int = 1
    dilation: int = 1
    batch_normalize: bool = False
    activation: str = "logistic"  # darknet's default for [convolutional]

    def __post_init__(self) -> None:
        for key in ("filters", "size", "stride", "groups", "dilation"):
            if getattr(self, key) <= 0:
                raise self.loc.error(f"[convolutional] {key} must be positive, got {getattr(self, key)}", key)
        self.check_domains("convolutional")
        if self.padding < 0:
            raise self.loc.error("[convolutional] padding must be >= 0", "padding")
        if self.activation not in ACTIVATIONS:
            raise self.loc.error(f"[convolutional] unknown activation '{self.activation}' "
                                 f"(known: {', '.join(ACTIVATIONS)})", "activation")
        if self.filters % self.groups:
            raise self.loc.error(f"[convolutional] filters={self.filters} not divisible by groups={self.groups}",
                                 "groups")

    @property
    def pad_pixels(self) -> int:
        return self.size // 2 if self.pad else self.padding


@dataclass(frozen=True)
class MaxPoolSpec(LayerBase):
    size: int = 1
    stride: int = 1
    padding: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0 or self.stride <= 0 or self.padding < 0:
            raise self.loc.error("[maxpool] size and stride must be positive and padding >= 0")
        self.check_domains("maxpool")


@dataclass(frozen=True)
class RouteSpec(LayerBase):
    layers: tuple[int, ...] = ()  # absolute indices (resolved from the cfg's relative ones)
    groups: int = 1
    group_id: int = 0

    def __post_init__(self) -> None:
        if not self.layers:
            raise self.loc.error("[route] needs layers=", "layers")
        if self.groups <= 0 or not 0 <= self.group_id < self.groups:
            raise self.loc.error(f"[route] group_id={self.group_id} must be in [0, groups={self.groups})", "group_id")


@dataclass(frozen=True)
class ShortcutSpec(LayerBase):
    from_: int = 0  # absolute index
    activation: str = "linear"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise self.loc.error(f"[shortcut] unknown activation '{self.activation}'", "activation")


@dataclass(frozen=True)
class UpsampleSpec(LayerBase):
    stride: int = 2

    def __post_init__(self) -> None:
        if self.stride <= 0:
            raise self.loc.error("[upsample] stride must be a positive integer", "stride")
        self.check_domains("upsample")


@dataclass(frozen=True)
class YoloSpec(LayerBase):
    mask: tuple[int, ...] = ()
    anchors: tuple[float, ...] = ()
    classes: int = 20
    num: int = 1
    jitter: float = 0.2
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    random: float = 0.0
    scale_x_y: float = 1.0
    iou_normalizer: float = 0.75
    cls_normalizer: float = 1.0
    obj_normalizer: float = 1.0
    iou_loss: str = "mse"
    iou_thresh: float = 1.0
    nms_kind: str = "default"
    beta_nms: float = 0.6
    resize: float = 1.0
    max_delta: float = 0.0
    new_coords: bool = False
    label_smooth_eps: float = 0.0
    focal_loss: bool = False
    max: int = 200
    counters_per_class: str = ""

    def __post_init__(self) -> None:
        if self.classes <= 0 or self.num <= 0:
            raise self.loc.error("[yolo] classes and num must be positive", "classes" if self.classes <= 0 else "num")
        if len(self.anchors) != 2 * self.num:
            raise self.loc.error(f"[yolo] anchors has {len(self.anchors)} numbers, expected 2*num = {2 * self.num}",
                                 "anchors")
        if any(a <= 0 for a in self.anchors):
            raise self.loc.error("[yolo] anchors must be positive", "anchors")
        if not self.mask or any(not 0 <= m < self.num for m in self.mask):
            raise self.loc.error(f"[yolo] mask entries must be in [0, num={self.num})", "mask")
        if self.iou_loss not in ("mse", "iou", "giou", "diou", "ciou"):
            raise self.loc.error(f"[yolo] unknown iou_loss '{self.iou_loss}'", "iou_loss")
        if self.nms_kind not in ("default", "greedynms", "diounms", "cornersnms"):
            raise self.loc.error(f"[yolo] unknown nms_kind '{self.nms_kind}'", "nms_kind")
        self.check_domains("yolo")

    @property
    def masked_anchors(self) -> tuple[tuple[float, float], ...]:
        return tuple((self.anchors[2 * m], self.anchors[2 * m + 1]) for m in self.mask)

    @property
    def filters_needed(self) -> int:
        return (self.classes + 5) * len(self.mask)


LayerSpec = Union[ConvSpec, MaxPoolSpec, RouteSpec, ShortcutSpec, UpsampleSpec, YoloSpec]


@dataclass(frozen=True)
class NetworkSpec:
    net: NetParams
    layers: tuple[LayerSpec, ...]
    path: str = field(default="<cfg>", compare=False)

    @property
    def yolo_indices(self) -> tuple[int, ...]:
        return tuple(i for i, layer in enumerate(self.layers) if isinstance(layer, YoloSpec))

    @property
    def num_classes(self) -> int:
        yolos = [self.layers[i] for i in self.yolo_indices]
        return yolos[0].classes if yolos else 0

    def with_classes(self, classes: int) -> "NetworkSpec":
        """The same network re-headed for `classes`: each [yolo] and the conv feeding it change."""
        if classes <= 0:
            raise DarktuneError(f"number of classes must be positive, got {classes}")
        layers = list(self.layers)
        for i in self.yolo_indices:
            yolo = layers[i]
            layers[i] = _replace(yolo, classes=classes)
            conv = layers[i - 1]
            layers[i - 1] = _replace(conv, filters=(classes + 5) * len(yolo.mask))
        return NetworkSpec(self.net, tuple(layers), self.path)

    def with_size(self, width: int, height: int | None = None) -> "NetworkSpec":
        return NetworkSpec(_replace(self.net, width=width, height=height or width), self.layers, self.path)


def _replace(spec: Any, **changes: Any) -> Any:
    explicit = tuple(dict.fromkeys(spec.explicit + tuple(changes)))
    return dataclasses.replace(spec, explicit=explicit, **changes)



SECTION_NAMES = {NetParams: "net", ConvSpec: "convolutional", MaxPoolSpec: "maxpool", RouteSpec: "route",
                 ShortcutSpec: "shortcut", UpsampleSpec: "upsample", YoloSpec: "yolo"}


def section_name(layer: Any) -> str:
    """The cfg section name of a spec: ConvSpec -> "convolutional"."""
    try:
        return SECTION_NAMES[type(layer)]
    except KeyError:
        raise TypeError(f"not a layer spec: {type(layer).__name__}") from None
