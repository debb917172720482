"""Tests of darktune.data.uint8_cache: decode-once content, targets, RAM / memory-mapped / device-resident
batches, reuse by content key, rebuild of damaged caches, skipped unreadable images, user files untouched."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from darktune.data.augment import AugmentConfig
from darktune.data.batch_augment import augment_batch
from darktune.data.uint8_cache import GREY, build_cache, cache_dir
from darktune.errors import DarktuneError


@pytest.fixture
def items(tmp_path) -> list[tuple[Path, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(60, 90), (100, 50), (64, 64), (30, 200), (80, 80)]):
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), img)
        boxes = np.array([[k % 2, 0.2 + 0.1 * k, 0.5, 0.1, 0.2] for k in range(i)], np.float32).reshape(-1, 5)
        out.append((path, boxes))
    return out


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_ram_cache_holds_resized_images_and_boxes(items):
    cache = build_cache(items, 48)
    assert len(cache) == 5 and cache.size == 48 and cache.path is None and not cache.skipped
    for i, (path, boxes) in enumerate(items):
        rgb = _rgb(path)
        interp = cv2.INTER_AREA if rgb.shape[0] >= 48 and rgb.shape[1] >= 48 else cv2.INTER_LINEAR
        ref = cv2.resize(rgb, (48, 48), interpolation=interp).transpose(2, 0, 1)
        assert np.array_equal(cache.images[cache.rows[i]], ref)
        assert np.array_equal(cache.boxes_of(i), boxes)
    images, targets = cache.batch([4, 0, 3])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 48, 48)
    assert torch.equal(images[0], torch.from_numpy(np.asarray(cache.images[4])))
    assert targets.shape == (4 + 0 + 3, 6)
    assert targets[:, 0].tolist() == [0.0] * 4 + [2.0] * 3
    assert np.allclose(targets[:4, 1:].numpy(), items[4][1]) and np.allclose(targets[4:, 1:].numpy(), items[3][1])
    assert cache.extents([1]).tolist() == [[48.0, 48.0]]


def test_keep_aspect_slots_are_grey_padded(items):
    cache = build_cache(items, 50, keep_aspect=True)
    ext = cache.extents(range(5)).numpy()
    assert ext.tolist() == [[50, 33], [25, 50], [50, 50], [50, 8], [50, 50]]
    slot = np.asarray(cache.images[cache.rows[3]])
    assert (slot[:, 8:, :] == GREY).all() and not (slot[:, :8, :] == GREY).all()


def test_memory_mapped_cache_is_reused_by_content(items, tmp_path):
    folder = tmp_path / "cache"
    first = build_cache(items, 40, folder)
    assert isinstance(first.images, np.memmap) and first.path.parent == folder
    ram = build_cache(items, 40)
    assert first.key == ram.key and np.array_equal(np.asarray(first.images), ram.images)
    stamp = os.stat(first.path).st_mtime_ns
    again = build_cache(items, 40, folder)
    assert again.path == first.path and os.stat(again.path).st_mtime_ns == stamp  # not rebuilt
    # the same bytes under other names: same key; changed bytes: new key
    moved = []
    for i, (p, b) in enumerate(items):
        q = tmp_path / "moved" / f"x{i}.png"
        q.parent.mkdir(exist_ok=True)
        q.write_bytes(p.read_bytes())
        moved.append((q, b))
    assert build_cache(moved, 40, folder).path == first.path
    cv2.imwrite(str(moved[2][0]), np.zeros((10, 10, 3), np.uint8))
    assert build_cache(moved, 40, folder).key != first.key
    assert build_cache(items, 41, folder).key != first.key
    assert build_cache(items, 40, folder, keep_aspect=True).key != first.key


@pytest.mark.parametrize("damage", ["truncate", "manifest", "flip_byte", "pickle", "missing_npy"])
def test_damaged_cache_is_rebuilt(items, tmp_path, damage):
    folder = tmp_path / "cache"
    built = build_cache(items, 40, folder)
    reference = np.array(built.images)
    npy, manifest = built.path, built.path.with_suffix(".json")
    del built
    if damage == "truncate":
        data = npy.read_bytes()
        npy.write_bytes(data[: len(data) // 2])
    elif damage == "manifest":
        manifest.write_text("{not json")
    elif damage == "flip_byte":
        data = bytearray(npy.read_bytes())
        data[-7] ^= 0xFF  # in the last row: always among the sampled rows
        npy.write_bytes(bytes(data))
    elif damage == "pickle":
        np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        npy.unlink()
    rebuilt = build_cache(items, 40, folder)
    assert np.array_equal(np.asarray(rebuilt.images), reference)
    assert json.loads(manifest.read_text())["key"] == rebuilt.key


def test_full_verify_catches_damage_in_any_row(items, tmp_path):
    folder = tmp_path / "cache"
    built = build_cache(items, 40, folder)
    reference = np.array(built.images)
    offset = built.path.stat().st_size - reference.nbytes + reference[0].nbytes * 2 + 5  # inside row 2
    del built
    npy = next(folder.glob("*.npy"))
    data = bytearray(npy.read_bytes())
    data[offset] ^= 0xFF
    npy.write_bytes(bytes(data))
    assert np.array_equal(np.asarray(build_cache(items, 40, folder, verify="full").images), reference)


def test_unreadable_images_are_skipped_and_counted(items, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    cut = tmp_path / "cut.png"
    cut.write_bytes(items[0][0].read_bytes()[:100])
    mixed = [items[0], (bad, np.zeros((0, 5))), items[1], (tmp_path / "missing.png", np.zeros((0, 5))),
             (cut, np.zeros((0, 5)))]
    for folder in (None, tmp_path / "cache"):
        cache = build_cache(mixed, 32, folder)
        assert len(cache) == 2 and cache.items_index.tolist() == [0, 2]
        assert sorted(Path(p).name for p, _ in cache.skipped) == ["bad.jpg", "cut.png", "missing.png"]
        assert np.array_equal(cache.boxes_of(1), items[1][1])
    with pytest.raises(DarktuneError, match="none of the 2 images"):
        build_cache([(bad, np.zeros((0, 5))), (cut, np.zeros((0, 5)))], 32)


def test_bad_arguments_raise_darktune_errors(items, tmp_path):
    with pytest.raises(DarktuneError, match="empty"):
        build_cache([], 32)
    with pytest.raises(DarktuneError, match="boxes"):
        build_cache([(items[0][0], np.zeros((2, 4)))], 32)
    with pytest.raises(DarktuneError, match="boxes"):
        build_cache([(items[0][0], np.array([[0, np.nan, 0.5, 0.1, 0.1]]))], 32)
    with pytest.raises(DarktuneError, match="size"):
        build_cache(items, 8)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DarktuneError, match="cannot write"):
        build_cache(items, 32, blocker / "sub")
    with pytest.raises(IndexError):
        build_cache(items, 32).batch([5])


def test_user_files_are_not_modified(items, tmp_path):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in items}
    build_cache(items, 32, tmp_path / "cache")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in items} == before
    assert sorted(x.name for x in (tmp_path / "imgs").iterdir()) == [f"{i}.png" for i in range(5)]


def test_resident_cache_gives_the_same_batches(items):
    cache = build_cache(items, 32)
    resident = cache.to("cpu")
    assert isinstance(resident.images, torch.Tensor)
    for idx in ([0, 1, 2], [4, 4, 1], torch.tensor([3, 0])):
        a, b = cache.batch(idx), resident.batch(idx)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cache_dir_follows_darktune_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DARKTUNE_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "cache"


def test_keep_aspect_cache_feeds_letterbox_augmentation(tmp_path):
    """End to end: a white rectangle in a wide image, keep-aspect cache, letterbox + jitter on the batch:
    the white pixels stay inside the transformed box."""
    img = np.zeros((60, 150, 3), np.uint8)
    img[20:40, 30:90] = 255
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), img)
    box = np.array([[0, 60 / 150, 30 / 60, 60 / 150, 20 / 60]], np.float32)
    cache = build_cache([(path, box)] * 6, 64, keep_aspect=True)
    images, targets = cache.batch(range(6))
    cfg = AugmentConfig(jitter=0.25, flip=True, letterbox=True)
    out, boxes = augment_batch(images, targets, 96, cfg, torch.Generator().manual_seed(3),
                               extents=cache.extents(range(6)))
    assert len(boxes) == 6
    white = out.min(1).values > 0.75
    ys, xs = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    for i, cls, cx, cy, w, h in (boxes * torch.tensor([1, 1, 96, 96, 96, 96])).tolist():
        near = (xs > cx - w / 2 - 1.5) & (xs < cx + w / 2 + 1.5) & (ys > cy - h / 2 - 1.5) & (ys < cy + h / 2 + 1.5)
        core = (xs > cx - w / 2 + 1.5) & (xs < cx + w / 2 - 1.5) & (ys > cy - h / 2 + 1.5) & (ys < cy + h / 2 - 1.5)
        assert white[int(i)][core].all() and not (white[int(i)] & ~near).any()
        if cx - w / 2 > 0.5 and cx + w / 2 < 95.5:  # not clipped: letterbox keeps the box's pixel aspect
            assert abs(w / h / 3.0 - 1) < 0.03  # (up to the slot's rounding: 25.6 -> 26 rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_pinned_copies(items):
    cache = build_cache(items, 32)
    images, targets = cache.batch([0, 3], "cuda")
    torch.cuda.synchronize()
    assert images.is_cuda and targets.is_cuda
    assert torch.equal(images.cpu(), cache.batch([0, 3])[0])
    resident = cache.to("cuda")
    assert torch.equal(resident.batch([0, 3], "cuda")[0].cpu(), images.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_do_not_synchronise(items):
    cache = build_cache(items, 32)
    resident = cache.to("cuda")
    cache.batch([0, 1], "cuda"), resident.batch([0, 1], "cuda")  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cache.batch(np.array([4, 2, 0]), "cuda")
        resident.batch([3, 3], "cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
