"""Darknet `.weights` files: version-aware header, every float accounted for, partial (upto=N) load and save.

Layout: int32 major, minor, revision; `seen` as uint64 when major*10+minor >= 2 else uint32; then for each
[convolutional] layer in order: with batch_normalize: biases, scales, rolling_mean, rolling_variance (each
`filters` floats), else biases; then the weights (filters x channels/groups x size x size). float32 LE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from darktune.darknet.cfg import ConvSpec, infer_shapes, NetworkSpec, parse_cfg
from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes
from darktune.darknet.model import Darknet


# The most images a header may say it has seen: 2**48 (2.8e14) is about ten million times the longest published
# darknet training (yolov4 on COCO: 500,500 iterations x 64 = 3.2e7 images), and leaves 2**16 times that room
# below the uint64 field, so a run that continues the schedule can add its own images without overflowing it.
MAX_SEEN = 1 << 48


@dataclass(frozen=True)
class Header:
    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def nbytes(self) -> int:
        return 12 + (8 if self.seen_is_64bit else 4)

    def to_bytes(self) -> bytes:
        head = np.array([self.major, self.minor, self.revision], dtype="<i4").tobytes()
        return head + np.array([self.seen], dtype="<u8" if self.seen_is_64bit else "<u4").tobytes()


def read_header(data: bytes, path: str) -> Header:
    if len(data) < 12:
        raise DarktuneError(f"not a darknet weights file: {len(data)} bytes, shorter than the 12-byte header",
                            path=path)
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
    if not (0 <= major < 1000 and 0 <= minor < 1000 and revision >= 0):
        raise DarktuneError(f"not a darknet weights file: header version {major}.{minor}.{revision} is invalid "
                            "(darknet requires major and minor in 0..999)", path=path)
    header = Header(major, minor, revision, 0)
    if len(data) < header.nbytes:
        raise DarktuneError(f"weights header is cut: {len(data)} bytes, need {header.nbytes}", path=path)
    seen = int(np.frombuffer(data[12:header.nbytes], dtype="<u8" if header.seen_is_64bit else "<u4")[0])
    if seen > MAX_SEEN:
        raise DarktuneError(f"weights header says {seen:,} images were seen, past {MAX_SEEN:,} (2^48): no training "
                            "sees that many; a damaged or hand-made header", path=path)
    return Header(major, minor, revision, seen)


def seen_after(offset: int, step: int, batch: int) -> int:
    """The `seen` a training writes: (schedule offset + step) x batch, as darknet counts, held at MAX_SEEN so
    the field never overflows and every file written loads again."""
    return min((offset + step) * batch, MAX_SEEN)


def conv_float_counts(spec: NetworkSpec) -> list[tuple[int, int]]:
    """(layer index, floats stored) for each conv layer, in file order."""
    shapes = infer_shapes(spec)
    counts = []
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, ConvSpec):
            c_in = shapes[i].input[0]
            n = layer.filters * (4 if layer.batch_normalize else 1)
            n += layer.filters * (c_in // layer.groups) * layer.size * layer.size
            counts.append((i, n))
    return counts


def expected_floats(spec: NetworkSpec, upto: int | None = None) -> int:
    return sum(n for i, n in conv_float_counts(spec) if upto is None or i < upto)


@dataclass
class WeightsFile:
    header: Header
    floats: np.ndarray  # float32, everything after the header
    path: str


def read_weights_file(path: str | Path) -> WeightsFile:
    path = str(path)
    if Path(path).exists() and not Path(path).is_file():  # a folder, device or FIFO: never read it
        raise DarktuneError("not a regular file", path=path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DarktuneError("weights file not found", path=path) from None
    except OSError as exc:
        raise DarktuneError(f"cannot read weights: {exc}", path=path) from None
    header = read_header(data, path)
    body = len(data) - header.nbytes
    if body % 4:
        raise DarktuneError(f"weights body is {body} bytes, not a whole number of float32 values "
                            f"({body % 4} stray bytes)", path=path)
    return WeightsFile(header, np.frombuffer(data, dtype="<f4", offset=header.nbytes), path)


def _conv_tensors(block) -> list[torch.Tensor]:
    """The tensors of one conv block in darknet file order."""
    if block.bn is not None:
        bn = block.bn
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, block.conv.weight]
    return [block.conv.bias, block.conv.weight]


def conv_blocks(model) -> list[tuple[int, object]]:
    return [(i, model.layers[i]) for i, layer in enumerate(model.spec.layers) if isinstance(layer, ConvSpec)]


def load_weights(model, path: str | Path, upto: int | None = None) -> Header:
    """Load darknet weights into `model` (a `Darknet`). With `upto=N` only layers 0..N-1 are read and the rest of
    the file is ignored; without it the file must hold exactly the floats the model needs."""
    wf = read_weights_file(path)
    need = expected_floats(model.spec, upto)
    found = wf.floats.size
    if found < need or (upto is None and found != need):
        what = f"layers 0..{upto - 1}" if upto is not None else "the whole model"
        raise DarktuneError(f"weights do not fit the cfg: {what} needs {need:,} floats, the file has {found:,} "
                            f"({found - need:+,}). Is it made for another cfg or number of classes?", path=wf.path)
    bad = int(np.count_nonzero(~np.isfinite(wf.floats[:need])))
    if bad:  # darknet would load them and train or detect on NaN; such a file is damaged
        raise DarktuneError(f"weights hold {bad:,} values that are not finite numbers (NaN or inf): the file is "
                            "damaged", path=wf.path)
    offset = 0
    with torch.no_grad():
        for i, block in conv_blocks(model):
            if upto is not None and i >= upto:
                break
            for tensor in _conv_tensors(block):
                n = tensor.numel()
                values = torch.from_numpy(wf.floats[offset:offset + n].copy()).view_as(tensor)
                tensor.copy_(values)
                offset += n
    return wf.header


def weights_bytes(model, header: Header | None = None, upto: int | None = None) -> bytes:
    header = header or Header()
    parts = [header.to_bytes()]
    for i, block in conv_blocks(model):
        if upto is not None and i >= upto:
            break
        for tensor in _conv_tensors(block):
            parts.append(tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
    return b"".join(parts)


def save_weights(model, path: str | Path, header: Header | None = None, upto: int | None = None) -> Path:
    """Write darknet weights (layers 0..upto-1 if given), atomically."""
    return atomic_write_bytes(path, weights_bytes(model, header, upto))


def partial(cfg_path: str | Path, weights_path: str | Path, out_path: str | Path, upto: int) -> tuple[Path, int]:
    """darknet `partial cfg weights out N`: the first N layers' weights, `seen` reset to 0.
    Returns (out path, floats written)."""
    spec = parse_cfg(cfg_path)
    if not 0 < upto <= len(spec.layers):
        raise DarktuneError(f"N must be in 1..{len(spec.layers)} (the cfg has {len(spec.layers)} layers), got {upto}")
    model = Darknet(spec)
    header = load_weights(model, weights_path, upto=upto)
    out = save_weights(model, out_path, Header(header.major, header.minor, header.revision, 0), upto=upto)
    return out, expected_floats(spec, upto)


def infer_num_classes(spec: NetworkSpec, n_floats: int) -> int | None:
    """The class count for which `spec` needs exactly `n_floats`, if there is one (floats are linear in it)."""
    base = expected_floats(spec.with_classes(1))
    slope = expected_floats(spec.with_classes(2)) - base
    if slope <= 0 or (n_floats - base) % slope:
        return None
    classes = 1 + (n_floats - base) // slope
    return classes if classes >= 1 else None
