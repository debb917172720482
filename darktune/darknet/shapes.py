"""Shape inference over a `NetworkSpec`: each layer's input/output (C, H, W), BFLOPs and parameters.

Walking the layers checks routes, shortcuts and groups against real channel counts, and refuses networks
whose sizes are clearly typos (bounds below) before anything tries to allocate them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from darktune.darknet.specs import (ConvSpec, MaxPoolSpec, NetworkSpec, RouteSpec, ShortcutSpec, UpsampleSpec,
                            section_name)

# Sanity bounds, far past any real darknet network (yolov3: 62M parameters, largest output 32x608x608 = 12M):
# beyond them a cfg is a typo, and building it would try to allocate gigabytes instead of saying so.
MAX_PARAMS = 1_000_000_000
MAX_LAYER_OUTPUT = 1 << 31  # values in one layer's output for one image



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
