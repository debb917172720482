"""The one place that turns a darknet cfg and .weights into a `Darknet`: network size, class count and the
weights, each checked (every float of the file accounted for: `darktune.darknet.weights.load_weights`); a cfg
that carries a value known to be wrong for the weights (yolov3-tiny's published mask with the COCO weights:
`darktune.darknet.known_cfg`) is warned about here."""

from __future__ import annotations

import warnings
from pathlib import Path

from darktune.darknet.cfg import CfgWarning, NetworkSpec, parse_cfg
from darktune.darknet.known_cfg import known_bad_mask_warning
from darktune.darknet.memory import check_memory
from darktune.darknet.model import Darknet
from darktune.darknet.weights import Header, expected_floats, infer_num_classes, load_weights, read_weights_file
from darktune.errors import DarktuneError


def check_size(size: int, option: str = "--size") -> int:
    """`size` if it is a usable square network size (a positive multiple of 32, as darknet's strides need),
    else a DarktuneError naming `option`."""
    if size <= 0 or size % 32:
        raise DarktuneError(f"{option} must be a positive multiple of 32, got {size}")
    return size


def classes_in_weights(spec: NetworkSpec, weights: str | Path) -> int | None:
    """The class count `weights` holds for this cfg: the cfg's own when the file's floats fit it, else the one
    count that fits them (a model trained with `classes` edited), None when none does."""
    n_floats = int(read_weights_file(weights).floats.size)
    if n_floats == expected_floats(spec):
        return spec.num_classes
    return infer_num_classes(spec, n_floats)


def load_darknet(cfg: str | Path, weights: str | Path | None = None, *, size: int | None = None,
                 classes: int | None = None) -> tuple[Darknet, Header | None]:
    """(model in eval mode, weights header or None): the cfg re-headed to `classes` and set to the square
    `size` when given, then the weights loaded."""
    spec = parse_cfg(cfg)
    if classes is not None and classes != spec.num_classes:
        spec = spec.with_classes(classes)
    if size is not None:
        spec = spec.with_size(check_size(size))
    check_memory(spec, 1, "cpu", advice="use a smaller --size")  # the model is built on the CPU first
    model = Darknet(spec).eval()
    header = load_weights(model, weights) if weights is not None else None
    message = known_bad_mask_warning(spec, weights) if weights is not None else None
    if message:
        warnings.warn(message, CfgWarning, stacklevel=2)
    return model, header
