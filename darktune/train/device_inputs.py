"""The device-side training input path (``--gpu-augment``): decode once into a uint8 cache, augment whole
batches on the training device.

Per micro-batch: the host picks the images exactly as the CPU loader does (`darktune.train.inputs.SampleOrder`:
sample g is image perm(seed, epoch)[k], an unreadable image replaced by the next of the permutation, rank r
takes its slice), gathers their uint8 slots from the cache (`darktune.data.uint8_cache.build_cache`, a
memory-mapped file under `cache_dir()`, built at ``CACHE_SCALE x`` the largest training size) and copies
them to the device (pinned, non_blocking on CUDA); `darktune.data.batch_augment.augment_batch` then draws
every random choice from a generator on the device seeded with ``seed * 1_000_003 + iteration * 64 + sub``
and makes float images in [0, 1] at the iteration's network size, with the boxes (fixed shape: dropped
boxes are zero rows, which the loss ignores). So a batch is a pure function of (seed, iteration, sub) and a
resumed run sees the same batches.

Under DDP every rank draws the parameters of the whole micro-batch from the same seed and applies its rows
only, so the union over ranks is the single-process micro-batch. With mosaic (tiles show other images of the
micro-batch) each rank augments the whole micro-batch and keeps its slice (world x the augmentation work).

No host sync: indices are host integers, the generator lives on the device, no ``.item()``. The augmented
images differ from the CPU loader's (another random stream, bilinear sampling of a resized slot), not their
distribution (same darknet parameters: `darktune.data.batch_augment`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from darktune.data.batch_augment import (
    BatchParams,
    apply_params,
    augment_batch,
    sample_params,
)
from darktune.darknet.cfg import YoloSpec
from darktune.darknet.memory import check_memory
from darktune.data.augment import AugmentConfig
from darktune.data.uint8_cache import build_cache, cache_dir
from darktune.errors import DarktuneError
from darktune.train.inputs import CACHE_SCALE, SampleOrder, TrainBatches, size_range

SEED_STRIDE = 1_000_003


def batch_seed(seed: int, iteration: int, sub: int) -> int:
    """Generator seed of micro-batch `sub` of 0-based `iteration`."""
    return int(seed) * SEED_STRIDE + int(iteration) * 64 + int(sub)


class DeviceBatches(SampleOrder):
    """Micro-batches augmented on `device`: ``inputs(iteration, sub) -> (float (b, 3, S, S), targets (M, 6))``."""

    input_path = "gpu_augment"

    def __init__(self, items: list[tuple[Path, np.ndarray]], size: tuple[int, int], augment, batch: int,
                 subdivisions: int, seed: int, rank: int = 0, world: int = 1, multi_scale: bool | float = False,
                 device: torch.device | None = None, letterbox: bool = False, cache_path: Path | None = None,
                 progress: bool = False, iterations: int | None = None):
        if not items:
            raise DarktuneError("no usable training images")
        super().__init__(len(items), size, batch, subdivisions, seed, rank, world, multi_scale, iterations)

        self.device = device or torch.device("cpu")
        letterbox = bool(letterbox or (augment is not None and augment.letterbox))
        # no augmentation: the same sampler as a plain resize (or letterbox)
        self.aug = augment if augment is not None else AugmentConfig(letterbox=letterbox)
        self.cache = build_cache(items, round(CACHE_SCALE * self.largest_size),
                                 path=cache_path if cache_path is not None else cache_dir(),
                                 keep_aspect=letterbox, progress=progress)
        self.cache_of_item = np.full(len(items), -1, np.int64)  # item index -> cache index (-1: unreadable)
        self.cache_of_item[self.cache.items_index] = np.arange(len(self.cache))
        self.skipped = len(self.cache.skipped)
        self._gen = torch.Generator(device=self.device)
        self._plain = augment is None  # no augmentation: an image always becomes the same input
        self.last_indices: list[int] = []  # cache row of each sample of the micro-batch `inputs` returned last

    @property
    def deterministic(self) -> bool:
        """Whether every image always becomes the same input tensor (no augmentation, one network size, and
        each rank augments only its own samples)."""
        return self._plain and not self.multi_scale and self.world == 1

    def cache_indices(self, samples: range) -> np.ndarray:
        """Cache rows of the given samples (host ints; an unreadable image replaced as the CPU loader does)."""
        out = [next(c for c in (self.cache_of_item[i] for _, i in self.candidates(g)) if c >= 0) for g in samples]
        return np.asarray(out, np.int64)

    def _rows(self, iteration: int, sub: int) -> np.ndarray:
        """Cache rows this rank augments: its slice, or the whole micro-batch when tiles mix images."""
        if self.world == 1 or not self.aug.mosaic:
            return self.cache_indices(self.samples(iteration, sub))
        first = iteration * self.batch + sub * self.micro
        return self.cache_indices(range(first, first + self.micro))

    def inputs(self, iteration: int, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(float images (b, 3, S, S) in [0, 1] on the device, targets (M, 6) on the device)."""
        size = self.size_at(iteration)
        rows = self._rows(iteration, sub)
        self.last_indices = rows.tolist()
        u8, t = self.cache.batch(rows, self.device)
        ext = self.cache.extents(rows, self.device)
        self._gen.manual_seed(batch_seed(self.seed, iteration, sub))
        if self.world == 1:
            return augment_batch(u8, t, size, self.aug, self._gen, extents=ext, compact=False)
        if self.aug.mosaic:
            x, t = augment_batch(u8, t, size, self.aug, self._gen, extents=ext, compact=False)
            return _rank_slice(x, t, self.rank * self.per_rank, self.per_rank)
        params = _param_rows(sample_params(self.micro, self.aug, size, self._gen, self.device),
                             self.rank * self.per_rank, self.per_rank)
        return apply_params(u8, t, params, size, self.aug.letterbox, ext, compact=False,
                            with_hue=self.aug.hue > 0)

    def close(self) -> None:
        pass


def _param_rows(p, first: int, n: int):
    """The BatchParams of rows first..first+n-1 of a batch drawn without mosaic (each row its own image)."""
    rows = slice(first, first + n)
    src = torch.arange(n, device=p.src.device)[:, None]
    return BatchParams(src, p.tiles[rows], p.pads[rows], p.flip[rows], p.hue[rows], p.sat[rows], p.exp[rows])


def _rank_slice(x: torch.Tensor, t: torch.Tensor, first: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images first..first+n-1 of an augmented batch and their targets, without a host sync: rows of other
    images become zero boxes (ignored by the loss) at a valid image index."""
    img = t[:, 0] - first
    mine = (img >= 0) & (img < n)
    t = torch.cat([img.clamp(0, n - 1)[:, None], t[:, 1:2], t[:, 2:] * mine[:, None]], 1)
    return x[first:first + n], t


def multi_scale_of(config, spec) -> float:
    """Multi-scale coefficient (0: off): --multi-scale / --no-multi-scale, else darknet's: on when the last [yolo]
    layer of the cfg sets random (darknet reads the last layer's); the coefficient is that random value when it
    is not 0 or 1, else 1.4. `--no-augment` (no random transformation of the inputs) also means no random sizes
    unless asked for."""
    yolos = [layer for layer in spec.layers if isinstance(layer, YoloSpec)]
    random = float(yolos[-1].random) if yolos else 0.0
    coef = random if random not in (0.0, 1.0) else 1.4
    if config.multi_scale is not None:
        return coef if config.multi_scale else 0.0
    if not config.augment:
        return 0.0
    return coef if random else 0.0


def check_run_memory(config, spec, micro_batch: int, device) -> None:
    """Refuse a run whose micro-batch at its largest multi-scale size (training), or whose evaluation batch
    (inference), needs more memory than `device` has (darktune.darknet.memory), before anything is allocated."""
    multi = multi_scale_of(config, spec)
    largest = size_range(spec.net.width, multi)[1] if multi else spec.net.width
    sizes = f" at multi-scale's largest size {largest}" if multi else ""
    check_memory(spec.with_size(largest, largest) if multi else spec, micro_batch, device, training=True,
                 what=f"training {spec.path}{sizes}", advice="use a smaller --batch or more --subdivisions, or "
                 "a smaller --size" + (" (or --no-multi-scale)" if multi else ""))
    check_memory(spec, config.eval_batch, device, what=f"evaluating {spec.path}",
                 advice="use a smaller eval_batch (an experiment spec's train: key) or --size")


def make_batches(config, spec, items: list, augment, batch: int, subdivisions: int, dist, progress: bool):
    """The run's batch source: `DeviceBatches` with --gpu-augment (default on CUDA), else the CPU loader
    `darktune.train.inputs.TrainBatches`; both have `inputs`, `position`, `size_at`, `input_path`, `close`."""
    size = (spec.net.height, spec.net.width)
    multi = multi_scale_of(config, spec)
    iterations = config.iterations or spec.net.max_batches  # darknet: the largest size for the last ~100
    gpu = dist.device.type == "cuda" if config.gpu_augment is None else config.gpu_augment
    if gpu:
        return DeviceBatches(items, size, augment, batch, subdivisions, config.seed, dist.rank, dist.world, multi,
                             dist.device, letterbox=spec.net.letter_box, progress=progress,
                             iterations=iterations)
    return TrainBatches(items, size, augment, batch, subdivisions, config.seed, dist.rank, dist.world,
                        config.workers, multi, dist.device, iterations)
