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


# --- model: which known model the spec trains, and what its named starts mean -----------------------------------

def _model_spec(tmp_path, head: str, starts: str = "[scratch]", stages: str = "") -> str:
    path = tmp_path / "model.yaml"
    path.write_text(f"{head}{stages}grid:\n  data: obj.data\n  starts: {starts}\n")
    return str(path)


@pytest.mark.parametrize("head, model, cfg, backbone_layers", [
    ("", "yolov3-tiny", "yolov3-tiny", 13),
    ("model: yolov3-tiny\n", "yolov3-tiny", "yolov3-tiny", 13),
    ("model: yolov4-tiny\n", "yolov4-tiny", "yolov4-tiny", 27),
    ("cfg: yolov4-tiny\n", "yolov4-tiny", "yolov4-tiny", 27),  # a cfg that names a known model sets it
    ("model: yolov4-tiny\ncfg: yolov4-tiny\n", "yolov4-tiny", "yolov4-tiny", 27),
])
def test_model_is_read_and_sets_the_defaults(tmp_path, head, model, cfg, backbone_layers):
    spec = load_spec(_model_spec(tmp_path, head))
    assert (spec.model, spec.cfg, spec.backbone_layers) == (model, cfg, backbone_layers)


def test_model_with_a_cfg_path_keeps_the_path(tmp_path):
    (tmp_path / "mine.cfg").write_text("[net]\n")
    spec = load_spec(_model_spec(tmp_path, "model: yolov4-tiny\ncfg: mine.cfg\n", "[coco29]"))
    assert spec.model == "yolov4-tiny" and spec.cfg == str(tmp_path / "mine.cfg")


@pytest.mark.parametrize("head, starts, stages, line, message", [
    ("notes: x\nmodel: yolov5s\n", "[scratch]", "", 2,
     "model: unknown model 'yolov5s' (known: yolov3-tiny, yolov4-tiny)"),
    ("model: [yolov4-tiny]\n", "[scratch]", "", 1, "model: unknown model ['yolov4-tiny'] (known: yolov3-tiny, "
                                                   "yolov4-tiny)"),
    ("model: yolov4-tiny\ncfg: yolov3-tiny\n", "[scratch]", "", 2,
     "cfg: names the model 'yolov3-tiny', but model is 'yolov4-tiny'"),
    ("model: yolov4-tiny\n", "[scratch, coco15]", "", 4,
     "grid.starts: coco15 is a yolov3-tiny start; the model is yolov4-tiny, whose COCO partial start is coco29"),
    ("", "[coco29]", "", 3,
     "grid.starts: coco29 is a yolov4-tiny start; the model is yolov3-tiny, whose COCO partial start is coco15"),
    ("model: yolov4-tiny\n", "[warm]", "stages:\n  warm: {data: obj.data, weights: coco15}\n", 3,
     "stages.warm.weights: coco15 is a yolov3-tiny start"),
    ("model: yolov4-tiny\n", "[coco15]", "stages:\n  coco15: {data: obj.data, weights: coco29}\n", 3,
     "stages.coco15: a stage name must be letters, digits, '.', '_' or '-' and not one of scratch, backbone, "
     "coco15, coco, coco29"),
])
def test_bad_model_or_start_names_the_line(tmp_path, head, starts, stages, line, message):
    path = _model_spec(tmp_path, head, starts, stages)
    with pytest.raises(DarktuneError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}:{line}: {message}"), str(err.value)


def test_plan_identity_holds_the_model_and_a_v3_run_is_never_reused_for_v4(tmp_path):
    from darktune.experiment.runs import describe_changes
    from darktune.experiment.spec import plan_runs

    v3 = plan_runs(load_spec(_model_spec(tmp_path, "", "[scratch]")))[0]
    v4 = plan_runs(load_spec(_model_spec(tmp_path, "model: yolov4-tiny\n", "[scratch]")))[0]
    assert v3.name == v4.name and v3.identity()["model"] == "yolov3-tiny" and v4.identity()["model"] == "yolov4-tiny"
    assert v4.to_dict()["model"] == "yolov4-tiny"
    extra = {"start_weights": {"path": None, "upto": None}, "data_sha256": "d", "cfg_sha256": "c"}
    recorded = {**v3.identity(), **extra}
    assert describe_changes(recorded, {**v3.identity(), **extra}, False) == []
    changes = describe_changes(recorded, {**v4.identity(), **extra}, False)
    assert changes == ["model: \"yolov3-tiny\" -> \"yolov4-tiny\""]
    older = {k: v for k, v in recorded.items() if k != "model"}  # run.json from before `model`: yolov3-tiny
    assert describe_changes(older, {**v3.identity(), **extra}, False) == []
    assert describe_changes(older, {**v4.identity(), **extra}, False)[0].startswith("model: ")
