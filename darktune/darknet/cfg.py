"""Darknet `.cfg` files <-> typed, validated layer specs (no torch here).

A cfg is a `[net]` section followed by layer sections; every section after `[net]` is one layer, numbered
from 0 as darknet does. `parse_cfg` turns text into a `NetworkSpec` whose layer specs are frozen dataclasses
that validate themselves; every error names the file and line. `format_cfg` writes a spec back as cfg text
that parses to an equal spec. The specs themselves live in `darktune.darknet.specs`, shape inference in
`darktune.darknet.shapes`; both are re-exported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from darktune.errors import DarktuneError
from darktune.darknet.shapes import LayerShape, infer_shapes  # noqa: F401  (re-exported: cfg is the public entry)
from darktune.darknet.specs import (ACTIVATIONS, ConvSpec, LayerBase, LayerSpec, Loc, MaxPoolSpec,  # noqa: F401
                            NetParams, NetworkSpec, RouteSpec, ShortcutSpec, UpsampleSpec, YoloSpec, section_name)


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
    for message in not_honoured(spec):
        warnings.warn(message, CfgWarning, stacklevel=2)
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


# ---------------------------------------------------------------------------------------------- not honoured
class CfgWarning(UserWarning):
    """A cfg key darktune reads but does not act on (harmless for inference; named, never silent)."""


# Keys darknet acts on that darktune does not, set to a value other than the default. REFUSED: a run would
# compute something else than darknet (one-line error at the key's line). WARNED: inference (detect, export,
# OpenCV) is unaffected; a warning names the key and what darktune does instead. docs/darknet.md lists both.
REFUSED = {
    ("net", "adam"): "darktune trains with SGD (momentum, decay); set adam=0",
    ("net", "cutmix"): "not implemented (darknet itself does not apply cutmix to detectors)",
    ("net", "label_smooth_eps"): "label smoothing is not implemented",
    ("yolo", "label_smooth_eps"): "label smoothing is not implemented",
    ("yolo", "focal_loss"): "the focal class loss is not implemented",
    ("yolo", "counters_per_class"): "class-balanced loss weights are not implemented",
    ("*", "dontload"): "darktune loads every conv of the weights file (use --upto N to load the first N layers)",
    ("*", "dontloadscales"): "darktune loads every batch-norm scale of the weights file",
}
WARNED = {
    ("yolo", "max_delta"): "darknet clips its training deltas to +-max_delta; darktune's training does not clip",
    ("yolo", "nms_kind"): "darktune's detect and map use greedy class-wise NMS (greedynms), as OpenCV DNN does",
    ("yolo", "beta_nms"): "used by diounms only; darktune's NMS is greedy",
    ("net", "angle"): "darknet's detector training does not rotate images either",
    ("net", "aspect"): "darknet's detector training does not use it either",
    ("net", "optimized_memory"): "a darknet GPU memory setting, no effect on results",
    ("net", "workspace_size_limit_MB"): "a darknet cuDNN workspace setting, no effect on results",
    ("net", "loss_scale"): "darknet's mixed-precision loss scale; darktune trains in float32",
    ("net", "dynamic_minibatch"): "darktune keeps the batch size when multi-scale changes the network size",
    ("net", "min_crop"): "for darknet classifiers, not detectors",
    ("net", "max_crop"): "for darknet classifiers, not detectors",
    ("net", "inputs"): "for darknet's non-image networks",
    ("net", "track"): "for darknet's recurrent (video) training",
    ("net", "time_steps"): "for darknet's recurrent training",
    ("net", "B1"): "Adam's beta1; darktune trains with SGD",
    ("net", "B2"): "Adam's beta2; darktune trains with SGD",
    ("net", "eps"): "Adam's epsilon; darktune trains with SGD",
}
_SAME_AS_DEFAULT = {("yolo", "nms_kind"): ("default", "greedynms")}  # values darktune does honour


def _set(spec: Any, key: str, section: str) -> bool:
    """The cfg set `key` to a value that makes darknet behave other than its default (and darktune's)."""
    if key not in spec.explicit:
        return False
    value = getattr(spec, key)
    if (section, key) in _SAME_AS_DEFAULT:
        return value not in _SAME_AS_DEFAULT[(section, key)]
    field_ = next(f for f in dataclasses.fields(spec) if f.name == key)
    return value != field_.default


def not_honoured(spec: NetworkSpec) -> list[str]:
    """Raise DarktuneError (file:line, naming the key) for the first REFUSED key the cfg sets; return one line
    per WARNED key it sets (each once per cfg, at its first section)."""
    messages: dict[tuple[str, str], str] = {}
    sections = [("net", spec.net)] + [(section_name(layer), layer) for layer in spec.layers]
    for section, layer in sections:
        for (where, key), why in REFUSED.items():
            if where in (section, "*") and hasattr(layer, key) and _set(layer, key, section):
                raise layer.loc.error(f"[{section}] {key}={_fmt(getattr(layer, key))} is not supported: {why}", key)
        for (where, key), why in WARNED.items():
            if where == section and (where, key) not in messages and _set(layer, key, section):
                line = layer.loc.line_of(key)
                messages[(where, key)] = (f"{spec.path}:{line}: [{section}] {key}={_fmt(getattr(layer, key))} is "
                                          f"read but not acted on: {why}")
    return list(messages.values())


# ---------------------------------------------------------------------------------------------- writing
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
