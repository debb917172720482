"""Frozen-prefix feature cache for training runs whose inputs never change (no augmentation, one network size).

With layers 0..P-1 frozen, their outputs for a training image are a pure function of that image: the frozen
layers run batch norm on fixed statistics and never change. Without augmentation each image always becomes the
same input tensor, so the prefix outputs of an image can be computed once and reused every epoch. A cached
micro-batch then runs only layers P.. (forward and backward): with yolov3-tiny at 128 px, freeze 13 skips about
two thirds of the forward convolution work and freeze 20 about five sixths.

Exactness: a micro-batch with an image not yet cached is computed as without the cache (the whole micro-batch
through the prefix) and its per-image slices are stored. A micro-batch made only of cached images is assembled
from those slices. That equals the uncached computation bit for bit when the backend computes each sample of a
batch independently of the others (true of oneDNN on x86 for a fixed batch size, measured). The cache checks it
on the run: the first fully cached micro-batch is also computed the plain way and compared, tensor by tensor,
values and memory layout; on any difference the cache turns itself off for the run and says why, and training
goes on uncached. Nothing is stored beyond `max_bytes` (later images are computed each time).

Used by `train_steps.train_step` when `feature_cache` (TrainConfig) is on (the default) and the run qualifies:
one process, no augmentation or multi-scale (CPU loader or the device input path), a frozen prefix, no
torch.compile (nor DDP).

Across runs: inside `sharing_features(store)`, the runs of this process (the trials of a `darktune recipe` search,
trained one after the other) also keep their prefix outputs in one `SharedFeatures` store and take them from it.
An entry is keyed by what makes the outputs equal: the network's layers and the frozen prefix's tensors (weights
and batch-norm statistics, sha256), the prefix length, how the run computes (device, autocast, torch threads), the
micro-batch size, and the bytes, shape and layout of the image's input tensor (hashed once per image and run). A
run that takes entries from the store still checks its first fully cached micro-batch against a plain pass, as
above, and turns the cache off on a difference. The store holds at most its `max_bytes` (the same default budget);
what a run takes from it is the same tensors, not copies.
"""

from __future__ import annotations

import contextlib
import hashlib
from contextvars import ContextVar
from typing import Iterator

import torch

from darktune.darknet.prefix import PrefixState, forward_rest, memory_budget, run_prefix
from darktune.train.freeze import PrefixFrozenModel


class SharedFeatures:
    """Prefix outputs of one image each, kept across the training runs of one process (see the module docstring),
    keyed by `FeatureCache.shared_key`. Default budget: 2 GiB or a quarter of the RAM, whichever is smaller."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = memory_budget(2 << 30, 0.25) if max_bytes is None else max_bytes
        self.items: dict[tuple, PrefixState] = {}
        self.nbytes = 0
        self.taken = 0  # images runs took from here

    def put(self, key: tuple, state: PrefixState, nbytes: int) -> None:
        if key not in self.items and self.nbytes + nbytes <= self.max_bytes:
            self.items[key] = state
            self.nbytes += nbytes


_SHARED: ContextVar[SharedFeatures | None] = ContextVar("darktune_shared_features", default=None)


@contextlib.contextmanager
def sharing_features(store: SharedFeatures | None) -> Iterator[SharedFeatures | None]:
    """The runs started inside share `store` (None: each run keeps its own cache only)."""
    token = _SHARED.set(store)
    try:
        yield store
    finally:
        _SHARED.reset(token)


class FeatureCache:
    """Per-image prefix outputs (`PrefixState` slices of one sample each), keyed by training image index; with a
    `shared` store, also kept there and taken from there. Default budget: 2 GiB or a quarter of the RAM, whichever
    is smaller."""

    def __init__(self, max_bytes: int | None = None, shared: SharedFeatures | None = None):
        self.max_bytes = memory_budget(2 << 30, 0.25) if max_bytes is None else max_bytes
        self.prefix: int | None = None
        self.items: dict[int, PrefixState] = {}
        self.nbytes = 0
        self.verified = False
        self.off_reason: str | None = None
        self.reported = False  # off_reason logged
        self.hits = 0  # micro-batches assembled from the cache
        self.misses = 0  # micro-batches computed through the prefix
        self.shared = shared
        self.shared_taken = 0  # images taken from the shared store
        self.model_key: str | None = None  # the network and its frozen prefix's tensors (with a shared store)
        self.keys: dict[int, tuple] = {}  # image index -> its shared key (its input never changes in a run)

    def clear(self) -> None:
        self.items, self.nbytes, self.verified, self.keys = {}, 0, False, {}

    def summary(self) -> dict:
        out = {"hits": self.hits, "misses": self.misses, "images": len(self.items), "bytes": self.nbytes,
               "off": self.off_reason}
        if self.shared is not None:
            out["shared_images"] = self.shared_taken
        return out

    def forward(self, net: PrefixFrozenModel, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """`net(x)` for the micro-batch of training images `indices` (the [yolo] outputs)."""
        if net.prefix != self.prefix:  # a new frozen set (unfreeze): the old outputs no longer apply
            self.clear()
            self.prefix = net.prefix
            self.model_key = prefix_digest(net) if self.shared is not None else None
        model, folded = net.model, net.folded
        whole = len(indices) == x.shape[0]
        if whole and self.shared is not None:
            self._take_shared(x, indices)
        if not whole or not all(i in self.items for i in indices):
            self.misses += 1
            state = run_prefix(model, x, net.prefix, folded)
            self._store(state, indices, x if whole else None)
            return forward_rest(model, state, folded)
        assembled = self._assemble(indices)
        if not self.verified:
            plain = run_prefix(model, x, net.prefix, folded)
            why = _difference(plain, assembled)
            if why:
                self.off_reason = f"cached prefix outputs differ from a plain pass ({why}): feature cache off"
                self.clear()
                return forward_rest(model, plain, folded)
            self.verified = True
        self.hits += 1
        return forward_rest(model, assembled, folded)

    def _store(self, state: PrefixState, indices: list[int], x: torch.Tensor | None) -> None:
        per_sample = state.nbytes() // max(1, len(indices))
        for j, i in enumerate(indices):
            if i in self.items or self.nbytes + per_sample > self.max_bytes:
                continue
            outputs = {k: _row(t, j) for k, t in state.outputs.items()}
            self.items[i] = PrefixState(state.start, _row(state.x, j), outputs, [_row(h, j) for h in state.heads])
            self.nbytes += per_sample
            if self.shared is not None and x is not None:
                self.shared.put(self.shared_key(x, j, i), self.items[i], per_sample)

    def _take_shared(self, x: torch.Tensor, indices: list[int]) -> None:
        """The images of the micro-batch not in this run's cache yet, from the shared store where it has them."""
        for j, i in enumerate(indices):
            if i in self.items:
                continue
            state = self.shared.items.get(self.shared_key(x, j, i))
            if state is not None and self.nbytes + state.nbytes() <= self.max_bytes:
                self.items[i] = state
                self.nbytes += state.nbytes()
                self.shared_taken += 1
                self.shared.taken += 1

    def shared_key(self, x: torch.Tensor, j: int, i: int) -> tuple:
        """What makes sample j's prefix outputs equal in another run: the network and its prefix tensors, how this
        run computes (device, autocast, threads), the micro-batch size, and the input's bytes, shape and layout."""
        if i not in self.keys:
            row = x[j]
            data = hashlib.sha256(_bytes(row)).hexdigest()
            device = x.device.type
            autocast = (torch.is_autocast_enabled(device), str(torch.get_autocast_dtype(device)))
            self.keys[i] = (self.model_key, self.prefix, str(x.device), autocast, torch.get_num_threads(),
                            x.shape[0], tuple(row.shape), row.stride(), str(x.dtype), data)
        return self.keys[i]

    def _assemble(self, indices: list[int]) -> PrefixState:
        rows = [self.items[i] for i in indices]
        first = rows[0]
        return PrefixState(first.start, _cat([r.x for r in rows], first.x),
                           {k: _cat([r.outputs[k] for r in rows], first.outputs[k]) for k in first.outputs},
                           [_cat([r.heads[n] for r in rows], h) for n, h in enumerate(first.heads)])


def _bytes(t: torch.Tensor) -> bytes:
    """The tensor's values as bytes, any dtype (bfloat16 included), in logical order."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def _row(t: torch.Tensor, j: int) -> torch.Tensor:
    """Sample j of a batch as a (1, ...) tensor with its own storage, in the batch's memory layout."""
    return t[j:j + 1].clone(memory_format=torch.preserve_format)


def _cat(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    out = torch.cat(rows, 0)
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _difference(a: PrefixState, b: PrefixState) -> str:
    """'' when the two states hold equal tensors with equal strides, else what differs."""
    pairs = [("output", a.x, b.x)] + [(f"layer {k}", a.outputs[k], b.outputs.get(k)) for k in a.outputs]
    pairs += [(f"head {n}", h, g) for n, (h, g) in enumerate(zip(a.heads, b.heads))]
    if set(a.outputs) != set(b.outputs) or len(a.heads) != len(b.heads):
        return "different layers"
    for name, s, t in pairs:
        if t is None or s.shape != t.shape or s.dtype != t.dtype:
            return f"{name}: shape or type"
        if s.stride() != t.stride():
            return f"{name}: memory layout"
        if not torch.equal(s, t):
            return f"{name}: values, max abs diff {(s.float() - t.float()).abs().max().item():.3g}"
    return ""


def prefix_digest(net: PrefixFrozenModel) -> str:
    """sha256 of the network's layers (the cfg as parsed) and of every tensor of its frozen prefix, in order."""
    h = hashlib.sha256(repr(net.model.spec.layers).encode())
    h.update(f"prefix {net.prefix} folded {net.folded is not None}".encode())
    for i in range(net.prefix):
        for name, t in net.model.layers[i].state_dict().items():
            h.update(f"{i}.{name} {t.dtype} {tuple(t.shape)}".encode())
            h.update(_bytes(t))
    return h.hexdigest()


def feature_cache_for(run) -> FeatureCache | None:
    """The run's cache when the run qualifies now (see the module docstring; an unfreeze can end that), created
    on first use; else None."""
    cache = getattr(run, "feature_cache", None)
    if cache is not None and cache.off_reason:
        if not cache.reported:
            run.log(cache.off_reason, important=True)
            cache.reported = True
        return None
    if run.config.feature_cache is False or run.dist.world != 1:
        return None
    if not isinstance(run.net, PrefixFrozenModel) or run.net.prefix == 0:
        return None
    if not getattr(run.data, "deterministic", False) or not hasattr(run.data, "last_indices"):
        return None
    if cache is None:
        run.feature_cache = cache = FeatureCache(shared=_SHARED.get())
    return cache
