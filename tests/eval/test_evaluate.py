"""`darktune map` of the COCO model on a user's classes: its classes mapped onto the data's by name (the
COCO baseline in one command), with the same per-class AP as the whole 80-class model scored on COCO's names."""

import json

import pytest
from photo_set import PERSON_BOX, TIE_BOX, photo_set

from darktune.cli import main
from darktune.darknet.classes import read_names_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _map(capsys, *args) -> dict:
    assert main(["map", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_map_scores_coco_on_the_datas_classes_by_name(coco, photo_path, tmp_path, capsys):
    common = ["--cfg", str(coco.cfg), "--weights", str(coco.weights)]
    mine = photo_set(tmp_path / "mine", photo_path, ["pedestrian", "Tie", "tree"],
                     {0: PERSON_BOX, 1: TIE_BOX, 2: (10, 10, 60, 60)})
    out = _map(capsys, *common, "--data", str(mine))  # auto: 80 classes in the weights, 3 in the data
    assert out["class_map"] == {"pedestrian": {"model_class": 0, "model_name": "person"},
                                "Tie": {"model_class": 27, "model_name": "tie"}, "tree": None}
    ap = {c["name"]: c["ap"] for c in out["classes"]}
    assert ap["tree"] == 0 and ap["Tie"] > 0.9
    # the same truths under COCO's 80 names: the whole model's AP of person and tie is the mapped one
    coco_names = read_names_file(coco.names)
    whole = photo_set(tmp_path / "whole", photo_path, coco_names, {0: PERSON_BOX, 27: TIE_BOX})
    ref = {c["name"]: c["ap"] for c in _map(capsys, *common, "--data", str(whole))["classes"]}
    assert ref["person"] == ap["pedestrian"] and ref["tie"] == ap["Tie"]


def test_map_class_map_none_and_missing_names(coco, photo_path, tmp_path, capsys):
    data = photo_set(tmp_path / "set", photo_path, ["person"])
    assert main(["map", "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--data", str(data),
                 "--class-map", "none"]) == 2
    assert "--class-map names" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "w.weights").symlink_to(coco.weights)
    (lone / "m.cfg").write_text(coco.cfg.read_text())
    assert main(["map", "--cfg", str(lone / "m.cfg"), "--weights", str(lone / "w.weights"), "--data", str(data)]) == 2
    assert "--model-names" in capsys.readouterr().err
    out = _map(capsys, "--cfg", str(lone / "m.cfg"), "--weights", str(lone / "w.weights"), "--data", str(data),
               "--model-names", str(coco.names))
    assert out["class_map"]["person"]["model_class"] == 0
