"""Error budgets for the parity tests: how far a float32 runtime may be from a float64 run of the same network,
derived from the arithmetic (per model, input and output element), not fitted to one CPU.

The model (the standard statistical model of rounding: Wilkinson; Higham & Mary, "A new approach to
probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019): each float32 operation rounds with a
relative error d, |d| <= u = 2^-24, the errors independent, of mean zero (round-to-nearest) and variance at
most u^2/3 (uniform). A dot product of n terms, summed in any order and blocking (oneDNN, MLAS, BLAS, OpenCV;
AVX-512, AVX2 or SSE; with or without FMA), rounds at most n + extra times, each time a value no larger in
magnitude than m = |w|.|x| + |b|, so its own error has variance at most (n + extra) * u^2/3 * m^2. The order
of summation, and so the CPU's vector width, does not enter: only n and the magnitudes do.

Per conv layer, elementwise over its output (W: the folded weights, b: the folded bias, x: the float64
reference input, v: the error variance the input already carries):

    v_out = W^2 * v  +  (K + extra) * u^2/3 * (|W| * |x| + |b|)^2

`*` is the convolution; K = in_channels/groups * kh * kw (the dot-product length: 4,608 for layer 12 of
yolov3-tiny); |W| * |x| + |b| are the magnitude sums of a float64 pass of the "absolute" network; `extra`
counts the roundings outside the dot product (bias add, output store, and the runtime's own weight rounding:
1 when batch norm is folded in float64 and rounded once (torch, ONNX Runtime), 5 when it is folded or applied
in float32 (OpenCV DNN: add, sqrt, divide, multiply; torch's training model: batch norm after the conv)).
W^2 * v propagates the input errors as independent noise (the quantisation-noise model of signal processing):
the worst case |W| * e instead, with a rigorous per-layer bound, grows about 20x per layer and ends near 1e10
on yolov3-tiny's heads, which no test could fail. Activations: v * s^2 with s the local slope at the float64
pre-activation (leaky: 1 above zero, 0.1 below; logistic: its derivative at the error's far end), the Lipschitz
constant (1) within KINK_SIGMAS error sigmas of leaky's kink, plus one rounding u^2/3 * y^2. (The Lipschitz
constant everywhere made the budget of the deeper yolov4-tiny ~20x too loose to catch float16 weights: the
leaky layers damp the errors of their negative half by 10.) Max pooling takes the largest variance in the
window (the output is one of its inputs), upsampling and routes move the variance with the values; a shortcut
adds the two.

The budget of an output element is lam * sqrt(v): lam from a Gaussian tail with a union bound over every
compared head element of the batch at failure probability 1e-9 (2 N exp(-lam^2/2) <= 1e-9: lam = 8.3 for
yolov3-tiny at 416 with two images). The typical maximum of N Gaussians is about 4.5 sigma, so the budget
leaves about 2x for the model's approximations (correlated errors, non-uniform rounding) and no more.

Winograd (OpenCV's default for 3x3 stride-1 convs, F(6x6, 3x3) on 8x8 tiles): the output of a tile is
A^T [sum_c (G g G^T) . (B^T d B)] A, whose rounding errors scale with the magnitudes of the transformed terms
rather than with |g|.|d|: per output m = |A^T| [sum_c (|G| |g_c| |G^T|) . (|B^T| |d_c| |B|)] |A| (every
intermediate of the tile is bounded by it; the product |A||G||B| is invariant under the rescaling of G and A
by which implementations differ), and n = C + 40 roundings on the path (the channel sum, the 8-point
transforms each way). A much looser budget: OpenCV with Winograd is also required to give the same
boxes.

A runtime against another: the sum of their two budgets against float64.

Decoded outputs (sigmoid, exp, grid offsets; `darktune.darknet.boxes.decode`) are elementwise monotone in the raw
value, so a raw budget e maps onto max |decode(r +- e) - decode(r)| plus the decode's own float32 roundings
(DECODE_ROUNDINGS ulps of the value, the transcendental functions counted as 4 ulps each).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from darktune.darknet.boxes import decode
from darktune.deploy.fuse import fold_batch_norm
from darktune.darknet.model import ConvBlock, Darknet, MaxPool, Route, Shortcut, Upsample, YoloHead

U = 2.0 ** -24  # float32 unit roundoff
FAILURE_PROBABILITY = 1e-9  # of the probabilistic bound, over the whole network and batch
DECODE_ROUNDINGS = 16  # float32 roundings of one decoded value (exp or sigmoid ~4 each, scale, offset, divide)
LIPSCHITZ = {"linear": 1.0, "leaky": 1.0, "relu": 1.0, "logistic": 0.25, "tanh": 1.0}
KINK_SIGMAS = 10.0  # an error this many sigmas wide around a kink of leaky is taken to cross it

# OpenCV DNN's Winograd F(6x6, 3x3) (interpolation points 0, +-1, +-2, +-1/2, inf; Lavin & Gray 2016)
_AT = np.array([[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0], [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0],
                [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 0], [0, 1, 1, 16, 16, 1 / 16, 1 / 16, 0],
                [0, 1, -1, 32, -32, 1 / 32, -1 / 32, 1]])
_G = np.array([[1, 0, 0], [-2 / 9, -2 / 9, -2 / 9], [-2 / 9, 2 / 9, -2 / 9], [1 / 90, 1 / 45, 2 / 45],
               [1 / 90, -1 / 45, 2 / 45], [32 / 45, 16 / 45, 8 / 45], [32 / 45, -16 / 45, 8 / 45], [0, 0, 1]])
_BT = np.array([[1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0], [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
                [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0], [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
                [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0], [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
                [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0], [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]])
WINOGRAD_PATH = 40  # roundings on a Winograd output's path besides the channel sum


@dataclass(frozen=True)
class Arithmetic:
    """How a runtime computes: roundings outside the dot product, and whether 3x3 convs are Winograd."""

    extra: int = 2  # bias add + output store
    winograd: bool = False


# What each runtime does to the float64 network (see the module docstring).
RUNTIMES = {
    "torch": Arithmetic(extra=3),  # BN folded in float64, rounded once; oneDNN or GEMM
    "onnxruntime": Arithmetic(extra=3),  # the same folded weights; MLAS
    "opencv": Arithmetic(extra=7),  # OpenCV folds BN in float32 itself
    "opencv-winograd": Arithmetic(extra=7, winograd=True),
    "torch-unfused": Arithmetic(extra=7),  # the training model: conv, then float32 batch norm
}


def confidence(n: int, p: float = FAILURE_PROBABILITY) -> float:
    """lam such that 2 n exp(-lam^2 / 2) <= p: n Gaussian errors all within lam sigma but with probability p."""
    return math.sqrt(2 * math.log(2 * n / p))


def conv_budget(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, extra: int = 2, **args) -> torch.Tensor:
    """Elementwise budget of one float32 conv of exact float32 inputs against float64 (the rule above, one
    layer): lam * sqrt((K + extra) / 3) * u * (|W| * |x| + |b|)."""
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]
    magnitude = F.conv2d(x.double().abs(), weight.double().abs(), bias.double().abs(), **args)
    return confidence(magnitude.numel()) * math.sqrt((k + extra) / 3) * U * magnitude


@dataclass
class Reference:
    """A float64 run of a network and each head's elementwise error budget for one runtime."""

    heads: list[np.ndarray]  # float64 raw heads, the reference
    budget: list[np.ndarray]  # elementwise, same shapes
    lam: float

    def max_budget(self) -> float:
        return max(float(b.max()) for b in self.budget)


def _conv_layers(model: Darknet):
    return [b for b in model.layers if isinstance(b, ConvBlock)]


def _folded64(block: ConvBlock) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight, bias, |bias| magnitude) in float64, batch norm folded: the magnitude counts |beta| and
    |b - mean| * scale separately, as a float32 fold or batch norm rounds them."""
    conv, bn = block.conv, block.bn
    if bn is None:
        bias = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
        return conv.weight.double(), bias, bias.abs()
    weight, bias = fold_batch_norm(conv, bn)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    conv_bias = conv.bias.double() if conv.bias is not None else 0.0
    magnitude = bn.bias.double().abs() + ((conv_bias - bn.running_mean.double()) * scale).abs()
    return weight, bias, magnitude


def _winograd_magnitude(x_abs: torch.Tensor, weight: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """|A^T| [sum_c (|G| |g_c| |G|^T) . (|B^T| |d_c| |B|)] |A| per output: the magnitudes every intermediate of
    F(6x6, 3x3) is bounded by (6x6 output tiles on 8x8 input tiles, pad 1)."""
    b, c, _, _ = x_abs.shape
    h, w = out_hw
    th, tw = -(-h // 6), -(-w // 6)
    padded = F.pad(x_abs, (1, 6 * tw + 2 - x_abs.shape[3] - 1, 1, 6 * th + 2 - x_abs.shape[2] - 1))
    tiles = F.unfold(padded, 8, stride=6).view(b, c, 8, 8, th * tw)  # (B, C, 8, 8, T)
    at, g, bt = (torch.from_numpy(np.abs(m)) for m in (_AT, _G, _BT))
    v = torch.einsum("ij,bcjkt,lk->bcilt", bt, tiles, bt)  # |B^T| |d| |B|
    u = torch.einsum("ij,ocjk,lk->ocil", g, weight.abs(), g)  # |G| |g| |G^T|
    m = torch.einsum("ocil,bcilt->boilt", u, v)
    y = torch.einsum("pi,boilt,ql->bopqt", at, m, at)  # (B, O, 6, 6, T)
    y = y.view(b, -1, 6, 6, th, tw).permute(0, 1, 4, 2, 5, 3).reshape(b, -1, 6 * th, 6 * tw)
    return y[:, :, :h, :w]


def _conv_variance(block: ConvBlock, x: torch.Tensor, v: torch.Tensor, arith: Arithmetic):
    """(float64 output, error variance of the runtime's output) of one conv block."""
    conv = block.conv
    weight, bias, bias_mag = _folded64(block)
    args = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    y = F.conv2d(x, weight, bias, **args)
    carried = F.conv2d(v, weight.square(), None, **args)
    wino = (arith.winograd and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1
            and conv.dilation == (1, 1))
    if wino:
        magnitude = _winograd_magnitude(x.abs(), weight, y.shape[2:]) + bias_mag[:, None, None]
        n = conv.in_channels + WINOGRAD_PATH
    else:
        magnitude = F.conv2d(x.abs(), weight.abs(), bias_mag, **args)
        n = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    own = (n + arith.extra) * U * U / 3 * magnitude.square()
    out = block.act(y.clone())
    slope = activation_slope(block.spec.activation, y, carried + own)
    return out, slope.square() * (carried + own) + U * U / 3 * out.square()


def activation_slope(name: str, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The factor by which an activation scales a small error at pre-activation `y` (error variance `v`): its
    local derivative (leaky: 0.1 below zero), except within KINK_SIGMAS error sigmas of a kink, where the
    error may cross it: there the Lipschitz constant."""
    if name not in LIPSCHITZ:
        raise ValueError(f"no Lipschitz constant for activation {name!r}")
    if name == "leaky":
        near = y.abs() <= KINK_SIGMAS * v.sqrt()
        return torch.where((y < 0) & ~near, 0.1, 1.0).to(y.dtype)
    if name == "logistic":  # s (1 - s), bounded by its value at y +- the error's reach, at most 1/4
        s = torch.sigmoid(y.abs() - KINK_SIGMAS * v.sqrt())
        return s * (1 - s)
    return torch.full_like(y, LIPSCHITZ[name])


def reference(model: Darknet, batch: np.ndarray, runtime: str) -> Reference:
    """The float64 heads of `model` on `batch` and the elementwise budget of `runtime` (a key of RUNTIMES)
    against them."""
    arith = RUNTIMES[runtime]
    net = copy.deepcopy(model).double().eval()
    x = torch.from_numpy(np.asarray(batch)).double()
    v = torch.zeros_like(x)  # every runtime gets the same float32 input
    outputs: list = [None] * len(net.layers)
    heads, variances = [], []
    with torch.inference_mode():
        for i, layer in enumerate(net.layers):
            if isinstance(layer, ConvBlock):
                x, v = _conv_variance(layer, x, v, arith)
            elif isinstance(layer, MaxPool):
                x, v = layer(x), F.max_pool2d(_pad_like(layer, v), layer.size, layer.stride)
            elif isinstance(layer, Upsample):
                x, v = layer(x), layer(v)
            elif isinstance(layer, Route):
                x, v = layer([o and o[0] for o in outputs]), layer([o and o[1] for o in outputs])
            elif isinstance(layer, Shortcut):
                if not isinstance(layer.act, torch.nn.Identity | torch.nn.LeakyReLU | torch.nn.ReLU):
                    raise ValueError("no budget rule for a shortcut activation other than linear, leaky, relu")
                x = layer(x, [o and o[0] for o in outputs])
                v = v + outputs[layer.source][1] + U * U / 3 * x.square()
            elif isinstance(layer, YoloHead):
                heads.append(x.numpy().copy())
                variances.append(v.numpy().copy())
            else:
                raise TypeError(f"no budget rule for {type(layer).__name__}")
            if i in net.keep:
                outputs[i] = (x, v)
    lam = confidence(sum(h.size for h in heads))
    return Reference(heads, [lam * np.sqrt(v) for v in variances], lam)


def _pad_like(layer: MaxPool, e: torch.Tensor) -> torch.Tensor:
    """The budget padded as MaxPool pads its input (with zeros: padded cells carry no error)."""
    h, w = e.shape[-2:]
    oh = (h + layer.padding - layer.size) // layer.stride + 1
    ow = (w + layer.padding - layer.size) // layer.stride + 1
    after_h = max(0, (oh - 1) * layer.stride + layer.size - h - layer.before)
    after_w = max(0, (ow - 1) * layer.stride + layer.size - w - layer.before)
    return F.pad(e, (layer.before, after_w, layer.before, after_h))


def excess(got: list[np.ndarray], ref: Reference, other: Reference | None = None) -> float:
    """max over elements of |got - ref| / budget (the sum of both budgets when `other` is given: a runtime
    against another runtime's output, `ref.heads` then only used for shapes). <= 1 means within budget."""
    worst = 0.0
    for i, g in enumerate(got):
        budget = ref.budget[i] + (other.budget[i] if other is not None else 0)
        worst = max(worst, float((np.abs(np.asarray(g, np.float64) - ref.heads[i]) / budget).max()))
    return worst


def pair_excess(a: list[np.ndarray], b: list[np.ndarray], ra: Reference, rb: Reference) -> float:
    """max |a - b| / (budget_a + budget_b): two runtimes against each other."""
    return max(float((np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)) / (p + q)).max())
               for x, y, p, q in zip(a, b, ra.budget, rb.budget))


def max_error(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(g, np.float64) - np.asarray(r, np.float64)).max()) for g, r in zip(got, ref))


def decoded_budget(ref: Reference, specs, net_hw: tuple[int, int], *more: Reference) -> np.ndarray:
    """Elementwise budget on `decode(heads)` (B, N, 5+C) from raw budgets (summed with `more`'s: two runtimes
    against each other): the monotone decode's envelope of r +- e, plus its own float32 roundings."""
    budget = [sum(r.budget[i] for r in (ref, *more)) for i in range(len(ref.heads))]
    heads = [torch.from_numpy(h) for h in ref.heads]
    mid = decode(heads, specs, net_hw).double()
    up = decode([h + torch.from_numpy(b) for h, b in zip(heads, budget)], specs, net_hw).double()
    down = decode([h - torch.from_numpy(b) for h, b in zip(heads, budget)], specs, net_hw).double()
    envelope = torch.maximum((up - mid).abs(), (down - mid).abs())
    roundings = DECODE_ROUNDINGS * (1 + len(more)) * U * (mid.abs() + 1)  # + 1: the grid offset's scale
    return (envelope + roundings).numpy()
