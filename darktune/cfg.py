"""Darknet `.cfg` files <-> typed, validated layer specs (no torch here).

A cfg is a `[net]` section followed by layer sections; every section after `[net]` is one layer, numbered
from 0 as darknet does. `parse_cfg` turns text into a `NetworkSpec` whose layer specs are frozen dataclasses
that validate themselves; every error names the file and line. `format_cfg` writes a spec back as cfg text
that parses to an equal spec. `infer_shapes` walks the layers to compute each output shape, which checks
routes, shortcuts and groups against real channel counts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from darktune.errors import DarktuneError

ACTIVATIONS = ("linear", "leaky", "logistic", "relu", "mish", "swish", "tanh", "elu", "selu", "gelu", "hard_mish")
# Sanity bounds, far past any real darknet network (yolov3: 62M parameters, largest output 32x608x608 = 12M):
# beyond them a cfg is a typo, and building it would try to allocate gigabytes instead of saying so.
MAX_PARAMS = 1_000_000_000
MAX_LAYER_OUTPUT = 1 << 31  # values in one layer's output for one image


# ---------------------------------------------------------------------------------------------- value parsing
def _int(text: str) -> int:
    return int(text.strip())


def _float(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(_float(t) for t in text.split(",") if t.strip())


def _str(text: str) -> str:
    return text.strip()


def _bool(text: str) -> bool:
    value = int(text.strip())
    if value not in (0, 1):
        raise ValueError("expected 0 or 1")
    return bool(value)


_DESCRIBE = {_int: "an integer", _float: "a number", _ints: "a comma-separated list of integers",
             _floats: "a comma-separated list of numbers", _str: "a word", _bool: "0 or 1"}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value)
    return str(value)


# ---------------------------------------------------------------------------------------------- layer specs
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


@dataclass(frozen=True)
class LayerBase:
    loc: Loc = field(default=Loc(), compare=False, repr=False)
    explicit: tuple[str, ...] = field(default=(), compare=False, repr=False)  # keys the cfg set (written back)
    stopbackward: bool = False
    dontload: bool = False
    dontloadscales: bool = False


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
            raise self.loc.error("[yolo] classes and num must be positive")
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


# ---------------------------------------------------------------------------------------------- schema
_COMMON = {"stopbackward": _bool, "dontload": _bool, "dontloadscales": _bool}


def _schema(cls: type, overrides: dict[str, Callable]) -> dict[str, Callable]:
    """cfg key -> value parser, from the dataclass field types."""
    by_type = {"int": _int, "float": _float, "str": _str, "bool": _bool,
               "tuple[int, ...]": _ints, "tuple[float, ...]": _floats}
    schema = {}
    for f in dataclasses.fields(cls):
        if f.name in ("loc", "explicit"):
            continue
        schema[f.name] = by_type[f.type if isinstance(f.type, str) else f.type.__name__]
    schema.update(overrides)
    return schema


SECTIONS: dict[str, tuple[type, dict[str, Callable]]] = {
    "net": (NetParams, _schema(NetParams, {})),
    "convolutional": (ConvSpec, _schema(ConvSpec, {})),
    "maxpool": (MaxPoolSpec, _schema(MaxPoolSpec, {})),
    "route": (RouteSpec, _schema(RouteSpec, {})),
    "shortcut": (ShortcutSpec, {**_schema(ShortcutSpec, {}), "from": _int}),
    "upsample": (UpsampleSpec, _schema(UpsampleSpec, {})),
    "yolo": (YoloSpec, _schema(YoloSpec, {})),
}
SECTIONS["shortcut"][1].pop("from_")
ALIASES = {"network": "net", "conv": "convolutional", "max": "maxpool"}
REQUIRED = {"convolutional": ("filters",), "route": ("layers",), "shortcut": ("from",), "yolo": ("anchors",)}


# ---------------------------------------------------------------------------------------------- parsing
@dataclass
class _Section:
    name: str
    line: int
    options: dict[str, tuple[str, int]]


def _split_sections(text: str, path: str) -> list[_Section]:
    sections: list[_Section] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip().replace("\ufeff", "")
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise DarktuneError(f"malformed section header '{line}'", path=path, line=lineno)
            sections.append(_Section(line[1:-1].strip().lower(), lineno, {}))
            continue
        if "=" not in line:
            raise DarktuneError(f"expected 'key=value', got '{line}'", path=path, line=lineno)
        if not sections:
            raise DarktuneError("key=value before the first [section]", path=path, line=lineno)
        key, value = (part.strip() for part in line.split("=", 1))
        if key in sections[-1].options:
            raise DarktuneError(f"key '{key}' given twice in [{sections[-1].name}] (first at line "
                                f"{sections[-1].options[key][1]})", path=path, line=lineno)
        sections[-1].options[key] = (value, lineno)
    return sections


def _parse_section(sec: _Section, index: int, path: str) -> tuple[dict[str, Any], Loc]:
    name = ALIASES.get(sec.name, sec.name)
    if name not in SECTIONS:
        hint = difflib.get_close_matches(name, list(SECTIONS), n=1)
        raise DarktuneError(f"unknown section [{sec.name}]" + (f" (did you mean [{hint[0]}]?)" if hint else "")
                            + f"; darktune supports: {', '.join(SECTIONS)}", path=path, line=sec.line)
    _, schema = SECTIONS[name]
    loc = Loc(path, sec.line, tuple((k, ln) for k, (_, ln) in sec.options.items()))
    values: dict[str, Any] = {}
    for key, (text, lineno) in sec.options.items():
        parser = schema.get(key) or _COMMON.get(key)
        if parser is None:
            hint = difflib.get_close_matches(key, list(schema) + list(_COMMON), n=1)
            raise DarktuneError(f"unknown key '{key}' in [{sec.name}]" + (f" (did you mean '{hint[0]}'?)" if hint
                                                                          else ""), path=path, line=lineno)
        try:
            values[key] = parser(text)
        except ValueError:
            raise DarktuneError(f"bad value for '{key}' in [{sec.name}]: '{text}' is not {_DESCRIBE[parser]}",
                                path=path, line=lineno) from None
    for key in REQUIRED.get(name, ()):
        if key not in values:
            raise DarktuneError(f"[{sec.name}] (layer {index}) is missing required key '{key}'",
                                path=path, line=sec.line)
    return values, loc


def _resolve(ref: int, index: int, loc: Loc, key: str, section: str) -> int:
    target = index + ref if ref < 0 else ref
    if not 0 <= target < index:
        raise loc.error(f"[{section}] layer {index}: {key}={ref} points to layer {target}, which does not exist "
                        f"before it (valid: 0..{index - 1})", key)
    return target


def _build_layer(name: str, values: dict[str, Any], loc: Loc, index: int) -> LayerSpec:
    explicit = tuple(values)
    if name == "maxpool":
        values.setdefault("stride", 1)
        values.setdefault("size", values["stride"])
        values.setdefault("padding", values["size"] - 1)
    elif name == "route":
        values["layers"] = tuple(_resolve(r, index, loc, "layers", "route") for r in values["layers"])
    elif name == "shortcut":
        values["from_"] = _resolve(values.pop("from"), index, loc, "from", "shortcut")
    elif name == "yolo" and "mask" not in values:  # every anchor; num past the anchors fails validation anyway
        values["mask"] = tuple(range(min(values.get("num", 1), len(values.get("anchors", ())) // 2 + 1)))
    cls = SECTIONS[name][0]
    return cls(loc=loc, explicit=explicit, **values)


def parse_cfg_text(text: str, path: str = "<cfg>") -> NetworkSpec:
    """Parse cfg text; every problem raises DarktuneError naming `path` and the line."""
    sections = _split_sections(text, path)
    if not sections or ALIASES.get(sections[0].name, sections[0].name) != "net":
        raise DarktuneError("the first section must be [net]", path=path, line=sections[0].line if sections else 1)
    net_values, net_loc = _parse_section(sections[0], -1, path)
    net = NetParams(loc=net_loc, explicit=tuple(net_values), **net_values)
    layers: list[LayerSpec] = []
    for index, sec in enumerate(sections[1:]):
        values, loc = _parse_section(sec, index, path)
        name = ALIASES.get(sec.name, sec.name)
        if name == "net":
            raise DarktuneError("[net] may only appear once, as the first section", path=path, line=sec.line)
        layers.append(_build_layer(name, values, loc, index))
    if not layers:
        raise DarktuneError("the cfg has no layers after [net]", path=path, line=sections[0].line)
    spec = NetworkSpec(net, tuple(layers), path)
    _check_heads(spec)
    infer_shapes(spec)
    return spec


def parse_cfg(path: str | Path) -> NetworkSpec:
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, device or FIFO: never read it
        raise DarktuneError("not a regular file", path=str(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DarktuneError("cfg file not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DarktuneError(f"cannot read cfg: {exc}", path=str(path)) from None
    return parse_cfg_text(text, str(path))


def _check_heads(spec: NetworkSpec) -> None:
    for i in spec.yolo_indices:
        yolo = spec.layers[i]
        prev = spec.layers[i - 1] if i > 0 else None
        if not isinstance(prev, ConvSpec):
            raise yolo.loc.error(f"[yolo] layer {i} must follow a [convolutional] layer")
        if prev.filters != yolo.filters_needed:
            raise prev.loc.error(f"[convolutional] layer {i - 1} before [yolo] layer {i} has filters={prev.filters}, "
                                 f"expected (classes+5)*len(mask) = ({yolo.classes}+5)*{len(yolo.mask)} = "
                                 f"{yolo.filters_needed}", "filters")


# ---------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class LayerShape:
    """Input and output (channels, height, width) of one layer, and its cost."""

    index: int
    kind: str
    input: tuple[int, int, int]
    output: tuple[int, int, int]
    bflops: float = 0.0  # 2 x multiply-adds / 1e9, darknet's convention
    params: int = 0


def _conv_shape(layer: ConvSpec, c: int, h: int, w: int, i: int) -> tuple[tuple[int, int, int], float, int]:
    if c % layer.groups:
        raise layer.loc.error(f"layer {i}: {c} input channels not divisible by groups={layer.groups}", "groups")
    p, k, s = layer.pad_pixels, layer.size, layer.stride
    eff = layer.dilation * (k - 1) + 1
    oh, ow = (h + 2 * p - eff) // s + 1, (w + 2 * p - eff) // s + 1
    if oh <= 0 or ow <= 0:
        raise layer.loc.error(f"layer {i}: input {h}x{w} is too small for a {k}x{k} convolution")
    weights = layer.filters * (c // layer.groups) * k * k
    params = weights + layer.filters * (2 if layer.batch_normalize else 1)
    return (layer.filters, oh, ow), 2.0 * weights * oh * ow / 1e9, params


def _pool_shape(layer: MaxPoolSpec, c: int, h: int, w: int, i: int) -> tuple[int, int, int]:
    oh = (h + layer.padding - layer.size) // layer.stride + 1
    ow = (w + layer.padding - layer.size) // layer.stride + 1
    if oh <= 0 or ow <= 0:
        raise layer.loc.error(f"layer {i}: input {h}x{w} is too small for maxpool size {layer.size}")
    return (c, oh, ow)


def _route_shape(layer: RouteSpec, shapes: list[LayerShape], i: int) -> tuple[int, int, int]:
    outs = [shapes[j].output for j in layer.layers]
    if any(o[1:] != outs[0][1:] for o in outs):
        raise layer.loc.error(f"[route] layer {i}: layers {list(layer.layers)} have different sizes "
                              f"{[o[1:] for o in outs]}", "layers")
    for j, o in zip(layer.layers, outs):
        if o[0] % layer.groups:
            raise layer.loc.error(f"[route] layer {i}: layer {j} has {o[0]} channels, not divisible by "
                                  f"groups={layer.groups}", "groups")
    return (sum(o[0] for o in outs) // layer.groups, *outs[0][1:])


def infer_shapes(spec: NetworkSpec, width: int | None = None, height: int | None = None) -> list[LayerShape]:
    """Shapes of every layer for an input of (channels, height, width); raises on any mismatch."""
    c, h, w = spec.net.channels, height or spec.net.height, width or spec.net.width
    shapes: list[LayerShape] = []
    for i, layer in enumerate(spec.layers):
        cost, params = 0.0, 0
        if isinstance(layer, ConvSpec):
            out, cost, params = _conv_shape(layer, c, h, w, i)
        elif isinstance(layer, MaxPoolSpec):
            out = _pool_shape(layer, c, h, w, i)
        elif isinstance(layer, RouteSpec):
            out = _route_shape(layer, shapes, i)
        elif isinstance(layer, ShortcutSpec):
            src = shapes[layer.from_].output
            if src != (c, h, w):
                raise layer.loc.error(f"[shortcut] layer {i}: from={layer.from_} has shape {src}, previous layer "
                                      f"has {(c, h, w)}", "from")
            out = (c, h, w)
        elif isinstance(layer, UpsampleSpec):
            out = (c, h * layer.stride, w * layer.stride)
        else:
            out = (c, h, w)
        shapes.append(LayerShape(i, section_name(layer), (c, h, w), out, cost, params))
        _check_bounds(layer, i, out, sum(s.params for s in shapes))
        c, h, w = out
    return shapes


def _check_bounds(layer: Any, i: int, out: tuple[int, int, int], params: int) -> None:
    key = "filters" if isinstance(layer, ConvSpec) else None
    if out[0] * out[1] * out[2] > MAX_LAYER_OUTPUT:
        raise layer.loc.error(f"layer {i}: output {out[0]}x{out[1]}x{out[2]} has more than {MAX_LAYER_OUTPUT:,} "
                              "values per image: check the sizes, filters and strides", key)
    if params > MAX_PARAMS:
        raise layer.loc.error(f"layer {i}: the network has {params:,} parameters up to here, more than "
                              f"{MAX_PARAMS:,}: check filters and size", key)


# ---------------------------------------------------------------------------------------------- writing
def section_name(layer: Any) -> str:
    for name, (cls, _) in SECTIONS.items():
        if type(layer) is cls:
            return name
    raise TypeError(f"not a layer spec: {type(layer).__name__}")


def _format_section(spec: Any, index: int) -> list[str]:
    name = section_name(spec)
    lines = [f"[{name}]"]
    for key in spec.explicit:
        if key == "layers" and isinstance(spec, RouteSpec):
            value = ",".join(str(j - index) for j in spec.layers)
        elif key == "from" and isinstance(spec, ShortcutSpec):
            value = str(spec.from_ - index)
        else:
            value = _fmt(getattr(spec, key))
        lines.append(f"{key}={value}")
    return lines


def format_cfg(spec: NetworkSpec) -> str:
    """cfg text for `spec`; parse_cfg_text(format_cfg(s)) == s."""
    blocks = ["\n".join(_format_section(spec.net, -1))]
    blocks += ["\n".join(_format_section(layer, i)) for i, layer in enumerate(spec.layers)]
    return "\n\n".join(blocks) + "\n"


def write_cfg(spec: NetworkSpec, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(format_cfg(spec))
    return path
