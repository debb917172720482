"""Training batches as a pure function of (seed, iteration): restartable at any iteration, same under DDP.

Sample ``g`` of the run (``g = iteration * batch + position in the batch``) is image ``i = perm(seed, epoch)[k]``
with ``epoch, k = divmod(g, n)``; its augmentation draws from ``numpy.random.default_rng([seed, epoch, i])``
(`darktune.data.loader.DetectionDataset.load`).
So a resumed run sees exactly the batches an uninterrupted one would, and with DDP rank r takes its slice of
every micro-batch (the union over ranks is the single-process micro-batch, sample by sample).

Images are decoded once and kept in RAM as RGB uint8, shrunk (INTER_AREA) to at most ``CACHE_SCALE x`` the
network size per side. Augmentation is darknet's (jitter, hue, saturation, exposure, flip, mosaic when the
cfg asks) from `darktune.data.augment`.
With ``workers > 0`` the next micro-batch is prepared in a background thread while the model computes.

Multi-scale (darknet's ``random``, of the last [yolo] layer): the network input of iteration ``it`` (0-based)
is `network_size(seed, it, base, coef, iterations)`: darknet's rule (`detector.c`): the largest size
roundl(coef*base/32 + 1)*32 for the first 10 iterations and the last ~100, else
roundl(rand_scale(coef)*base/32 + 1)*32 (never above base when the scale is under 1), coef = random when it is
not 1, else 1.4 (`darktune.data.augment.random_network_size`), drawn from ``default_rng([seed, it // 10, 31])``:
a new size every 10 iterations, a pure function of (seed, it // 10), the same on every rank. This CPU loader *loads*
each sample at that size (the augmentation warp writes straight into the new size; no second resize), with its
RAM cache kept at ``CACHE_SCALE x`` the largest size. The device path (`darktune.train.device_inputs`) passes the
size to `augment_batch` as ``out_size``.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from darktune.errors import DarktuneError
from darktune.data.augment import darknet_size, random_network_size
from darktune.data.loader import DetectionDataset

CACHE_SCALE = 1.25  # RAM cache keeps each image at most this times the network size per side


def subset(items: list, max_images: int | None, seed: int) -> list:
    """The first `max_images` items of a seeded permutation (nested: a smaller N is a prefix of a larger)."""
    if not max_images or max_images >= len(items):
        return list(items)
    if max_images < 1:
        raise DarktuneError(f"--max-images must be >= 1, got {max_images}")
    order = np.random.default_rng([int(seed), 4242]).permutation(len(items))
    return [items[i] for i in sorted(order[:max_images].tolist())]


MULTI_SCALE_EVERY = 10  # darknet: a new network size every 10 iterations
MULTI_SCALE_LAST = 100  # darknet: the largest size once fewer than this many iterations are left


def scale_coefficient(multi_scale: bool | float) -> float:
    """The rand_scale coefficient of multi-scale: darknet's [yolo] random value when it is not 1, else 1.4;
    0 when off (False or 0)."""
    if not multi_scale:
        return 0.0
    return 1.4 if multi_scale is True or float(multi_scale) == 1.0 else float(multi_scale)


def size_range(base: int, multi_scale: bool | float = True) -> tuple[int, int]:
    """Smallest and largest multi-scale size for `base` (darknet's rule; 320 and 608 at 416)."""
    coef = scale_coefficient(multi_scale) or 1.0
    return darknet_size(1 / coef, int(base)), darknet_size(coef, int(base))


def network_size(seed: int, iteration: int, base: int, multi_scale: bool | float,
                 iterations: int | None = None) -> int:
    """Square network input of 0-based `iteration`: `base`, or with multi-scale darknet's size: the largest for
    the first 10 iterations and for blocks of 10 that start after `iterations - 100`, else
    darknet_size(rand_scale(coef)) drawn from ``default_rng([seed, iteration // 10, 31])``."""
    coef = scale_coefficient(multi_scale)
    if not coef:
        return int(base)
    block = int(iteration) // MULTI_SCALE_EVERY
    if block == 0 or (iterations and block * MULTI_SCALE_EVERY > iterations - MULTI_SCALE_LAST):
        return size_range(base, coef)[1]
    rng = np.random.default_rng([int(seed), block, 31])
    return random_network_size(rng, int(base), coef)


class SampleOrder:
    """Which image each sample of the run is (see the module docstring), shared by the CPU loader
    (`TrainBatches`) and the device path (`darktune.train.device_inputs.DeviceBatches`)."""

    def __init__(self, n: int, size: tuple[int, int], batch: int, subdivisions: int, seed: int, rank: int = 0,
                 world: int = 1, multi_scale: bool | float = False, iterations: int | None = None):
        micro = batch // subdivisions
        if batch % subdivisions or micro % world:
            raise DarktuneError(f"batch {batch} must split into {subdivisions} subdivisions of a size divisible "
                                f"by the {world} processes")
        if size[0] != size[1]:
            raise DarktuneError(f"training needs a square network input, got {size[1]}x{size[0]}")
        self.n, self.size, self.multi_scale = int(n), size, bool(multi_scale)
        self.scale_coef, self.iterations = scale_coefficient(multi_scale), iterations
        self.batch, self.subdivisions, self.micro = batch, subdivisions, micro
        self.per_rank = micro // world
        self.seed, self.rank, self.world = int(seed), rank, world
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def largest_size(self) -> int:
        return size_range(self.size[0], self.scale_coef)[1] if self.multi_scale else self.size[0]

    def size_at(self, iteration: int) -> int:
        """Network size of 0-based `iteration`."""
        return network_size(self.seed, iteration, self.size[0], self.scale_coef, self.iterations)

    def perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, int(epoch), 17]).permutation(self.n)
            self._perms = {epoch: perm, **{e: p for e, p in self._perms.items() if e >= epoch - 1}}
        return perm

    def position(self, iteration: int) -> dict:
        """Loader position before 0-based `iteration` (for checkpoints and logs)."""
        epoch, index = divmod(iteration * self.batch, self.n)
        return {"epoch": int(epoch), "index": int(index), "sample": int(iteration * self.batch)}

    def samples(self, iteration: int, sub: int) -> range:
        """Global sample numbers of this rank's slice of micro-batch `sub` of 0-based `iteration`."""
        first = iteration * self.batch + sub * self.micro + self.rank * self.per_rank
        return range(first, first + self.per_rank)

    def candidates(self, g: int):
        """(epoch, image index) for sample `g`, then the images that stand in, in order, when it is
        unreadable (the next ones of the same permutation)."""
        epoch, k = divmod(g, self.n)
        perm = self.perm(epoch)
        for step in range(self.n):
            yield epoch, int(perm[(k + step) % self.n])


def size_counts(order: SampleOrder, iterations: int) -> dict[int, int]:
    """Iterations 0..iterations-1 per network size (a size holds for a block of 10 iterations)."""
    counts: dict[int, int] = {}
    for start in range(0, max(0, iterations), MULTI_SCALE_EVERY):
        size = order.size_at(start)
        counts[size] = counts.get(size, 0) + min(MULTI_SCALE_EVERY, iterations - start)
    return dict(sorted(counts.items()))


def multi_scale_note(order: SampleOrder, iterations: int) -> str | None:
    """The run's log line on multi-scale: the range around the base size, darknet's rule, how many iterations
    the largest size is forced for, and the iterations at each size; None without multi-scale."""
    if not order.multi_scale:
        return None
    base, coef = order.size[0], order.scale_coef
    low, high = size_range(base, coef)
    forced = sum(min(MULTI_SCALE_EVERY, iterations - start) for start in range(0, iterations, MULTI_SCALE_EVERY)
                 if start == 0 or start > iterations - MULTI_SCALE_LAST)
    sizes = ", ".join(f"{s} x{n}" for s, n in size_counts(order, iterations).items())
    return (f"multi-scale: training sizes {low}..{high} around {base} (darknet's random=1: every "
            f"{MULTI_SCALE_EVERY} iterations roundl(r*{base}/32+1)*32, r drawn in [1/{coef:g}, {coef:g}]), the "
            f"largest, {high}, for the first {MULTI_SCALE_EVERY} and the last {MULTI_SCALE_LAST} iterations "
            f"({forced} of {iterations} here); evaluation at {base}; iterations per size: {sizes} (--no-multi-scale "
            "trains at the size only)")


class TrainBatches(SampleOrder):
    """Micro-batches of (uint8 images (b, 3, S, S), targets (N, 6) [image, class, cx, cy, w, h])."""

    input_path = "cpu_loader"

    def __init__(self, items: list[tuple[Path, np.ndarray]], size: tuple[int, int], augment, batch: int,
                 subdivisions: int, seed: int, rank: int = 0, world: int = 1, workers: int = 0,
                 multi_scale: bool | float = False, device: torch.device | None = None,
                 iterations: int | None = None):
        if not items:
            raise DarktuneError("no usable training images")
        super().__init__(len(items), size, batch, subdivisions, seed, rank, world, multi_scale, iterations)

        self.dataset = DetectionDataset(items, size[0], augment, cache="ram",
                                        cache_size=round(CACHE_SCALE * self.largest_size))
        self.device = device or torch.device("cpu")
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
        self._pending: dict[tuple[int, int], Future] = {}
        self.last_indices: list[int] = []  # the image of each sample of the micro-batch `get` returned last

    @property
    def deterministic(self) -> bool:
        """Whether every image always becomes the same input tensor (no augmentation, one network size)."""
        return self.dataset.augment is None and not self.multi_scale

    def _sample(self, g: int, size: int) -> tuple[int, np.ndarray, np.ndarray]:
        for epoch, i in self.candidates(g):  # an image that became unreadable: the next one, deterministically
            out = self.dataset.load(i, epoch, self.seed, size=size)
            if out is not None:
                return i, *out
        raise DarktuneError("no training image is readable any more")

    def _build(self, iteration: int, sub: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        size = self.size_at(iteration)
        images = np.empty((self.per_rank, 3, size, size), np.uint8)
        targets, indices = [], []
        for j, g in enumerate(self.samples(iteration, sub)):
            i, img, boxes = self._sample(g, size)
            indices.append(i)
            images[j] = img.transpose(2, 0, 1)
            if len(boxes):
                b = np.asarray(boxes, np.float32).reshape(-1, 5)
                targets.append(np.concatenate([np.full((len(b), 1), j, np.float32), b], 1))
        t = np.concatenate(targets) if targets else np.zeros((0, 6), np.float32)
        return torch.from_numpy(images), torch.from_numpy(t), indices

    def get(self, iteration: int, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `sub` of 0-based `iteration` for this rank; prefetches the next one when threaded.
        `last_indices` then names its images."""
        key = (iteration, sub)
        fut = self._pending.pop(key, None)
        images, targets, self.last_indices = fut.result() if fut is not None else self._build(iteration, sub)
        if self._pool is not None:
            nxt = (iteration, sub + 1) if sub + 1 < self.subdivisions else (iteration + 1, 0)
            if nxt not in self._pending:
                self._pending[nxt] = self._pool.submit(self._build, *nxt)
        return images, targets

    def inputs(self, iteration: int, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(float images (b, 3, S, S) in [0, 1] on the device, targets (N, 6)) for the training step."""
        images, targets = self.get(iteration, sub)
        return images.to(self.device, non_blocking=True).float().div_(255.0), targets

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()
