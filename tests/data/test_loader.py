"""Tests of darktune/data/loader.py: samples, collate, reproducible batches, skipped unreadable images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from darktune.data.augment import AugmentConfig
from darktune.data.loader import DetectionDataset, collate, make_loader
from darktune.errors import DarktuneError

AUG = AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True)


def _items(root: Path, n: int, seed: int = 0) -> list[tuple[Path, np.ndarray]]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = root / f"img{i}.jpg"
        cv2.imwrite(str(path), img)
        k = int(rng.integers(0, 4))
        boxes = np.column_stack([rng.integers(0, 2, k), rng.uniform(0.3, 0.7, (k, 2)), rng.uniform(0.1, 0.4, (k, 2))])
        items.append((path, boxes.astype(np.float32)))
    return items


@pytest.fixture()
def items(tmp_path) -> list[tuple[Path, np.ndarray]]:
    return _items(tmp_path, 10)


def _take(it, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(it) for _ in range(k)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_sample_and_collate(items):
    ds = DetectionDataset(items, 64, AUG)
    img, boxes = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 5
    batch = [ds[i] for i in range(4)]
    images, targets = collate(batch)
    assert images.shape == (4, 3, 64, 64) and targets.shape == (sum(len(b) for _, b in batch), 6)
    assert targets[:, 0].tolist() == sorted(targets[:, 0].tolist())
    for i, (_, b) in enumerate(batch):
        assert torch.equal(targets[targets[:, 0] == i, 1:], b)


def test_rgb_order(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "red.png"), img)
    x, _ = DetectionDataset([(tmp_path / "red.png", np.zeros((0, 5)))], 32)[0]
    assert x[0].float().mean() > 250 and x[2].float().mean() < 5


def test_same_seed_same_batches_any_worker_count(items):
    ds = DetectionDataset(items, 64, AUG)
    a = _take(make_loader(ds, 4, 0, seed=5), 6)  # 6 batches of 4 = 2.4 epochs of 10 images
    b = _take(make_loader(ds, 4, 2, seed=5), 6)
    c = _take(make_loader(ds, 4, 0, seed=6), 6)
    assert _same(a, b)
    assert not _same(a, c)
    assert not torch.equal(a[0][0], a[3][0])  # epochs differ in order and augmentation


_HANG_SCRIPT = """
import sys, numpy as np
from pathlib import Path
from darktune.data.augment import AugmentConfig
from darktune.data.loader import DetectionDataset, make_loader
items = [(p, np.zeros((0, 5))) for p in sorted(Path(sys.argv[1]).glob("*.jpg"))]
for _ in range(4):  # each a fresh RAM cache filled by threads, then a fork (1 in ~30 hung before the fix)
    it = make_loader(DetectionDataset(items, 416, AugmentConfig(jitter=0.3, flip=True), cache="ram"), 4, 2, 0)
    assert next(it)[0].shape == (4, 3, 416, 416)
    it.close()
print("ok")
"""


@pytest.mark.slow
def test_workers_do_not_hang_after_opencv_threads(tmp_path):
    """Regression: in a fresh process the RAM cache is filled by threads whose OpenCV calls start OpenCV's
    thread pool; a forked worker that then called cv2.setNumThreads(1) waited forever for the pool."""
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", _HANG_SCRIPT, str(tmp_path)], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its hung workers
        proc.communicate()
        pytest.fail("loader workers hung")
    assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]


def test_finite_epoch_and_no_shuffle(items):
    ds = DetectionDataset(items, 64)
    batches = list(make_loader(ds, 4, 0, seed=0, shuffle=False, infinite=False))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    direct = torch.stack([ds[i][0] for i in range(10)])
    assert torch.equal(torch.cat([x for x, _ in batches]), direct)


def test_ram_cache_matches_disk(items):
    plain = DetectionDataset(items, 96, AUG)
    cached = DetectionDataset(items, 96, AUG, cache="ram")  # images are smaller than 96: kept as they are
    assert cached.warm_cache() == 0 and cached.cache_bytes > 0
    assert _same(_take(make_loader(plain, 3, 0, 1), 4), _take(make_loader(cached, 3, 0, 1), 4))


def test_ram_cache_reduces_large_images(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((300, 500, 3), np.uint8))
    ds = DetectionDataset([(tmp_path / "big.png", np.zeros((0, 5)))], 64, cache="ram")
    assert ds.read_image(0).shape == (64, 64, 3)
    lb = DetectionDataset([(tmp_path / "big.png", np.zeros((0, 5)))], 64, cache="ram", letterbox=True)
    assert lb.read_image(0).shape == (38, 64, 3)


def test_unreadable_images_are_skipped_and_counted(items, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    bad = [(tmp_path / "broken.jpg", np.zeros((0, 5))), (tmp_path / "missing.jpg", np.zeros((0, 5)))]
    ds = DetectionDataset(items[:4] + bad, 64, AUG, cache="ram")
    it = make_loader(ds, 3, 2, seed=0, infinite=False)
    batches = list(it)
    assert sum(len(x) for x, _ in batches) == 4
    assert it.skipped == 2 and {Path(p).name for p in it.bad_paths} == {"broken.jpg", "missing.jpg"}
    with pytest.raises(DarktuneError, match="broken.jpg"):
        ds[4]


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    import struct

    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_decode_image_uses_the_stored_pixels_and_the_checks_of_data_check(tmp_path):
    """EXIF orientation ignored (labels refer to the stored pixels, as in darknet); a JPEG cut before its end
    marker, a header declaring 100000 x 100000 pixels and a FIFO are unreadable (None), never a crash."""
    import os
    import struct
    import zlib

    from darktune.data.loader import decode_image

    img = np.zeros((30, 60, 3), np.uint8)
    img[:, :20] = (0, 0, 255)  # red left third (BGR)
    jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    for o in (1, 3, 6, 8):
        (tmp_path / f"o{o}.jpg").write_bytes(_with_exif_orientation(jpeg, o))
        rgb = decode_image(tmp_path / f"o{o}.jpg")
        assert rgb.shape == (30, 60, 3) and rgb[15, 5, 0] > 200 and rgb[15, 55, 0] < 50, o
    (tmp_path / "cut.jpg").write_bytes(jpeg[:-2])
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(bomb)
    os.mkfifo(tmp_path / "fifo.jpg")
    for name in ("cut.jpg", "bomb.png", "fifo.jpg", "missing.jpg"):
        assert decode_image(tmp_path / name) is None, name
    ds = DetectionDataset([(tmp_path / "bomb.png", np.zeros((0, 5))), (tmp_path / "o6.jpg", np.zeros((0, 5)))], 32)
    assert ds.load(0) is None and ds.load(1) is not None


def test_all_unreadable_is_an_error(tmp_path):
    ds = DetectionDataset([(tmp_path / f"missing{i}.jpg", np.zeros((0, 5))) for i in range(3)], 64)
    with pytest.raises(DarktuneError, match="none of the 3 images"):
        next(make_loader(ds, 2, 0, seed=0))


def test_multi_scale_sizes(items):
    ds = DetectionDataset(items, 64, AUG)
    it = make_loader(ds, 2, 0, 0, sizes=lambda b: 32 + 32 * (b % 3))
    sizes = [next(it)[0].shape[-1] for _ in range(4)]
    assert sizes == [32, 64, 96, 32]


def test_mosaic_and_letterbox(items):
    ds = DetectionDataset(items, 64, AugmentConfig(jitter=0.2, flip=True, mosaic=True), letterbox=True)
    x, b = ds[0]
    assert x.shape == (3, 64, 64)
    assert ((b[:, 1:] >= 0) & (b[:, 1:] <= 1)).all()


def test_bad_construction(items):
    with pytest.raises(DarktuneError):
        DetectionDataset(items, 64, cache="disk")
    with pytest.raises(DarktuneError, match="img0"):
        DetectionDataset([(items[0][0], np.zeros((2, 4)))], 64)
    with pytest.raises(DarktuneError):
        make_loader(DetectionDataset([], 64), 2, 0, 0)
