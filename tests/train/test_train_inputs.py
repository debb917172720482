"""Training inputs: the device-side path (`darktune.train.device_inputs`, run on the CPU here) picks the same images
as the CPU loader, is a pure function of (seed, iteration, sub), splits exactly over DDP ranks; multi-scale
sizes; the input path and size are recorded and a resume cannot switch paths."""

import json

import numpy as np
import pytest
import torch
from test_train import cfg_of, lines, tiny_set

from darktune.data.augment import AugmentConfig
from darktune.errors import DarktuneError
from darktune.train.loop import train
from darktune.train.inputs import (
    SampleOrder, TrainBatches, multi_scale_note, network_size, size_counts, size_range,
)
from darktune.train.device_inputs import DeviceBatches, multi_scale_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUG = AugmentConfig(jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5, flip=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_set(tmp_path_factory.mktemp("inputs_data"))


@pytest.fixture(scope="module")
def items(dataset):
    from darktune.data.check import check_dataset

    return check_dataset(dataset[1], "train", progress=False).good


def _device(items, tmp_path, aug=AUG, **kw) -> DeviceBatches:
    args = {"batch": 4, "subdivisions": 2, "seed": 1, "cache_path": tmp_path / "cache", **kw}
    return DeviceBatches(items, (64, 64), aug, **args)


def test_device_batches_are_a_pure_function_and_split_exactly_over_ranks(items, tmp_path):
    for aug in (AUG, AugmentConfig(jitter=0.2, flip=True, mosaic=True)):
        one, again = _device(items, tmp_path, aug), _device(items, tmp_path, aug)  # again: the mmap cache reused
        ranks = [_device(items, tmp_path, aug, rank=r, world=2) for r in (0, 1)]
        for it, sub in ((7, 1), (0, 0), (3, 1)):  # any order: a restart at any iteration sees the same batch
            x, t = one.inputs(it, sub)
            y, u = again.inputs(it, sub)
            assert x.dtype == torch.float32 and x.shape == (2, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
            assert torch.equal(x, y) and torch.equal(t, u)
            parts = [rb.inputs(it, sub) for rb in ranks]
            assert torch.equal(torch.cat([p[0] for p in parts]), x)
            for r, (_, tr) in enumerate(parts):  # each rank's live boxes are the single process's of its image
                live, mine = tr[tr[:, 4] > 0], t[(t[:, 4] > 0) & (t[:, 0] == r)]
                assert torch.equal(live[:, 1:], mine[:, 1:]) and bool((live[:, 0] == 0).all())
        assert not torch.equal(one.inputs(0, 0)[0], one.inputs(0, 1)[0])


def test_device_path_picks_the_cpu_loaders_images_also_past_an_unreadable_one(items, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    listed = [items[0], (bad, np.zeros((0, 5), np.float32)), *items[1:]]
    cpu = TrainBatches(listed, (64, 64), AUG, batch=4, subdivisions=2, seed=1)
    dev = _device(listed, tmp_path)
    assert dev.skipped == 1
    loaded, real = [], cpu.dataset.load

    def load(i, *args, **kw):
        out = real(i, *args, **kw)
        if out is not None:
            loaded.append(i)
        return out

    cpu.dataset.load = load
    picked = []
    for it in range(8):  # 32 samples: more than two epochs of 12 readable + 1 broken images
        for sub in (0, 1):
            cpu.get(it, sub)
            picked += dev.cache.items_index[dev.cache_indices(dev.samples(it, sub))].tolist()
    assert picked == loaded and 1 not in picked


def test_multi_scale_sizes(items):
    """darknet's rule (detector.c): the largest size roundl(coef*base/32 + 1)*32 for the first 10 iterations and
    the blocks of 10 that start after max_batches - 100; else roundl(rand_scale(coef)*base/32 + 1)*32, never
    above base when the scale is under 1. By hand: 416 -> 320..608; 160 -> 160..256; random=1.2 at 416 -> 544."""
    assert size_range(416) == (320, 608) and size_range(160) == (160, 256) and size_range(416, 1.2)[1] == 544
    for base in (96, 128, 416):
        lo, hi = size_range(base)
        sizes = [network_size(3, it, base, True) for it in range(400)]
        assert all(s % 32 == 0 and lo <= s <= hi for s in sizes)
        assert sizes[:10] == [hi] * 10  # the first 10 iterations: the largest
        assert len(set(sizes)) > 1 and sizes == [network_size(3, it, base, True) for it in range(400)]
        assert all(len(set(sizes[k:k + 10])) == 1 for k in range(0, 400, 10))  # a new size every 10 iterations
        assert {network_size(3, it, base, False) for it in range(50)} == {base}
    last = [network_size(3, it, 416, True, iterations=2000) for it in range(1900, 2000)]
    assert set(last[10:]) == {608}  # blocks starting at 1910..1990 (> 2000 - 100): the largest
    assert {network_size(3, it, 416, 1.2, iterations=2000) for it in range(1910, 2000)} == {544}
    # at 160, darknet's sizes are 160 (p 1/2), 192 (1/8), 224 (1/4), 256 (1/8): mean 192 (uniform would be 176)
    small = [network_size(s, 10, 160, True) for s in range(4000)]
    assert set(small) == {160, 192, 224, 256} and abs(np.mean(small) - 192) < 3
    assert abs(small.count(160) / 4000 - 0.5) < 0.03 and abs(small.count(224) / 4000 - 0.25) < 0.03
    order = SampleOrder(len(items), (128, 128), 4, 2, seed=3, multi_scale=True)
    cpu = TrainBatches(items, (128, 128), AUG, 4, 2, seed=3, multi_scale=True)
    for it in (0, 10, 25):
        assert cpu.inputs(it, 0)[0].shape[-1] == order.size_at(it) == network_size(3, it, 128, True)


def test_the_log_line_says_what_size_320_trains_at():
    """--size 320, 300 iterations: sizes 256..480, the largest forced for 100 iterations (the first 10, the
    last 90: blocks starting past 200), the counts per size adding up to the run."""
    order = SampleOrder(16, (320, 320), 4, 2, seed=0, multi_scale=True, iterations=300)
    counts = size_counts(order, 300)
    assert sum(counts.values()) == 300 and min(counts) >= 256 and max(counts) == 480 and counts[480] >= 100
    assert all(n % 10 == 0 for n in counts.values())
    note = multi_scale_note(order, 300)
    assert note.startswith("multi-scale: training sizes 256..480 around 320 (darknet's random=1: every 10 "
                           "iterations roundl(r*320/32+1)*32, r drawn in [1/1.4, 1.4]), the largest, 480, for the "
                           "first 10 and the last 100 iterations (100 of 300 here); evaluation at 320")
    assert f"480 x{counts[480]}" in note
    assert multi_scale_note(SampleOrder(16, (320, 320), 4, 2, seed=0), 300) is None


def test_multi_scale_follows_the_cfgs_random_unless_told(dataset):
    from darktune.darknet.cfg import parse_cfg, parse_cfg_text

    spec = parse_cfg(dataset[0])
    with_random = parse_cfg_text(dataset_cfg_text(dataset).replace("jitter=.2", "jitter=.2\nrandom=1"))
    assert not multi_scale_of(cfg_of(dataset, "x"), spec) and multi_scale_of(cfg_of(dataset, "x"), with_random)
    assert not multi_scale_of(cfg_of(dataset, "x", multi_scale=False), with_random)
    assert multi_scale_of(cfg_of(dataset, "x", multi_scale=True), spec)
    assert not multi_scale_of(cfg_of(dataset, "x", augment=False), with_random)  # no augmentation: one size
    assert multi_scale_of(cfg_of(dataset, "x", augment=False, multi_scale=True), spec)
    assert multi_scale_of(cfg_of(dataset, "x"), with_random) == 1.4  # random=1: darknet's 1.4
    with_coef = parse_cfg_text(dataset_cfg_text(dataset).replace("jitter=.2", "jitter=.2\nrandom=1.2"))
    assert multi_scale_of(cfg_of(dataset, "x"), with_coef) == 1.2  # another value is the coefficient


def dataset_cfg_text(dataset) -> str:
    with open(dataset[0]) as f:
        return f.read()


def test_gpu_augment_run_records_its_input_path_and_resume_keeps_it(dataset, tmp_path):
    run = tmp_path / "run"
    res = train(cfg_of(dataset, run, iterations=2, gpu_augment=True, multi_scale=True, size=96, seed=4),
                progress=False)
    assert res.status == "finished"
    rows = lines(run)[0]
    # multi-scale starts at darknet's largest size: roundl(1.4*96/32 + 1)*32 = 160
    assert {r["input"] for r in rows} == {"gpu_augment"} and [r["size"] for r in rows] == [160, 160]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["input"] == "gpu_augment" and summary["multi_scale"] is True and summary["sizes"] == {"160": 2}
    assert "multi-scale: training sizes 96..160 around 96" in (run / "train.log").read_text()
    with pytest.raises(DarktuneError, match="gpu_augment"):
        train(cfg_of(dataset, run, iterations=3, gpu_augment=False, multi_scale=True, size=96, seed=4,
                     resume=True), progress=False)
