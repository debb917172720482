"""Decode-once uint8 image cache for the device-side training input path.

Owns `build_cache` and `Uint8Cache`: every image of a training list decoded once, resized once to an S x S
uint8 (3, S, S) RGB slot, kept in RAM or in a memory-mapped ``.npy`` file, plus the boxes; `Uint8Cache.batch`
gathers a batch and moves it to the device as uint8 (pinned memory + non_blocking copies on CUDA), and
`Uint8Cache.to(device)` makes the whole cache resident on the device (no host->device copy per batch).

Slot geometry (why this one): darknet's jitter crop is defined as fractions of the source width and height
(dw = jitter * w, dh = jitter * h) and the boxes are normalised, so cropping a plain-resized (stretched) copy
takes exactly the same region as cropping the original. The default therefore stretches each image to S x S
(most rows and columns kept; aspect is restored by the normalised geometry). For letterbox training the
aspect matters, so ``keep_aspect=True`` resizes to a max side of S, puts the image at the top-left of its
slot and fills the rest with darknet grey (127, the CPU path's border value): `extents` gives each image's
valid width/height, which `batch_augment.augment_batch` takes as ``extents``. Only resolution differs from
the CPU path (one extra resample): build the cache at the largest size you train at when zooming matters.
Downscaling uses INTER_AREA (no aliasing), upscaling INTER_LINEAR.

On disk (``path`` = a folder, e.g. `cache_dir()` = ``$DARKTUNE_HOME/cache``): ``<name>.npy`` (a plain uint8
array, read with allow_pickle=False and mmap) and ``<name>.json`` (the manifest: key, shape, kept rows,
extents, a digest per row), both written to a temporary file and renamed, the manifest last, so its presence
means a complete array. The name holds the key: a blake2b hash of the cache format, S, the mode and the
*content* of every image file in order (not paths or dates: the same bytes elsewhere reuse the cache, changed
bytes never do). A damaged cache (unparsable manifest, wrong shape or length, a sampled row whose digest
differs; ``verify="full"`` checks every row) is rebuilt. Unreadable images are skipped and counted
(`Uint8Cache.skipped`); DarktuneError only when no image is readable. A rebuild writes a new file and
renames it over the old one, so processes that still map the old file keep valid data (editing a mapped
.npy in place, e.g. truncating it, would fault them: don't).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from darktune.data.formats.image import inspect_image_bytes
from darktune.errors import DarktuneError
from darktune.plural import plural
from darktune.files import atomic_write_bytes, darktune_home

CACHE_FORMAT = 1
GREY = 127  # slot padding for keep_aspect: the CPU path's border value
_SAMPLED_ROWS = 8


def cache_dir() -> Path:
    """The default folder of memory-mapped caches: $DARKTUNE_HOME/cache."""
    return darktune_home() / "cache"


def _digest(data: bytes | memoryview, size: int = 16) -> str:
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def _resize(rgb: np.ndarray, size: int, keep_aspect: bool) -> tuple[np.ndarray, int, int]:
    """(H, W, 3) -> ((3, S, S) slot, valid w, valid h)."""
    import cv2

    h, w = rgb.shape[:2]
    if keep_aspect:
        scale = size / max(h, w)
        nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    else:
        nw = nh = size
    interp = cv2.INTER_AREA if nw <= w and nh <= h else cv2.INTER_LINEAR
    small = rgb if (nw, nh) == (w, h) else cv2.resize(rgb, (nw, nh), interpolation=interp)
    if (nw, nh) == (size, size):
        return np.ascontiguousarray(small.transpose(2, 0, 1)), nw, nh
    slot = np.full((3, size, size), GREY, np.uint8)
    slot[:, :nh, :nw] = small.transpose(2, 0, 1)
    return slot, nw, nh


def _read(path: Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _file_digest(path: Path) -> str:
    data = _read(path)
    return "missing" if data is None else _digest(data)


def _cache_key(digests: Sequence[str], size: int, keep_aspect: bool) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"darktune-uint8-cache/{CACHE_FORMAT}/{size}/{int(keep_aspect)}/{len(digests)}".encode())
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()


class Uint8Cache:
    """Images (rows of an (N, 3, S, S) uint8 array, RAM, memmap or device tensor) and their boxes.
    Cache index i is the i-th readable item (`items_index[i]` is its position in the list given)."""

    def __init__(self, images: np.ndarray | torch.Tensor, rows: np.ndarray, extents: np.ndarray,
                 boxes: list[np.ndarray], key: str, path: Path | None = None,
                 skipped: list[tuple[str, str]] | None = None, items_index: np.ndarray | None = None):
        self.images = images
        self.rows = np.asarray(rows, np.int64)  # cache index -> row of `images`
        self.extents_px = np.asarray(extents, np.float32).reshape(-1, 2)  # per cache index: valid (w, h)
        self.key = key
        self.path = path
        self.skipped = list(skipped or [])
        self.items_index = self.rows if items_index is None else np.asarray(items_index, np.int64)
        counts = np.array([len(b) for b in boxes], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.boxes = (np.concatenate(boxes).astype(np.float32).reshape(-1, 5) if boxes
                      else np.zeros((0, 5), np.float32))
        self._rows_dev: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.images.device if isinstance(self.images, torch.Tensor) else torch.device("cpu")

    def boxes_of(self, i: int) -> np.ndarray:
        return self.boxes[self.offsets[i]:self.offsets[i + 1]]

    def targets(self, indices: np.ndarray) -> np.ndarray:
        """(N, 6) float32 [position in batch, cls, cx, cy, w, h] of the given cache indices (host side)."""
        idx = np.asarray(indices, np.int64)
        counts = self.offsets[idx + 1] - self.offsets[idx]
        total = int(counts.sum())
        first = np.repeat(np.cumsum(counts) - counts, counts)
        src = np.repeat(self.offsets[idx], counts) + np.arange(total) - first
        out = np.empty((total, 6), np.float32)
        out[:, 0] = np.repeat(np.arange(len(idx)), counts)
        out[:, 1:] = self.boxes[src]
        return out

    def extents(self, indices, device: str | torch.device = "cpu") -> torch.Tensor:
        """(B, 2) valid (w, h) in slot pixels of each image (S, S unless keep_aspect)."""
        return _to_device(torch.from_numpy(self.extents_px[_host_indices(indices)]), torch.device(device))

    def batch(self, indices, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (B, 3, S, S) on device, targets float32 (N, 6) on device). `indices`: host ints
        (list, numpy or CPU tensor); gathered into pinned memory and copied non_blocking on CUDA."""
        device = torch.device(device)
        idx = _host_indices(indices)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"cache index out of range 0..{len(self) - 1}")
        targets = _to_device(torch.from_numpy(self.targets(idx)), device)
        rows = self.rows[idx]
        if isinstance(self.images, torch.Tensor):  # resident: gather where the images live
            key = str(self.images.device)
            if key not in self._rows_dev:
                self._rows_dev[key] = _to_device(torch.from_numpy(self.rows), self.images.device)
            sel = self._rows_dev[key][_to_device(torch.from_numpy(idx), self.images.device)]
            return self.images.index_select(0, sel).to(device, non_blocking=True), targets
        pin = device.type == "cuda"
        s = self.size
        buf = torch.empty((len(idx), 3, s, s), dtype=torch.uint8, pin_memory=pin)
        if len(idx):
            np.take(self.images, rows, axis=0, out=buf.numpy())
        return (buf.to(device, non_blocking=True) if device.type != "cpu" else buf), targets

    def to(self, device: str | torch.device) -> Uint8Cache:
        """A cache whose images live on `device` (e.g. the whole set in GPU memory); boxes stay on the host."""
        images = torch.from_numpy(np.ascontiguousarray(self.images[self.rows])).to(device)
        return Uint8Cache(images, np.arange(len(self)), self.extents_px, [self.boxes_of(i) for i in range(len(self))],
                          self.key, self.path, self.skipped, self.items_index)


def _host_indices(indices) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()  # a device tensor syncs here: pass host indices
    return np.asarray(indices, np.int64).reshape(-1)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _decode_into(images: np.ndarray, row: int, path: Path, size: int,
                 keep_aspect: bool) -> tuple[str, tuple[int, int] | str]:
    """Decode one file into images[row] -> (file digest, (w, h) or the reason it was skipped)."""
    data = _read(path)
    if data is None:
        return "missing", "cannot read file"
    digest = _digest(data)
    _, found, rgb = inspect_image_bytes(Path(path), data)
    errors = [reason for severity, reason in found if severity == "error"]
    if errors or rgb is None:
        images[row] = GREY
        return digest, errors[0] if errors else "cannot be decoded"
    images[row], w, h = _resize(rgb, size, keep_aspect)
    return digest, (w, h)


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _fill(images: np.ndarray, paths: list[Path], size: int, keep_aspect: bool, progress: bool
          ) -> tuple[list[str], np.ndarray, list[tuple[int, str]], np.ndarray]:
    """Decode every path into its row -> (file digests, kept rows, [(row, reason)] skipped, extents)."""
    with ThreadPoolExecutor(_threads()) as pool:  # cv2 decode/resize and hashing release the GIL
        results = pool.map(lambda i: _decode_into(images, i, paths[i], size, keep_aspect), range(len(paths)))
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc="cache images", unit="img", file=sys.stderr,
                           leave=False)
        results = list(results)
    digests = [d for d, _ in results]
    kept = [i for i, (_, r) in enumerate(results) if not isinstance(r, str)]
    skipped = [(i, r) for i, (_, r) in enumerate(results) if isinstance(r, str)]
    extents = np.array([results[i][1] for i in kept], np.float32).reshape(-1, 2)
    return digests, np.array(kept, np.int64), skipped, extents


def _check_items(items) -> tuple[list[Path], list[np.ndarray]]:
    paths, boxes = [], []
    for path, b in items:
        arr = np.asarray(b, dtype=np.float32)
        if (arr.size and (arr.ndim != 2 or arr.shape[1] != 5)) or not np.isfinite(arr).all():
            raise DarktuneError("boxes must be a finite (n, 5) array [cls, cx, cy, w, h]", path=str(path))
        paths.append(Path(path))
        boxes.append(arr.reshape(-1, 5))
    if not paths:
        raise DarktuneError("the image list is empty: nothing to cache")
    return paths, boxes


def build_cache(items: Sequence[tuple[str | Path, np.ndarray]], size: int, path: str | Path | None = None,
                keep_aspect: bool = False, progress: bool = False, verify: str = "quick") -> Uint8Cache:
    """Decode every image once into an (N, 3, size, size) uint8 cache. path None: in RAM; a folder: a
    memory-mapped .npy there, reused when its key (content of the images, size, mode) matches and it is
    intact (verify "quick": shape + sampled row digests; "full": every row), rebuilt otherwise."""
    if int(size) < 32:
        raise DarktuneError(f"cache size must be >= 32, got {size}")
    if verify not in ("quick", "full"):
        raise DarktuneError(f"verify must be 'quick' or 'full', got {verify!r}")
    size = int(size)
    paths, boxes = _check_items(items)
    shape = (len(paths), 3, size, size)
    if path is None:
        images = np.empty(shape, np.uint8)
        digests, kept, skipped, extents = _fill(images, paths, size, keep_aspect, progress)
        return _finish(images, kept, extents, boxes, paths, skipped, _cache_key(digests, size, keep_aspect), None)
    folder = Path(path)
    with ThreadPoolExecutor(_threads()) as pool:
        key = _cache_key(list(pool.map(_file_digest, paths)), size, keep_aspect)
    stem = folder / f"u8-{size}{'a' if keep_aspect else ''}-{key}"
    opened = _open(stem, key, shape, verify)
    if opened is not None:
        images, manifest = opened
        skipped = [(int(i), str(r)) for i, r in manifest["skipped"]]
        return _finish(images, np.array(manifest["kept"], np.int64), np.array(manifest["extents"], np.float32),
                       boxes, paths, skipped, key, stem.with_suffix(".npy"))
    return _build_file(stem, key, shape, paths, boxes, keep_aspect, progress)


def _finish(images, kept, extents, boxes, paths, skipped, key, npy) -> Uint8Cache:
    if len(kept) == 0:
        first = f" (first: {paths[skipped[0][0]]}: {skipped[0][1]})" if skipped else ""
        raise DarktuneError(f"none of the {plural(len(paths), 'image')} could be read{first}")
    return Uint8Cache(images, kept, extents, [boxes[i] for i in kept], key, npy,
                      [(str(paths[i]), reason) for i, reason in skipped], kept)


def _build_file(stem: Path, key: str, shape, paths, boxes, keep_aspect: bool, progress: bool) -> Uint8Cache:
    folder = stem.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem.name}.", suffix=".npy.tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise DarktuneError(f"cannot write the image cache: {exc.strerror or exc}", path=str(folder)) from None
    try:
        size = shape[-1]
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        digests, kept, skipped, extents = _fill(images, paths, size, keep_aspect, progress)
        if _cache_key(digests, size, keep_aspect) != key:  # a file changed while we read it
            raise DarktuneError("images changed while the cache was being built; run again", path=str(folder))
        rows = [_digest(images[i].data, 8) for i in range(shape[0])]
        images.flush()
        del images
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, stem.with_suffix(".npy"))
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DarktuneError(f"cannot write the image cache: {exc.strerror or exc}", path=str(folder)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    manifest = {"format": CACHE_FORMAT, "key": key, "shape": list(shape), "kept": kept.tolist(),
                "extents": extents.tolist(), "skipped": skipped, "rows": rows}

    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(manifest).encode())
    images = np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    return _finish(images, kept, extents, boxes, paths, skipped, key, stem.with_suffix(".npy"))


def _open(stem: Path, key: str, shape, verify: str) -> tuple[np.ndarray, dict] | None:
    """The memory-mapped array and manifest when both are present and intact, else None (rebuild)."""
    try:
        manifest = json.loads(stem.with_suffix(".json").read_text())
        if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
            return None
        if list(manifest["shape"]) != list(shape) or len(manifest["rows"]) != shape[0]:
            return None
        if len(manifest["extents"]) != len(manifest["kept"]):
            return None
        images = np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if images.dtype != np.uint8 or images.shape != tuple(shape):
        return None
    n = shape[0]
    check = range(n) if verify == "full" else sorted({0, n - 1, *np.random.default_rng().integers(0, n, _SAMPLED_ROWS)})
    try:
        if any(_digest(images[int(i)].data, 8) != manifest["rows"][int(i)] for i in check):
            return None
    except (OSError, ValueError):
        return None
    return images, manifest
