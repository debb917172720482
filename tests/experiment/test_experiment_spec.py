"""Spec checks that need more than the YAML: frozen layers against the cfg's layers, and error locations that
name the key the user set (per_start overrides, data paths), all before anything trains."""

from __future__ import annotations

import pytest

from darktune.errors import DarktuneError
from darktune.experiment.runner import run_experiment
from darktune.experiment.spec import load_spec


def _spec(tmp_path, coco, grid: str, top: str = "") -> str:
    (tmp_path / "obj.data").write_text("classes = 1\n")
    path = tmp_path / "spec.yaml"
    path.write_text(f"cfg: {coco.cfg}\nweights:\n  coco: {coco.weights}\n{top}grid:\n  data: obj.data\n{grid}")
    return str(path)


def _never(kwargs, progress):
    raise AssertionError("nothing may train")


@pytest.mark.parametrize("grid, top, key, line, message", [
    ("  starts: [scratch, coco]\n  freeze: [0, 30]\n", "", "grid.freeze", 7,
     ("30 frozen layers leave nothing to train: yolov3-tiny.cfg has 24 layers and the last with weights is layer "
      "22 (freeze at most 22)")),
    ("  starts: [scratch, coco]\n  freeze: [0, 22]\n  per_start:\n    coco: {freeze_layers: [0, 99]}\n", "",
     "grid.per_start.coco.freeze_layers", 9, "layer 99 does not exist: yolov3-tiny.cfg has layers 0..23"),
    ("  starts: [warm]\n", "stages:\n  warm:\n    data: obj.data\n    weights: coco\n    freeze: 23\n",
     "stages.warm.freeze", 8, "23 frozen layers leave nothing to train"),
    ("  starts: [scratch]\n", "train:\n  freeze_layers: [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 16, 18, 19, 21, 22]\n",
     "train.freeze_layers", 5, "freezes every layer with weights of yolov3-tiny.cfg"),
    ("  starts: [scratch]\n  freeze: [0, 13]\n  freeze_layers: [0, 1]\n", "", "grid.freeze", 7,
     "run runs/scratch-f13-nall-s0 would freeze 13 layers and also freeze_layers [0, 1]: give one of them"),
])
def test_frozen_layers_are_checked_against_the_cfg_before_training(tmp_path, coco, grid, top, key, line, message):
    path = _spec(tmp_path, coco, grid, top)
    with pytest.raises(DarktuneError) as err:
        run_experiment(load_spec(path), tmp_path / "exp", train_fn=_never, progress=False)
    assert str(err.value).startswith(f"{path}:{line}: {key}: ") and message in str(err.value)
    assert not (tmp_path / "exp").exists()


def test_largest_trainable_freeze_is_accepted(tmp_path, coco):
    from fake_train import fake_train

    path = _spec(tmp_path, coco, "  starts: [coco]\n  freeze: [22]\n  iterations: 3\n")
    result = run_experiment(load_spec(path), tmp_path / "exp", train_fn=fake_train, progress=False)
    assert not result.failed


@pytest.mark.parametrize("text, line, expected", [
    (("grid:\n  data: x\n  starts: [scratch, coco]\n  iterations: 10\n  eval_at: [5, 10]\n  per_start:\n"
      "    coco:\n      iterations: 2\n"), 8,
     ("grid.per_start.coco.iterations: the 'coco' runs end at iteration 2, before grid.eval_at's [5, 10]: give "
      "grid.per_start.coco.eval_at too, or more iterations")),
    ("grid:\n  data: x\n  starts: [scratch, coco]\n  per_start:\n    coco: {iterations: 20, eval_at: [10, 30]}\n",
     5, "grid.per_start.coco.eval_at: [30] lies past the 'coco' runs' 20 iterations"),
    ("grid:\n  data: x\n  starts: [scratch]\n  iterations: 10\n  eval_at: [20]\n", 5,
     "grid.eval_at: [20] lies past the run's 10 iterations"),
    ("grid:\n  starts: [scratch]\n", 1, "grid: missing 'data'"),
])
def test_eval_and_missing_key_errors_point_at_the_key_that_was_set(tmp_path, text, line, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DarktuneError) as err:
        load_spec(path)
    assert str(err.value) == f"{path}:{line}: {expected}"


def test_missing_data_set_names_the_line_of_its_key(tmp_path, coco):
    path = _spec(tmp_path, coco, "  starts: [scratch]\n",
                 "stages:\n  warm: {data: nowhere/obj.data, weights: coco}\n")
    with pytest.raises(DarktuneError) as err:
        run_experiment(load_spec(path), tmp_path / "exp", train_fn=_never, progress=False)
    assert str(err.value) == (f"{path}:5: stages.warm.data: {tmp_path}/nowhere/obj.data not found (relative paths "
                              "are read from the spec's folder)")
