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
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from darktune.errors import DarktuneError

CACHE_SCALE = 1.25  # RAM cache keeps each image at most this times the network size per side


def subset(items: list, max_images: int | None, seed: int) -> list:
    """The first `max_images` items of a seeded permutation (nested: a smaller N is a prefix of a larger)."""
    if not max_images or max_images >= len(items):
        return list(items)
    if max_images < 1:
        raise DarktuneError(f"--max-images must be >= 1, got {max_images}")
    order = np.random.default_rng([int(seed), 4242]).permutation(len(items))
    return [items[i] for i in sorted(order[:max_images].tolist())]


class TrainBatches:
    """Micro-batches of (uint8 images (b, 3, S, S), targets (N, 6) [image, class, cx, cy, w, h])."""

    def __init__(self, items: list[tuple[Path, np.ndarray]], size: tuple[int, int], augment, batch: int,
                 subdivisions: int, seed: int, rank: int = 0, world: int = 1, workers: int = 0):
        if not items:
            raise DarktuneError("no usable training images")
        micro = batch // subdivisions
        if batch % subdivisions or micro % world:
            raise DarktuneError(f"batch {batch} must split into {subdivisions} subdivisions of a size divisible "
                                f"by the {world} processes")
        from darktune.data.loader import DetectionDataset

        if size[0] != size[1]:
            raise DarktuneError(f"training needs a square network input, got {size[1]}x{size[0]}")
        self.size = size  # (h, w)
        self.dataset = DetectionDataset(items, size[0], augment, cache="ram",
                                        cache_size=round(CACHE_SCALE * size[0]))
        self.batch, self.subdivisions, self.micro = batch, subdivisions, micro
        self.seed, self.rank, self.world = int(seed), rank, world
        self._perms: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
        self._pending: dict[tuple[int, int], Future] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, int(epoch), 17]).permutation(len(self.dataset))
            self._perms = {epoch: perm, **{e: p for e, p in self._perms.items() if e >= epoch - 1}}
        return perm

    def position(self, iteration: int) -> dict:
        """Loader position before 0-based `iteration` (for checkpoints and logs)."""
        epoch, index = divmod(iteration * self.batch, len(self.dataset))
        return {"epoch": int(epoch), "index": int(index), "sample": int(iteration * self.batch)}

    def _sample(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, k = divmod(g, len(self.dataset))
        perm = self._perm(epoch)
        for step in range(len(perm)):  # an image that became unreadable: the next one, deterministically
            out = self.dataset.load(int(perm[(k + step) % len(perm)]), epoch, self.seed)
            if out is not None:
                return out
        raise DarktuneError("no training image is readable any more")

    def _build(self, iteration: int, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_rank = self.micro // self.world
        first = iteration * self.batch + sub * self.micro + self.rank * per_rank
        images = np.empty((per_rank, 3, self.size[0], self.size[1]), np.uint8)
        targets = []
        for j in range(per_rank):
            img, boxes = self._sample(first + j)
            images[j] = img.transpose(2, 0, 1)
            if len(boxes):
                b = np.asarray(boxes, np.float32).reshape(-1, 5)
                targets.append(np.concatenate([np.full((len(b), 1), j, np.float32), b], 1))
        t = np.concatenate(targets) if targets else np.zeros((0, 6), np.float32)
        return torch.from_numpy(images), torch.from_numpy(t)

    def get(self, iteration: int, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `sub` of 0-based `iteration` for this rank; prefetches the next one when threaded."""
        key = (iteration, sub)
        fut = self._pending.pop(key, None)
        out = fut.result() if fut is not None else self._build(iteration, sub)
        if self._pool is not None:
            nxt = (iteration, sub + 1) if sub + 1 < self.subdivisions else (iteration + 1, 0)
            if nxt not in self._pending:
                self._pending[nxt] = self._pool.submit(self._build, *nxt)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()
