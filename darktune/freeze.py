"""Freezing darknet layers so they get no update at all, and the proof that they did not change.

A frozen layer: its parameters have ``requires_grad=False`` (so the optimizer, built only from parameters that
require grad, holds no state for them and weight decay cannot reach them) and its batch norm is a
`FrozenBatchNorm2d`, which stays in inference mode whatever ``model.train()`` says, so the running statistics
never move. When the frozen layers form a prefix 0..P-1, `forward_frozen_prefix` runs that prefix under
``torch.no_grad()``: nothing of it is kept for backward (its outputs cannot need a gradient: their inputs are
the image and frozen weights), and the first trainable layer computes only its weight gradient.

`layer_digests` hashes every conv layer's tensors (darknet order: BN bias, scale, mean, variance, weights; or
bias, weights) so `freeze_proof` can show the frozen layers are bit-for-bit what they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from darktune.cfg import ConvSpec
from darktune.errors import DarktuneError


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that always normalises with its running statistics and never updates them."""

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        return super().train(False)


def _swap_bn(block: nn.Module, frozen: bool) -> None:
    bn = block.bn
    want = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    if type(bn) is want:
        return
    new = want(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
               track_running_stats=bn.track_running_stats).to(bn.weight.device, bn.weight.dtype)
    new.load_state_dict(bn.state_dict())
    if frozen:
        new.eval()
    else:
        new.train(block.training)
    block.bn = new


def parse_layer_list(text: str, n_layers: int) -> list[int]:
    """'0-12,15,20' -> sorted layer indices; every index must exist."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise DarktuneError(f"bad layer list '{text}': '{part}' is not N or N-M") from None
        if not 0 <= first <= last < n_layers:
            raise DarktuneError(f"bad layer list '{text}': '{part}' is outside 0..{n_layers - 1}")
        out.update(range(first, last + 1))
    return sorted(out)


def set_frozen(model: nn.Module, frozen: Iterable[int]) -> list[int]:
    """Make exactly the layers in `frozen` frozen (others trainable, BN back to normal). Returns the frozen
    conv layers. Call before building the optimizer; the optimizer must be rebuilt after a change."""
    frozen = set(frozen)
    n = len(model.layers)
    bad = [i for i in frozen if not 0 <= i < n]
    if bad:
        raise DarktuneError(f"cannot freeze layers {bad}: the network has layers 0..{n - 1}")
    frozen_convs = []
    for i, layer in enumerate(model.layers):
        is_frozen = i in frozen
        if getattr(layer, "bn", None) is not None:
            _swap_bn(layer, is_frozen)  # first: the swap makes new parameter objects
        for p in layer.parameters():
            p.requires_grad_(not is_frozen)
        if is_frozen and isinstance(model.spec.layers[i], ConvSpec):
            frozen_convs.append(i)
    return frozen_convs


def frozen_layers(model: nn.Module) -> list[int]:
    """Conv layers whose parameters are all frozen."""
    return [i for i, spec in enumerate(model.spec.layers)
            if isinstance(spec, ConvSpec) and not any(p.requires_grad for p in model.layers[i].parameters())]


def frozen_prefix_length(model: nn.Module) -> int:
    """P such that layers 0..P-1 hold no trainable parameter (their outputs never need a gradient)."""
    p = 0
    for layer in model.layers:
        if any(q.requires_grad for q in layer.parameters()):
            break
        p += 1
    return p


def forward_frozen_prefix(model: nn.Module, x: torch.Tensor, prefix: int) -> list[torch.Tensor]:
    """`model.forward(x)` with layers 0..prefix-1 under torch.no_grad() (same numbers, no backward cost)."""
    from darktune.model import Route, Shortcut, YoloHead

    outputs: list = [None] * len(model.layers)
    heads = []
    grad_enabled = torch.is_grad_enabled()
    for i, layer in enumerate(model.layers):
        with torch.set_grad_enabled(grad_enabled and i >= prefix):
            if isinstance(layer, Route):
                x = layer(outputs)
            elif isinstance(layer, Shortcut):
                x = layer(x, outputs)
            else:
                x = layer(x)
        if isinstance(layer, YoloHead):
            heads.append(x)
        if i in model.keep:
            outputs[i] = x
    return heads


class PrefixFrozenModel(nn.Module):
    """Wraps a `Darknet` so that its forward runs the frozen prefix without autograd. Parameters, buffers and
    state_dict are the wrapped model's (DDP and optimizers see the same tensors)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.prefix = frozen_prefix_length(model)

    def refresh(self) -> int:
        self.prefix = frozen_prefix_length(self.model)
        return self.prefix

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.prefix == 0:
            return self.model(x)
        return forward_frozen_prefix(self.model, x, self.prefix)


def layer_tensors(block: nn.Module) -> list[torch.Tensor]:
    """One conv block's tensors in darknet file order (what the .weights file stores)."""
    if block.bn is not None:
        bn = block.bn
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, block.conv.weight]
    return [block.conv.bias, block.conv.weight]


def layer_digests(model: nn.Module) -> dict[int, str]:
    """sha256 of each conv layer's float32 tensors (weights and BN statistics), by layer index."""
    digests = {}
    for i, spec in enumerate(model.spec.layers):
        if not isinstance(spec, ConvSpec):
            continue
        h = hashlib.sha256()
        for t in layer_tensors(model.layers[i]):
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        digests[i] = h.hexdigest()
    return digests


def freeze_proof(before: dict[int, str], after: dict[int, str], frozen: Iterable[int],
                 always_frozen: Iterable[int] | None = None) -> dict:
    """Per-layer before/after digests and the verdicts. `frozen`: layers frozen at some point;
    `always_frozen`: layers frozen for the whole run (those must be unchanged; default: `frozen`)."""
    frozen = sorted(set(frozen))
    must = sorted(set(frozen if always_frozen is None else always_frozen))
    layers = {str(i): {"before": before[i], "after": after.get(i), "changed": before[i] != after.get(i),
                       "frozen": i in frozen} for i in sorted(before)}
    changed_frozen = [i for i in must if before.get(i) != after.get(i)]
    trainable = [i for i in before if i not in set(must)]
    return {
        "frozen_layers": must,
        "frozen_unchanged": not changed_frozen,
        "frozen_changed": changed_frozen,
        "trainable_changed": [i for i in trainable if before[i] != after.get(i)],
        "trainable_unchanged": [i for i in trainable if before[i] == after.get(i)],
        "layers": layers,
    }
