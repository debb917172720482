"""`Darknet`: a torch module built from a `NetworkSpec`, one submodule per darknet layer, same numbering.

`model.layers[i]` is darknet's layer i. `forward` keeps only the outputs that a later route/shortcut reads
and returns the raw output of every [yolo] layer's input conv, each (B, A*(5+C), H, W); decoding into boxes
lives in `darktune.darknet.boxes` so the training loss can use the raw heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from darktune.darknet.cfg import (ConvSpec, MaxPoolSpec, NetworkSpec, RouteSpec, ShortcutSpec, UpsampleSpec, YoloSpec,
                          infer_shapes)

# darknet's CPU path normalises with variance + 1e-6 (.000001f), its GPU/cuDNN path (where the official weights
# were trained) with 1e-5. 1e-6 is kept: OpenCV DNN and darknet-CPU agree with it (yolov4-tiny raw heads within
# 1.4e-4 of OpenCV vs 1.2e-3 with 1e-5); see docs/darknet_training.md
BN_EPS = 1e-6


class HardMish(nn.Module):
    """darknet's hard_mish (`activations.c`): x for x > 0, x^2/2 + x on (-2, 0], 0 below (= x*clamp(x+2, 0, 2)/2),
    written with darknet's branches so the gradient is darknet's too (1, x + 1, 0; 0 at -2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, torch.where(x > -2, x * (0.5 * x + 1), torch.zeros_like(x)))


def activation(name: str) -> nn.Module:
    """Darknet activation by cfg name (leaky is 0.1, as in darknet)."""
    table = {
        "linear": nn.Identity, "relu": nn.ReLU, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "mish": nn.Mish,
        "swish": nn.SiLU, "elu": nn.ELU, "selu": nn.SELU, "gelu": nn.GELU, "hard_mish": HardMish,
    }
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=True)
    return table[name]()


class ConvBlock(nn.Module):
    """[convolutional]: conv (+ batch norm) + activation. Without BN the conv carries darknet's bias."""

    def __init__(self, spec: ConvSpec, in_channels: int):
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(in_channels, spec.filters, spec.size, spec.stride, spec.pad_pixels,
                              dilation=spec.dilation, groups=spec.groups, bias=not spec.batch_normalize)
        self.bn = nn.BatchNorm2d(spec.filters, eps=BN_EPS, momentum=0.01) if spec.batch_normalize else None
        self.act = activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPool(nn.Module):
    """[maxpool] with darknet's padding: `padding` pixels split as floor(p/2) before, the rest after."""

    def __init__(self, spec: MaxPoolSpec):
        super().__init__()
        self.size, self.stride, self.before = spec.size, spec.stride, spec.padding // 2
        self.padding = spec.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        oh = (h + self.padding - self.size) // self.stride + 1
        ow = (w + self.padding - self.size) // self.stride + 1
        after_h = max(0, (oh - 1) * self.stride + self.size - h - self.before)
        after_w = max(0, (ow - 1) * self.stride + self.size - w - self.before)
        if self.before or after_h or after_w:
            # darknet treats pixels outside the image as -inf for max pooling
            x = F.pad(x, (self.before, after_w, self.before, after_h), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class Route(nn.Module):
    """[route]: concatenate earlier outputs along channels; with groups, take chunk `group_id` of each."""

    def __init__(self, spec: RouteSpec):
        super().__init__()
        self.sources, self.groups, self.group_id = spec.layers, spec.groups, spec.group_id

    def forward(self, outputs: list) -> torch.Tensor:
        parts = [outputs[j] for j in self.sources]
        if self.groups > 1:
            parts = [p.chunk(self.groups, dim=1)[self.group_id] for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


class Shortcut(nn.Module):
    """[shortcut]: residual add of an earlier output, then the activation."""

    def __init__(self, spec: ShortcutSpec):
        super().__init__()
        self.source = spec.from_
        self.act = activation(spec.activation)

    def forward(self, x: torch.Tensor, outputs: list) -> torch.Tensor:
        return self.act(x + outputs[self.source])


class Upsample(nn.Module):
    def __init__(self, spec: UpsampleSpec):
        super().__init__()
        self.stride = spec.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class YoloHead(nn.Module):
    """[yolo]: identity on the raw conv output; holds the head's anchors (pixels of the network input)."""

    def __init__(self, spec: YoloSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("anchors", torch.tensor(spec.masked_anchors, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Darknet(nn.Module):
    """A darknet network. `forward(x)` takes (B, C, H, W) floats in [0, 1] and returns the raw heads."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        shapes = infer_shapes(spec)
        self.layers = nn.ModuleList()
        for i, layer in enumerate(spec.layers):
            self.layers.append(_build(layer, shapes[i].input[0]))
        # Only these outputs are read again later; everything else is dropped as soon as it is consumed.
        keep: set[int] = set()
        for layer in spec.layers:
            if isinstance(layer, RouteSpec):
                keep.update(layer.layers)
            elif isinstance(layer, ShortcutSpec):
                keep.add(layer.from_)
        self.keep = frozenset(keep)
        self.head_indices = spec.yolo_indices

    @property
    def heads(self) -> list[YoloHead]:
        return [self.layers[i] for i in self.head_indices]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.net.height, self.spec.net.width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list = [None] * len(self.layers)
        heads = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Route):
                x = layer(outputs)
            elif isinstance(layer, Shortcut):
                x = layer(x, outputs)
            else:
                x = layer(x)
            if isinstance(layer, YoloHead):
                heads.append(x)
            if i in self.keep:
                outputs[i] = x
        return heads


def _build(layer, in_channels: int) -> nn.Module:
    if isinstance(layer, ConvSpec):
        return ConvBlock(layer, in_channels)
    if isinstance(layer, MaxPoolSpec):
        return MaxPool(layer)
    if isinstance(layer, RouteSpec):
        return Route(layer)
    if isinstance(layer, ShortcutSpec):
        return Shortcut(layer)
    if isinstance(layer, UpsampleSpec):
        return Upsample(layer)
    if isinstance(layer, YoloSpec):
        return YoloHead(layer)
    raise TypeError(f"unsupported layer {type(layer).__name__}")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
