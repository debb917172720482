"""The frozen-prefix cache of evaluation (`evaluate.PrefixCache`): bit-identical detections, computed once per
frozen set and rebuilt whenever the frozen tensors, the prefix or the evaluation set change."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from darktune.eval.evaluate import PrefixCache, load_eval_set, predict
from darktune.train.freeze import set_frozen
from darktune.darknet.model import Darknet
from darktune.darknet.weights import load_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    from darktune.data.synth.sets import make_target_set

    data = make_target_set(tmp_path_factory.mktemp("cache_set") / "set", 20, 128, seed=4, val_fraction=0.5)
    return load_eval_set(data, (128, 128), "valid")


@pytest.fixture()
def model(coco, coco_spec):
    net = Darknet(coco_spec)
    load_weights(net, coco.weights)
    return net


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("freeze", [13, 20])
def test_cached_prefix_gives_bit_identical_detections_and_is_built_once(model, eval_set, freeze):
    set_frozen(model, range(freeze))
    plain = predict(model, eval_set, batch_size=4)
    assert sum(len(d) for d in plain) > 0
    cache = PrefixCache()
    first = predict(model, eval_set, batch_size=4, prefix_cache=cache)
    with torch.no_grad():  # a trainable layer moves, as in training: the cache stays valid
        model.layers[freeze + 1].conv.weight.mul_(1.001)
    moved = predict(model, eval_set, batch_size=4)
    again = predict(model, eval_set, batch_size=4, prefix_cache=cache)
    assert same(first, plain) and same(again, moved) and not same(moved, plain)
    assert cache.builds == 1 and len(cache.states) == 3  # 10 images in batches of 4


def test_cache_rebuilds_when_frozen_weights_prefix_or_set_change(model, eval_set, tmp_path):
    set_frozen(model, range(13))
    cache = PrefixCache()
    predict(model, eval_set, batch_size=4, prefix_cache=cache)
    with torch.no_grad():  # a frozen tensor edited in place (e.g. weights loaded again)
        model.layers[4].conv.weight.mul_(1.01)
    edited = predict(model, eval_set, batch_size=4, prefix_cache=cache)
    assert cache.builds == 2 and same(edited, predict(model, eval_set, batch_size=4))
    set_frozen(model, range(8))  # --unfreeze-at style: a shorter prefix
    shorter = predict(model, eval_set, batch_size=4, prefix_cache=cache)
    assert cache.builds == 3 and same(shorter, predict(model, eval_set, batch_size=4))
    predict(model, eval_set, batch_size=5, prefix_cache=cache)  # another batching
    other = load_eval_set(eval_set.paths[0].rsplit("/images/", 1)[0] + "/obj.data", (128, 128), "train")
    predict(model, other, batch_size=5, prefix_cache=cache)
    assert cache.builds == 5
    set_frozen(model, [])  # nothing frozen: nothing to cache
    predict(model, other, batch_size=5, prefix_cache=cache)
    assert cache.builds == 5


def test_cache_keeps_nothing_above_its_limit(model, eval_set):
    set_frozen(model, range(13))
    cache = PrefixCache(max_bytes=1000)
    out = predict(model, eval_set, batch_size=4, prefix_cache=cache)
    assert cache.too_big and cache.builds == 0 and cache.states == []
    assert same(out, predict(model, eval_set, batch_size=4, prefix_cache=cache))


def test_training_run_maps_are_the_same_with_and_without_the_cache(coco, tmp_path, monkeypatch):
    """A freeze-13 run from the COCO weights logs the same mAP at every evaluation whether the evaluations reuse
    the frozen layers' outputs or compute them each time."""
    from darktune.data.synth.sets import make_target_set
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    data = make_target_set(tmp_path / "data", 16, 96, seed=6, val_fraction=0.5)

    def maps(out, lookup=None):
        if lookup is not None:
            monkeypatch.setattr(PrefixCache, "lookup", lookup)
        res = train(TrainConfig(cfg=str(coco.cfg), data=str(data), weights=str(coco.weights), freeze=13,
                                iterations=6, batch=2, size=96, lr=0.002, burn_in=0, eval_every=2, out=str(out),
                                checkpoint_every=1000, augment=False), progress=False)
        assert res.status == "finished"
        rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["iteration"], r["map"], r["precision"], r["recall"]) for r in rows if "map" in r]

    cached = maps(tmp_path / "cached")
    uncached = maps(tmp_path / "uncached", lambda self, key: None)
    assert len(cached) == 4 and cached == uncached


def _train_run(coco, data, out, **kw):
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    base = {"cfg": str(coco.cfg), "data": str(data), "weights": str(coco.weights), "freeze": 13, "iterations": 12,
            "batch": 4, "size": 64, "lr": 0.002, "burn_in": 0, "eval_at": [12], "out": str(out),
            "checkpoint_every": 1000, "augment": False}
    res = train(TrainConfig(**{**base, **kw}), progress=False)
    assert res.status == "finished"
    summary = json.loads((out / "summary.json").read_text())
    return (out / "weights" / "last.weights").read_bytes(), summary


@pytest.mark.parametrize("freeze", [13, 20])
def test_feature_cache_trains_bit_identically_and_skips_the_prefix(coco, tmp_path, freeze):
    """Training with the frozen layers' outputs cached per image (no augmentation) writes the same weights, byte
    for byte, as training that computes them every step; after the first epoch every micro-batch comes from
    the cache."""
    from darktune.data.synth.sets import make_target_set

    data = make_target_set(tmp_path / "data", 10, 64, seed=7, val_fraction=0.2)  # 8 train images: 2 batches/epoch
    cached, s1 = _train_run(coco, data, tmp_path / "on", freeze=freeze)
    plain, s2 = _train_run(coco, data, tmp_path / "off", freeze=freeze, feature_cache=False)
    assert cached == plain and s1["final_map"] == s2["final_map"]
    fc = s1["feature_cache"]
    assert fc["off"] is None and fc["images"] == 8 and fc["misses"] == 2 and fc["hits"] == 10
    assert s1["train_images"] == 8
    assert s2["feature_cache"] is None


def test_feature_cache_stays_off_where_inputs_change(coco, tmp_path):
    from darktune.data.synth.sets import make_target_set

    data = make_target_set(tmp_path / "data", 10, 64, seed=7, val_fraction=0.2)
    _, augmented = _train_run(coco, data, tmp_path / "aug", iterations=3, eval_at=[3], augment=True,
                              multi_scale=False)
    _, unfrozen = _train_run(coco, data, tmp_path / "f0", iterations=3, eval_at=[3], freeze=0)
    assert augmented["feature_cache"] is None and unfrozen["feature_cache"] is None


def test_feature_cache_turns_itself_off_when_a_cached_batch_differs(coco, tmp_path, monkeypatch):
    """If the backend's per-sample results depended on the batch (the check on the first fully cached
    micro-batch), the cache gives up, says so, and the run still trains exactly as without it."""
    from darktune.train import feature_cache as train_cache
    from darktune.data.synth.sets import make_target_set

    data = make_target_set(tmp_path / "data", 10, 64, seed=7, val_fraction=0.2)
    real = train_cache.FeatureCache._assemble

    def off_by_one_ulp(self, indices):
        state = real(self, indices)
        state.x = torch.nextafter(state.x, torch.full_like(state.x, float("inf")))
        return state

    monkeypatch.setattr(train_cache.FeatureCache, "_assemble", off_by_one_ulp)
    broken, s1 = _train_run(coco, data, tmp_path / "on")
    plain, _ = _train_run(coco, data, tmp_path / "off", feature_cache=False)
    assert broken == plain
    assert "feature cache off" in s1["feature_cache"]["off"] and "values" in s1["feature_cache"]["off"]
    assert s1["feature_cache"]["hits"] == 0


def test_feature_cache_with_an_unfreeze_matches_plain_training(coco, tmp_path):
    """--unfreeze-at ends the frozen prefix mid-run: the cache serves the frozen part only, and the weights
    equal those of a run without it."""
    from darktune.data.synth.sets import make_target_set

    data = make_target_set(tmp_path / "data", 10, 64, seed=7, val_fraction=0.2)
    cached, s1 = _train_run(coco, data, tmp_path / "on", unfreeze_at=6)
    plain, _ = _train_run(coco, data, tmp_path / "off", unfreeze_at=6, feature_cache=False)
    assert cached == plain
    fc = s1["feature_cache"]
    assert fc["off"] is None and fc["misses"] == 2 and fc["hits"] == 4  # iterations 1..6 only


def test_memory_budget_is_capped_by_the_machine():
    from darktune.train.feature_cache import FeatureCache, memory_budget

    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory_budget(1 << 60, 0.25) == int(0.25 * ram) and memory_budget(1000, 0.25) == 1000
    assert FeatureCache().max_bytes == min(2 << 30, int(0.25 * ram)) and FeatureCache(5).max_bytes == 5
    assert PrefixCache().max_bytes == min(1 << 30, int(0.125 * ram))


def test_feature_cache_on_the_device_input_path(coco, tmp_path):
    """The --gpu-augment path without augmentation (here on the CPU) uses the cache too, bit-identically."""
    from darktune.data.synth.sets import make_target_set

    data = make_target_set(tmp_path / "data", 10, 64, seed=7, val_fraction=0.2)
    cached, s1 = _train_run(coco, data, tmp_path / "on", gpu_augment=True, multi_scale=False)
    plain, s2 = _train_run(coco, data, tmp_path / "off", gpu_augment=True, multi_scale=False, feature_cache=False)
    assert cached == plain and s1["input"] == s2["input"] == "gpu_augment" and s2["feature_cache"] is None
    assert s1["feature_cache"]["hits"] == 10 and s1["feature_cache"]["off"] is None
