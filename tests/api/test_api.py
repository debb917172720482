"""The Python API (`darktune.api.Model`) end to end on a tiny synthetic set: load, train with the CLI's options,
evaluate, detect and export, each giving what the matching `darktune` command gives; the zoo's COCO model."""

import json

import pytest
from cfgs import small_cfg

from darktune.api import TRAIN_OPTIONS, Detection, Model
from darktune.cli import main
from darktune.errors import DarktuneError
from darktune.train.config import OPTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = small_cfg({"batch": 4, "subdivisions": 2, "learning_rate": 0.002, "burn_in": 2, "momentum": 0.9,
                  "decay": 0.0005, "policy": "steps", "steps": 8, "scales": .5}, head=16, masks=("1,2", "0,1"),
                 anchors="4,6, 10,14, 23,27", classes=3, yolo_extra="jitter=.2\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from darktune.data.synth.sets import make_target_set

    root = tmp_path_factory.mktemp("api")
    data = make_target_set(root / "set", 12, 96, seed=2, val_fraction=0.25)
    (root / "tiny.cfg").write_text(TINY)
    model = Model.load(cfg=root / "tiny.cfg")
    assert model.weights is None and model.names == ["class_0", "class_1", "class_2"]
    result = model.train(data, iterations=4, eval_at=[4], out=str(root / "run"), seed=1, progress=False)
    return model, result, data, root


def test_train_takes_the_cli_options_and_moves_the_model_to_the_run(trained):
    model, result, data, root = trained
    assert result.status == "finished" and result.iterations_done == 4 and result.final_map is not None
    assert model.run_dir == root / "run" and model.cfg == root / "run" / "model.cfg"
    assert model.weights == root / "run" / "weights" / "best.weights" and model.names == ["window"]
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert summary["config"]["eval_at"] == [4] and summary["config"]["seed"] == 1
    again = Model.load(root / "run")  # a run folder
    assert (again.cfg, again.weights, again.names) == (model.cfg, model.weights, model.names)


def test_options_are_trainconfigs(trained, tmp_path):
    model, _, data, _ = trained
    assert set(TRAIN_OPTIONS) == set(OPTIONS) - {"cfg", "data", "weights"}
    with pytest.raises(DarktuneError, match=r"unknown training option itrations \(known: upto, keep_classes"):
        model.train(data, itrations=3)
    with pytest.raises(DarktuneError, match="--overwrite"):  # a run folder that holds a run, as on the CLI
        model.train(data, iterations=1, out=str(model.run_dir))
    with pytest.raises(DarktuneError, match="--freeze must be >= 0"):  # TrainConfig's own checks
        model.train(data, iterations=1, freeze=-1, out=str(tmp_path / "x"))


def test_evaluate_and_detect_give_what_the_commands_give(trained, capsys):
    model, result, data, root = trained
    mine = model.evaluate(data)
    assert mine.map == pytest.approx(result.best_map, abs=1e-9)  # the model holds the best weights
    assert main(["map", "--cfg", str(model.cfg), "--weights", str(model.weights), "--data", str(data),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["map"] == mine.map
    image = next((root / "set").rglob("*.jpg"), None) or next((root / "set").rglob("*.png"))
    found = model.detect(image, thresh=0.01)
    assert len(found) == 1 and all(isinstance(d, Detection) and d.name == "window" for d in found[0])
    assert main(["detect", "--cfg", str(model.cfg), "--weights", str(model.weights), str(image), "--thresh",
                 "0.01", "--backend", "torch", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)[0]["detections"]
    assert [(d["name"], d["box"]) for d in records] == [(d.name, [round(v, 2) for v in d.box]) for d in found[0]]


def test_export_onnx(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    model = trained[0]
    result = model.export_onnx(tmp_path / "m.onnx")
    assert result.path == tmp_path / "m.onnx" and result.path.stat().st_size > 0
    assert max(result.max_abs_diff.values()) < 1e-3


def test_the_zoo_model_finds_the_tie_and_bad_sources_are_one_line(coco, photo_path, tmp_path):
    model = Model.load("yolov3-tiny")
    assert model.names[0] == "person" and len(model.names) == 80
    assert "tie" in {d.name for d in model.detect([photo_path])[0]}
    with pytest.raises(DarktuneError, match="not a known model"):
        Model.load(tmp_path / "nothing")
    with pytest.raises(DarktuneError, match="not a darktune run folder"):
        Model.load(tmp_path)
