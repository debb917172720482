"""The frozen layers' outputs shared across the training runs of one process (`sharing_features`, what the trials
of a `darktune recipe` search use): a second run with the same start and frozen prefix takes every training image's
outputs from the first, and trains to the same bytes and metrics as a run that shares nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from darktune.train.config import TrainConfig
from darktune.train.feature_cache import SharedFeatures, sharing_features
from darktune.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from darktune.data.synth.sets import make_target_set

    return make_target_set(tmp_path_factory.mktemp("shared") / "set", 10, 64, seed=7, val_fraction=0.2)


def _run(coco, data, out: Path, seed: int, freeze: int = 13, **kw) -> tuple[bytes, list, dict]:
    res = train(TrainConfig(cfg=str(coco.cfg), data=str(data), weights=str(coco.weights), upto=15, freeze=freeze,
                            iterations=6, batch=4, size=64, lr=0.002, burn_in=0, eval_at=[6], seed=seed,
                            out=str(out), checkpoint_every=1000, augment=False, **kw), progress=False)
    assert res.status == "finished"
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    figures = [(r["iteration"], r.get("loss"), r.get("map")) for r in lines]
    return (out / "weights" / "last.weights").read_bytes(), figures, json.loads((out / "summary.json").read_text())


def test_second_run_takes_the_first_runs_prefix_outputs_and_trains_the_same(coco, data, tmp_path):
    store = SharedFeatures()
    with sharing_features(store):
        _, _, first = _run(coco, data, tmp_path / "first", seed=0)
        weights, figures, second = _run(coco, data, tmp_path / "second", seed=1)
    alone_weights, alone_figures, alone = _run(coco, data, tmp_path / "alone", seed=1)
    train_images = 8  # 10 images, 2 to validate
    assert first["feature_cache"]["shared_images"] == 0 and len(store.items) == train_images
    assert second["feature_cache"]["shared_images"] == train_images == store.taken
    assert second["feature_cache"]["off"] is None and second["feature_cache"]["misses"] == 0
    assert alone["feature_cache"]["misses"] > 0 and "shared_images" not in alone["feature_cache"]
    assert weights == alone_weights and figures == alone_figures and second["final_map"] == alone["final_map"]
    assert len([f for f in figures if f[1] is not None]) == 6


def test_another_prefix_or_size_shares_nothing(coco, data, tmp_path):
    store = SharedFeatures()
    with sharing_features(store):
        _run(coco, data, tmp_path / "first", seed=0)
        _, _, other = _run(coco, data, tmp_path / "other", seed=0, freeze=8)
    assert other["feature_cache"]["shared_images"] == 0 and other["feature_cache"]["misses"] > 0
    assert len(store.items) == 16  # each prefix its own entries
