"""Running a `Darknet` in two halves: layers 0..P-1 without autograd (`run_prefix`, to a `PrefixState`) and
layers P.. from that state (`forward_rest`), with batch norm optionally folded into the prefix convs (`fold_bn`).
Frozen layers (`darktune.train.freeze`) form such a prefix; evaluation (`darktune.eval.evaluate.PrefixCache`)
and training without augmentation (`darktune.train.feature_cache`) keep the first half's result to skip the
frozen layers after their first pass.

When a [route] concatenates outputs that need a gradient with ones that do not (yolov3-tiny's layer 20 =
upsampled head + frozen layer 8) and only a conv reads it, `forward_rest` runs that conv as a sum of convs
over the channel slices, so backward computes the input gradient of the trainable slice only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from darktune.darknet.model import ConvBlock, Route, Shortcut, YoloHead
from darktune.darknet.specs import RouteSpec, ShortcutSpec


def frozen_prefix_length(model: nn.Module) -> int:
    """P such that layers 0..P-1 hold no trainable parameter (their outputs never need a gradient)."""
    p = 0
    for layer in model.layers:
        if any(q.requires_grad for q in layer.parameters()):
            break
        p += 1
    return p


def forward_frozen_prefix(model: nn.Module, x: torch.Tensor, prefix: int,
                          folded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[torch.Tensor]:
    """`model.forward(x)` with layers 0..prefix-1 under torch.no_grad() (same function, no backward cost).
    `folded` (from `fold_frozen_bn`): frozen conv layers computed with their batch norm folded into the conv.

    Also, when a [route] concatenates outputs that need a gradient with frozen ones that do not (yolov3-tiny's
    layer 20 = upsampled head + frozen layer 8) and only a conv reads it, that conv runs as a sum of convs over
    the channel slices, so backward computes the input gradient of the trainable slice only."""
    return forward_rest(model, run_prefix(model, x, prefix, folded), folded)


@dataclass
class PrefixState:
    """What layers `start`.. need from a forward pass through layers 0..start-1: the last output, the earlier
    outputs a later [route]/[shortcut] reads, and the [yolo] outputs already produced."""

    start: int
    x: torch.Tensor
    outputs: dict[int, torch.Tensor]
    heads: list[torch.Tensor]

    def nbytes(self) -> int:
        tensors = [self.x, *self.outputs.values(), *self.heads]
        return sum(t.numel() * t.element_size() for t in tensors)


def memory_budget(cap: int, fraction: float) -> int:
    """Bytes the prefix caches may keep: min(cap, fraction of this machine's RAM) in bytes (`cap` where the RAM size
    cannot be read)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return cap
    return int(min(cap, fraction * total)) if total > 0 else cap


def _read_after(model: nn.Module, start: int) -> set[int]:
    """Indices below `start` whose outputs a layer at or after `start` reads."""
    wanted: set[int] = set()
    for layer in model.spec.layers[start:]:
        if isinstance(layer, RouteSpec):
            wanted.update(layer.layers)
        elif isinstance(layer, ShortcutSpec):
            wanted.add(layer.from_)
    return {i for i in wanted if i < start}


def run_prefix(model: nn.Module, x: torch.Tensor, prefix: int,
               folded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> PrefixState:
    """Layers 0..prefix-1 of `model` on `x` without autograd (the frozen part of `forward_frozen_prefix`)."""
    outputs: dict[int, torch.Tensor] = {}
    heads: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(prefix):
            x = _layer_forward(model, i, x, outputs, folded)
            if isinstance(model.layers[i], YoloHead):
                heads.append(x)
            if i in model.keep:
                outputs[i] = x
    read = _read_after(model, prefix)
    return PrefixState(prefix, x, {i: t for i, t in outputs.items() if i in read}, heads)


def forward_rest(model: nn.Module, state: PrefixState,
                 folded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[torch.Tensor]:
    """Layers state.start.. of `model` from a `PrefixState` (autograd as the caller has it): the [yolo] outputs
    of the whole network, the same tensors `model.forward` gives."""
    outputs: list = [None] * len(model.layers)
    for i, t in state.outputs.items():
        outputs[i] = t
    heads = list(state.heads)
    x = state.x
    grad_enabled = torch.is_grad_enabled()
    parts = None
    for i in range(state.start, len(model.layers)):
        layer = model.layers[i]
        if parts is not None:
            x, parts = _split_conv(layer, parts), None
        elif isinstance(layer, Route) and grad_enabled:
            parts = _mixed_route_parts(model, i, layer, outputs)
            x = layer(outputs) if parts is None else None
        else:
            x = _layer_forward(model, i, x, outputs, folded)
        if isinstance(layer, YoloHead):
            heads.append(x)
        if i in model.keep:
            outputs[i] = x
    return heads


def _layer_forward(model: nn.Module, i: int, x: torch.Tensor | None, outputs,
                   folded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
    """Layer i alone; `outputs`: earlier outputs by index (a list or a dict), for [route] and [shortcut]."""
    layer = model.layers[i]
    if isinstance(layer, Route):
        return layer(outputs)
    if isinstance(layer, Shortcut):
        return layer(x, outputs)
    if folded is not None and i in folded:
        w, b = folded[i]
        c = layer.conv
        return layer.act(F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups))
    return layer(x)


def _mixed_route_parts(model: nn.Module, i: int, route: nn.Module, outputs: list) -> list | None:
    nxt = model.layers[i + 1] if i + 1 < len(model.layers) else None
    if (route.groups != 1 or len(route.sources) < 2 or i in model.keep or not isinstance(nxt, ConvBlock)
            or nxt.conv.groups != 1):
        return None
    parts = [outputs[j] for j in route.sources]
    needs = [p.requires_grad for p in parts]
    return parts if any(needs) and not all(needs) else None


def _split_conv(block: nn.Module, parts: list[torch.Tensor]) -> torch.Tensor:
    """block(cat(parts)) computed as the sum of per-slice convs (weights sliced along input channels)."""
    conv = block.conv
    y, start = None, 0
    for p in parts:
        w = conv.weight[:, start:start + p.shape[1]]
        start += p.shape[1]
        term = F.conv2d(p, w, None, conv.stride, conv.padding, conv.dilation)
        y = term if y is None else y + term
    if conv.bias is not None:
        y = y + conv.bias.view(1, -1, 1, 1)
    if block.bn is not None:
        y = block.bn(y)
    return block.act(y)


@torch.no_grad()
def fold_bn(model: nn.Module, layers) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Conv weights and biases with the inference-mode batch norm folded in, for the listed conv layers:
    w * g / sqrt(var + eps), b - mean * g / sqrt(var + eps). A snapshot: valid while those tensors stay."""
    folded = {}
    for i in layers:
        block = model.layers[i]
        bn = getattr(block, "bn", None)
        if bn is None:
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = block.conv.weight * scale.view(-1, 1, 1, 1)
        if block.conv.weight.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)
        folded[i] = (w, bn.bias - bn.running_mean * scale)
    return folded
