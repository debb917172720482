"""Inference copies of a `Darknet`: batch norm folded into the convolutions exactly, and convolutions that
add up long dot products routed to an accurate kernel.

Why (yolov3-tiny at 416, COCO weights, real images, max abs difference of the raw heads (magnitude ~25)
against a float64 run of the unfused model; figures from an AMD EPYC, torch 2.13, 2 threads):
- Accumulation is what matters. torch's default CPU convolution (oneDNN) sums each output's
  in_channels * k * k products with ~10x the rounding of a blocked GEMM on long dot products: on layer 12
  (512 -> 1024, 3x3: 4,608-term dot products) it alone puts 1.6e-4 on outputs of magnitude ~40 (GEMM:
  1.7e-5), and the training model's heads end 1.1e-4 off. `GemmConv2d` sends convs with long dot products
  (few, at small spatial sizes) to ATen's im2col + GEMM kernel; oneDNN keeps the high-resolution layers,
  whose short dot products it sums about as well as anything else. Cost: +5% CPU time per image.
- Folding batch norm (w' = w * g / sqrt(var + eps), b' = beta + (b - mean) * g / sqrt(var + eps)) in float64
  and rounding once gives the correctly rounded weights, which torch and the ONNX export then share bit for
  bit. The float32 folding that OpenCV DNN does itself differs by <= 2.4e-7 relative per weight, ~1e-5 on the
  heads: not a source of the disagreement, and removing BN saves ~4% CPU time.
- What is left is ordinary float32 rounding over 13 convs: torch ends within 9.4e-5 of float64 (worst of 10
  test images), ONNX Runtime 2.7e-5, OpenCV DNN without Winograd 3.5e-5; pairwise <= 8.8e-5.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Convs whose dot products have at least this many terms (in_channels / groups * kh * kw) take the GEMM
# path. yolov3-tiny: layers 10, 12, 14, 21 (2,304..4,608 terms, 13x13 and 26x26 outputs).
LONG_DOT = 2048


class GemmConv2d(nn.Conv2d):
    """A Conv2d whose CPU forward calls ATen's im2col + BLAS GEMM kernel (`aten::thnn_conv2d`, the kernel
    torch falls back to without oneDNN) explicitly, so no process-wide backend flag is touched: slower on
    large images, much more accurate for long dot products. Same parameters and state_dict as nn.Conv2d;
    on other devices, or with groups, dilation or padding modes the kernel lacks, a plain Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = (x.device.type != "cpu" or self.groups != 1 or self.dilation != (1, 1)
                 or self.padding_mode != "zeros" or isinstance(self.padding, str))
        if plain:
            return super().forward(x)
        return torch.ops.aten.thnn_conv2d(x, self.weight, list(self.kernel_size), self.bias, list(self.stride),
                                          list(self.padding))


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv with `bn` (eval statistics) folded in, computed in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (out,)
    weight = conv.weight.double() * scale[:, None, None, None]  # (out, in/groups, kh, kw)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    return weight, bn.bias.double() + (bias - bn.running_mean.double()) * scale


def _dot_length(conv: nn.Conv2d) -> int:
    return conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]


def fuse_model(model: nn.Module, *, precise: bool = True, long_dot: int = LONG_DOT) -> nn.Module:
    """A deep copy of a `Darknet` for inference only: every conv + BN pair is one conv with a bias, folded
    in float64 and rounded once to the model's dtype; values below the smallest normal float32 are flushed
    to zero (denormals make CPU convolutions ~10x slower). With `precise`, convs with at least `long_dot`
    terms per output become `GemmConv2d`. Eval mode, no gradients; `model` is left untouched. Not for
    training, nor for `save_weights` (the darknet layout keeps BN)."""
    fused = copy.deepcopy(model).eval()
    dtype = next(model.parameters()).dtype
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for block in fused.layers:
            conv = getattr(block, "conv", None)
            if conv is None:
                continue
            bn = getattr(block, "bn", None)
            kind = GemmConv2d if precise and _dot_length(conv) >= long_dot else nn.Conv2d
            if bn is None and kind is type(conv):
                continue
            weight, bias = fold_batch_norm(conv, bn) if bn is not None else (conv.weight, conv.bias)
            new = kind(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       dilation=conv.dilation, groups=conv.groups, bias=bias is not None,
                       device=conv.weight.device, dtype=dtype)
            weight = weight.to(dtype)
            weight[weight.abs() < tiny] = 0
            new.weight.copy_(weight)
            if bias is not None:
                new.bias.copy_(bias.to(dtype))
            block.conv, block.bn = new, None
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused
