"""Detection data loading: decode (cv2), optional RAM cache, augmentation, batching, seeded worker processes.

Owns DetectionDataset (one image + its boxes -> one network-sized sample), collate (samples -> a batch) and
make_loader (an iterator of batches from worker processes).

Reproducibility: the randomness of a sample comes only from numpy Generator([seed, epoch, index]) and the
order of an epoch only from Generator([seed, epoch]); batches come back in order. So the same seed gives the
same batches, whatever the number of workers.

Images are decoded as everywhere else in darktune (`darktune.deploy.detect.read_image`: the stored pixels, EXIF
orientation ignored as darknet does, with the checks of `darktune data check`). Unreadable images are skipped
when loaded (the batch is one image smaller), counted in BatchIterator.skipped / bad_paths; the loader stops
with a DarktuneError only when no image is readable.

Boxes: float32 (n, 5) [cls, cx, cy, w, h] normalised. Images: RGB uint8, (3, S, S) tensors.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from darktune.data.augment import MOSAIC_PROB, AugmentConfig, augment_mosaic, augment_sample, resize_sample
from darktune.data.formats.image import read_image
from darktune.errors import DarktuneError
from darktune.plural import plural

Sample = tuple[torch.Tensor, torch.Tensor]


def decode_image(path: str | Path) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) of the stored pixels, or None when the file is missing, not a regular file, or not
    an image `darktune data check` accepts (damaged, truncated, a decompression bomb: see
    `darktune.deploy.detect.read_image`, which evaluation and detect use too). EXIF orientation is ignored, as
    darknet does, so labels drawn on the stored pixels stay on the object."""
    try:
        bgr = read_image(path)
    except DarktuneError:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class DetectionDataset:
    """items: [(image path, boxes (n, 5))]. size: network input (square). augment: None = plain resize
    (or letterbox), as for evaluation. cache="ram": each image is decoded once and kept as uint8, reduced to
    at most cache_size (default: size) per side (aspect kept when letterboxing). letterbox: resize mode; it
    is on when either this flag or augment.letterbox says so."""

    def __init__(self, items: Sequence[tuple[str | Path, np.ndarray]], size: int,
                 augment: AugmentConfig | None = None, cache: str | None = None, letterbox: bool = False,
                 cache_size: int | None = None):
        if cache not in (None, "ram"):
            raise DarktuneError(f"cache must be None or 'ram', got {cache!r}")
        if int(size) < 32:
            raise DarktuneError(f"network size must be >= 32, got {size}")
        self.size = int(size)
        self.augment = augment
        self.letterbox = bool(letterbox or (augment is not None and augment.letterbox))
        self.cache = cache
        self.cache_size = int(cache_size or size)
        self.paths: list[Path] = []
        self.boxes: list[np.ndarray] = []
        for path, boxes in items:
            arr = np.asarray(boxes, dtype=np.float32)
            if (arr.size and (arr.ndim != 2 or arr.shape[1] != 5)) or not np.isfinite(arr).all():
                raise DarktuneError("boxes must be a finite (n, 5) array [cls, cx, cy, w, h]", path=str(path))
            self.paths.append(Path(path))
            self.boxes.append(arr.reshape(-1, 5))
        self._cache: list[np.ndarray | None] = [None] * len(self.paths)
        self._cache_bad = np.zeros(len(self.paths), dtype=bool)

    def __len__(self) -> int:
        return len(self.paths)

    def _reduce(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        cs = self.cache_size
        if self.letterbox:
            scale = min(1.0, cs / max(h, w))
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        else:  # plain resize stretches each side to the network size anyway; keep each side <= cs
            nw, nh = min(w, cs), min(h, cs)
        if (nw, nh) == (w, h):
            return img
        return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)

    def read_image(self, index: int) -> np.ndarray | None:
        """The (possibly cached, reduced) RGB image, or None when unreadable."""
        if self.cache == "ram":
            if self._cache_bad[index]:
                return None
            if self._cache[index] is None:
                img = decode_image(self.paths[index])
                if img is None:
                    self._cache_bad[index] = True
                    return None
                self._cache[index] = self._reduce(img)
            return self._cache[index]
        return decode_image(self.paths[index])

    def warm_cache(self, threads: int = 2, progress: bool = False) -> int:
        """Decode every image into the RAM cache now (before worker processes fork, so they share it).
        Returns the number of unreadable images."""
        if self.cache != "ram":
            return 0
        todo = [i for i in range(len(self)) if self._cache[i] is None and not self._cache_bad[i]]
        results = _decode_pool(threads).map(self.read_image, todo)  # cv2.imdecode releases the GIL
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc="cache images", unit="img", leave=False)
        for _ in results:
            pass
        return int(self._cache_bad.sum())

    @property
    def cache_bytes(self) -> int:
        return sum(a.nbytes for a in self._cache if a is not None)

    def load(self, index: int, epoch: int = 0, seed: int = 0,
             size: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(RGB uint8 (S, S, 3), boxes (n, 5)) for one sample, or None when its image is unreadable.
        Augmentation draws from Generator([seed, epoch, index]) only."""
        size = int(size or self.size)
        img = self.read_image(index)
        if img is None:
            return None
        boxes = self.boxes[index]
        if self.augment is None:
            return resize_sample(img, boxes, size, self.letterbox)
        cfg = replace(self.augment, letterbox=self.letterbox)
        rng = np.random.default_rng([int(seed), int(epoch), int(index)])
        if not cfg.mosaic or rng.random() >= MOSAIC_PROB:  # darknet mosaics about half the samples
            return augment_sample(img, boxes, size, cfg, rng)
        samples = [(img, boxes)]
        for j in rng.integers(0, len(self), 3):
            other = self.read_image(int(j))
            samples.append((other, self.boxes[int(j)]) if other is not None else (img, boxes))
        return augment_mosaic(samples, size, cfg, rng)

    def __getitem__(self, index: int) -> Sample:
        """(image uint8 (3, S, S) RGB, boxes float32 (n, 5)); DarktuneError when the image is unreadable."""
        out = self.load(index)
        if out is None:
            raise DarktuneError("cannot read image", path=str(self.paths[index]))
        return _to_tensors(*out)


def _to_tensors(img: np.ndarray, boxes: np.ndarray) -> Sample:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(boxes)


def collate(batch: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples -> (images uint8 (B, 3, S, S), targets float32 (N, 6) [image index in batch, cls, cx, cy, w, h])."""
    first = batch[0][0]
    out = None
    if torch.utils.data.get_worker_info() is not None:  # in a worker: build the batch in shared memory
        storage = first.untyped_storage()._new_shared(len(batch) * first.numel() * first.element_size())
        out = first.new(storage).view(len(batch), *first.shape)
    images = torch.stack([img for img, _ in batch], out=out)
    targets = [torch.cat([torch.full((len(b), 1), float(i)), b.reshape(-1, 5).float()], dim=1)
               for i, (_, b) in enumerate(batch)]
    return images, torch.cat(targets, dim=0) if targets else torch.zeros((0, 6))


class _Requests(torch.utils.data.Dataset):
    """Maps a request (index, epoch, size) to (sample, None), or (None, path) when the image is unreadable."""

    def __init__(self, dataset: DetectionDataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, request: tuple[int, int, int]) -> tuple[Sample | None, str | None]:
        index, epoch, size = request
        out = self.dataset.load(index, epoch, self.seed, size)
        if out is None:
            return None, str(self.dataset.paths[index])
        return _to_tensors(*out), None


def _collate_requests(results: list[tuple[Sample | None, str | None]]):
    samples = [s for s, _ in results if s is not None]
    bad = [p for _, p in results if p is not None]
    if not samples:
        return torch.zeros((0, 3, 0, 0), dtype=torch.uint8), torch.zeros((0, 6)), bad
    return (*collate(samples), bad)


class _BatchPlan:
    """Batches of requests, built in the main process: epoch order from Generator([seed, epoch]); with
    infinite=True the stream runs on across epochs, otherwise one epoch with a final partial batch."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, infinite: bool, size: int,
                 sizes: Callable[[int], int] | None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.infinite, self.size, self.sizes = shuffle, infinite, size, sizes

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite loader has no length")
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        pending: list[tuple[int, int]] = []
        batch_no, epoch = 0, 0
        while True:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                     else np.arange(self.n))
            for i in order.tolist():
                pending.append((i, epoch))
                if len(pending) == self.batch_size:
                    yield self._requests(pending, batch_no)
                    pending, batch_no = [], batch_no + 1
            epoch += 1
            if not self.infinite:
                break
        if pending:
            yield self._requests(pending, batch_no)

    def _requests(self, pending: list[tuple[int, int]], batch_no: int) -> list[tuple[int, int, int]]:
        size = int(self.sizes(batch_no)) if self.sizes is not None else self.size
        return [(i, epoch, size) for i, epoch in pending]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _decode_pool(threads: int) -> ThreadPoolExecutor:
    """A decoding thread pool that lives as long as this process (one per size).

    `make_loader` forks its workers right after `warm_cache`. A pool shut down just before would still have
    threads running OpenCV's thread-local-storage destructors (they run after Python has joined the thread),
    and a fork at that moment copies a locked OpenCV mutex into the child, whose next warpAffine then waits
    forever (measured: 1 fork in 25-33 hung). Threads that stay, idle on their queue, hold no such lock."""
    key = (os.getpid(), max(1, threads))  # a forked child inherits the object but not its threads
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = ThreadPoolExecutor(key[1], thread_name_prefix="darktune-decode")
    return pool


def _worker_init(worker_id: int) -> None:
    # One process per core, so no OpenCV threads. It must be 0: in a forked child whose parent already ran
    # OpenCV's thread pool, setNumThreads(1) waits for pool threads that do not exist there (a hang).
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


class BatchIterator:
    """Iterator of (images uint8 (B, 3, S, S), targets float32 (N, 6)); counts skipped unreadable images."""

    def __init__(self, loader: torch.utils.data.DataLoader, n_items: int):
        self._it = iter(loader)
        self._n = n_items
        self.skipped = 0
        self.bad_paths: set[str] = set()
        self.images = 0
        self.batches = 0

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            images, targets, bad = next(self._it)
            self.skipped += len(bad)
            self.bad_paths.update(bad)
            if images.shape[0]:
                self.images += images.shape[0]
                self.batches += 1
                return images, targets
            if self.images == 0 and self.skipped >= self._n:
                first = sorted(self.bad_paths)[0] if self.bad_paths else "?"
                raise DarktuneError(f"none of the {plural(self._n, 'image')} could be read (first: {first})")

    def close(self) -> None:
        """Stop the worker processes."""
        self._it = iter(())


def make_loader(dataset: DetectionDataset, batch_size: int, workers: int, seed: int, shuffle: bool = True,
                infinite: bool = True, sizes: Callable[[int], int] | None = None,
                progress: bool = False) -> BatchIterator:
    """Batches from `workers` processes (0 = in this process). sizes(batch_number) -> network size gives
    multi-scale training (e.g. a new augment.random_network_size every 10 batches); default dataset.size."""
    if len(dataset) == 0:
        raise DarktuneError("the data set has no images")
    if batch_size < 1 or workers < 0:
        raise DarktuneError(f"batch size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
    if workers > 0:
        dataset.warm_cache(threads=workers, progress=progress)
    plan = _BatchPlan(len(dataset), batch_size, seed, shuffle, infinite, dataset.size, sizes)
    extra = {}
    if workers > 0:
        extra = {"worker_init_fn": _worker_init, "prefetch_factor": 4}
        if "fork" in multiprocessing.get_all_start_methods():
            extra["multiprocessing_context"] = "fork"  # workers share the RAM cache copy-on-write
    loader = torch.utils.data.DataLoader(_Requests(dataset, seed), batch_sampler=plan, num_workers=workers,
                                         collate_fn=_collate_requests,
                                         generator=torch.Generator().manual_seed(seed), **extra)
    return BatchIterator(loader, len(dataset))
