"""The memory a network needs for a batch, estimated from the cfg's shapes before anything is allocated, and the
one check every command that runs a network makes with it (`check_memory`), so that `detect --size 8192` or
`train --batch 100000000` is refused in one line of advice instead of ending in an allocator's traceback.

The estimate counts float32 tensors per image from `darktune.darknet.shapes`. Inference: the largest of (the
outputs kept for later routes, shortcuts and heads, plus one layer's input and what it makes: a convolution with
batch norm makes two tensors, a [maxpool] with darknet's padding a padded copy of its input). Training: every
layer's tensors (autograd keeps them for the backward pass) and a quarter more for the gradients in flight. Plus
the parameters (training: weights, gradients and momentum). yolov3-tiny on the CPU, growth of max RSS over one
pass against the estimate less the weights (`python benchmarks/bench_memory_estimate.py`, 2026-12-07, 2-core
AMD EPYC VM shared with other jobs, load average 11): inference 4x416 94 MiB measured / 95 estimated, training
4x416 405 / 453 (momentum included, not allocated there), inference 1x1024 137 / 144. An over-estimate by a few
per cent, so the refusal is for sizes that cannot fit, not for a close call (a close call that fails still gets
the same advice: `is_out_of_memory`).
"""

from __future__ import annotations

import torch

from darktune.darknet.shapes import infer_shapes
from darktune.darknet.specs import ConvSpec, MaxPoolSpec, NetworkSpec, ShortcutSpec, YoloSpec
from darktune.errors import DarktuneError
from darktune.machine import available_memory

FLOAT_BYTES = 4
GIB = float(1 << 30)


def _values_per_image(spec: NetworkSpec, training: bool) -> tuple[int, int]:
    """(float32 values one image holds at the peak of a forward pass, or of forward and backward for
    `training`; parameters) at the spec's input size."""
    shapes = infer_shapes(spec)
    kept = {j for layer in spec.layers for j in getattr(layer, "layers", ())}  # route sources
    kept |= {layer.from_ for layer in spec.layers if isinstance(layer, ShortcutSpec)}
    kept |= {i for i, layer in enumerate(spec.layers) if isinstance(layer, YoloSpec)}
    held, peak, saved = 0, 0, spec.net.channels * spec.net.height * spec.net.width
    for i, (layer, shape) in enumerate(zip(spec.layers, shapes)):
        c, h, w = shape.output
        ci, hi, wi = shape.input
        made = c * h * w * (2 if isinstance(layer, ConvSpec) and layer.batch_normalize else 1)
        if isinstance(layer, MaxPoolSpec) and layer.padding:  # darknet's padding: a padded copy of the input
            made += ci * (hi + layer.padding) * (wi + layer.padding)
        peak = max(peak, held + ci * hi * wi + made)  # inference: what is held while this layer runs
        saved += made  # training: autograd keeps every layer's tensors for the backward pass
        if i in kept:
            held += c * h * w
    params = sum(s.params for s in shapes)
    return (saved + saved // 4 if training else peak), params  # training: gradients in flight, about 1/4 more


def estimate_bytes(spec: NetworkSpec, batch: int, training: bool = False) -> int:
    """Bytes of float32 memory a forward pass (and for `training` its backward and an optimizer step) of
    `batch` images at the spec's input size needs: see the module docstring."""
    values, params = _values_per_image(spec, training)
    return FLOAT_BYTES * (int(batch) * values + params * (3 if training else 1))


def device_memory(device: torch.device | str) -> int | None:
    """Bytes free for tensors on `device`: the GPU's free memory, or the machine's available memory for the CPU
    (None where neither can be read)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    return available_memory()


def check_memory(spec: NetworkSpec, batch: int, device: torch.device | str, *, training: bool = False,
                 what: str | None = None, advice: str = "use a smaller --batch or --size") -> int:
    """The estimate of `estimate_bytes`, or a DarktuneError when it is more than `device` has free: one line
    naming `what` (default: the cfg), both figures and `advice` (the flags that shrink it)."""
    need = estimate_bytes(spec, batch, training)
    have = device_memory(device)
    if have is not None and need > have:
        images = "image" if batch == 1 else "images"
        size = f"{spec.net.width}x{spec.net.height}"
        raise DarktuneError(f"{what or spec.path} needs about {need / GIB:,.1f} GiB for {batch:,} {images} of {size} "
                            f"({'training' if training else 'inference'}), more than the {have / GIB:,.1f} GiB "
                            f"free on {torch.device(device)}: {advice}")
    return need


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocator's out-of-memory (CUDA's OutOfMemoryError, or the CPU allocator's
    RuntimeError 'DefaultCPUAllocator: can't allocate memory', or Python's MemoryError)."""
    text = str(exc)
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
            or (isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)))
