"""Determinism on CPU: the same seed gives the same losses, mAPs and weights twice; a run stopped and resumed
gives the same as a run straight through; another seed gives something else (so the test can fail).

Tiny network (corpus.datasets.tiny_cfg_text, 64 px), 6 iterations of batch 2 with augmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus import datasets
from reliability_table import tally  # noqa: F401 (fixture)

TIMING_KEYS = {"images_per_s", "train_s", "elapsed_s", "eval_seconds"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    return datasets.make_tiny(root)


def _run(tiny, out: Path, seed: int = 7, iterations: int = 6, resume: bool = False):
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    cfg, obj = tiny
    return train(TrainConfig(cfg=str(cfg), data=str(obj), iterations=iterations, batch=2, subdivisions=1,
                             eval_at=[3, 6] if iterations == 6 else [3], seed=seed, out=str(out),
                             checkpoint_every=3, resume=resume), progress=False)


def _figures(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_metrics_twice_on_cpu(tiny, tmp_path, tally):
    a, b, c = (_run(tiny, tmp_path / name, seed) for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    same = (_figures(a.run_dir) == _figures(b.run_dir) and a.maps == b.maps
            and (a.run_dir / "weights" / "last.weights").read_bytes()
            == (b.run_dir / "weights" / "last.weights").read_bytes())
    other = _figures(a.run_dir) != _figures(c.run_dir)
    t = tally("determinism")
    t.case("train:same-seed-twice", "handled" if same else "silent")
    t.case("train:other-seed-differs", "handled" if other else "silent")
    assert same and other
    assert any("loss" in r and r["loss"] is not None for r in _figures(a.run_dir))


def test_resumed_run_equals_straight_run(tiny, tmp_path, tally):
    straight = _run(tiny, tmp_path / "straight")
    _run(tiny, tmp_path / "stopped", iterations=3)
    resumed = _run(tiny, tmp_path / "stopped", resume=True)
    losses = [r for r in _figures(straight.run_dir) if "loss" in r]
    same = (losses == [r for r in _figures(resumed.run_dir) if "loss" in r] and straight.maps[-1] == resumed.maps[-1]
            and (straight.run_dir / "weights" / "last.weights").read_bytes()
            == (resumed.run_dir / "weights" / "last.weights").read_bytes())
    assert tally("determinism").case("train:resume-equals-straight", "handled" if same else "silent") == "handled"
