"""Detection over many sources: the next ones are opened (and, with several workers, detected) in background
threads while the current one is reported, in the order given; a video's frames likewise (`ordered_map`).

On a CPU a batch-1 network call does not keep all cores busy: the runtimes' parallel sections are separated
by work that runs on one thread, and reading and decoding an image, resizing it, decoding the heads and NMS
run on one thread too. `detect` over a list of image files therefore runs `workers` images side by side (one
per CPU by default, no more than there are images), the CPU threads shared out among them. yolov3-tiny at
416 on a 2-core Xeon, onnxruntime, the network call alone: 25.3 ms per image with 2 threads on one image,
23.3 ms per image with two single-thread calls side by side (`benchmarks/bench_detect_default.py` gives the
whole path). onnxruntime and OpenCV give the same bits on one thread as on several; torch's convolutions may
round differently (1e-5 on raw heads).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TypeVar

from darktune.devices import cpu_count, parse_device
from darktune.deploy.video import IMAGE_SUFFIXES, is_camera

T = TypeVar("T")
U = TypeVar("U")


def workers_pool(workers: int) -> ThreadPoolExecutor:
    """The background threads of one detect run (`in_order`'s and `ordered_map`'s): the same threads for every
    source, so a backend made per thread (`PerThread`: OpenCV DNN's nets) is made once per thread."""
    return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="darktune-read")


def in_order(sources: list[str], job: Callable[[str], T], ahead: int = 1,
             inline: Callable[[str], bool] = is_camera, pool: ThreadPoolExecutor | None = None
             ) -> Iterator[tuple[str, T]]:
    """(source, job(source)) for each source in order, the jobs of up to `ahead` sources after the current
    one running in background threads (`pool`'s, else its own). A source for which `inline` is true (a
    camera) runs its job on the caller's thread when its turn comes, and nothing after it starts before then.
    An exception in a job is raised here, in its turn."""
    with (nullcontext(pool) if pool is not None else workers_pool(ahead)) as pool:
        queued: deque[tuple[str, Future | None]] = deque()
        nxt = 0

        def top_up() -> None:
            nonlocal nxt
            while nxt < len(sources) and sum(f is not None for _, f in queued) < ahead:
                if queued and queued[-1][1] is None:  # a camera waits for its turn, and so does all after it
                    return
                source = sources[nxt]
                nxt += 1
                queued.append((source, None if inline(source) else pool.submit(job, source)))

        top_up()
        while queued:
            source, future = queued.popleft()
            result = future.result() if future is not None else job(source)
            top_up()
            yield source, result


class PerThread:
    """One backend per thread: the first thread that asks gets `backend` itself, every other thread its own
    `backend.for_worker()` (the same object for torch and onnxruntime, a second net for OpenCV DNN)."""

    def __init__(self, backend):
        self.backend = backend
        self._lock = threading.Lock()
        self._local = threading.local()
        self._given = False

    def get(self):
        mine = getattr(self._local, "backend", None)
        if mine is None:
            with self._lock:
                first, self._given = not self._given, True
            mine = self._local.backend = self.backend if first else self.backend.for_worker()
        return mine


def ordered_map(fn: Callable[[T], U], items: Iterable[T], workers: int, pool: ThreadPoolExecutor
                ) -> Iterator[U]:
    """fn(item) for each item, in order, up to `workers` calls at once on `pool`'s threads; the items are
    drawn on the caller's thread (a video's frames, decoded there while the workers detect). An exception in
    a call is raised here, in its turn."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def all_images(sources: list[str]) -> bool:
    """Every source names an image file (by suffix)."""
    return all(Path(s).suffix.lower() in IMAGE_SUFFIXES for s in sources)


def worker_count(sources: list[str], device: str, requested: int | None = None) -> int:
    """How many images (or a video's frames) run side by side: `requested` when given; else 1 off a CPU, on a
    CPU with one core and when a camera is among the sources (a live stream wants each frame's result at once);
    else one per CPU, and no more than there are sources when they are all image files (by suffix)."""
    images = all_images(sources)
    if requested is not None:
        return max(1, min(requested, len(sources)) if images else requested)
    if parse_device(device).type != "cpu" or cpu_count() < 2 or any(is_camera(s) for s in sources):
        return 1
    return max(1, min(cpu_count(), len(sources))) if images else cpu_count()


def threads_each(workers: int) -> int:
    """CPU threads for each of `workers` images side by side: the CPUs shared out, at least one each (two
    images on a 2-core machine: one thread each; two on a 32-core one: 16 each)."""
    return max(1, cpu_count() // max(1, workers))


@contextmanager
def threads_for_each(threads: int | None):
    """torch and OpenCV on `threads` threads inside the block (restored after it; None: left as they are), so
    that images running side by side share the CPUs rather than each call waking a pool of threads that
    compete for the same cores. (onnxruntime's threads are the session's own: build it with `threads`.)"""
    if threads is None:
        yield
        return
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
