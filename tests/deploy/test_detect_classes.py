"""`darktune detect --map-classes`: the COCO model's detections reported in a dataset's classes, by name."""

import json

from photo_set import photo_set

from darktune.cli import main


def test_detect_map_classes_keeps_the_datas_classes_under_its_names(coco, photo_path, tmp_path, capsys):
    base = ["detect", "--cfg", str(coco.cfg), "--weights", str(coco.weights), str(photo_path), "--json",
            "--thresh", "0.05", "--backend", "torch"]
    assert main(base) == 0
    whole = json.loads(capsys.readouterr().out)[0]["detections"]
    data = photo_set(tmp_path / "set", photo_path, ["tree", "necktie", "Person"])  # necktie: no such alias
    assert main(base + ["--map-classes", str(data)]) == 0
    captured = capsys.readouterr()
    assert "Person <- person (0)" in captured.err and "tree: not among the model's classes" in captured.err
    mapped = json.loads(captured.out)[0]["detections"]
    expected = [{**d, "class_id": 2, "name": "Person"} for d in whole if d["name"] == "person"]
    assert mapped == expected and expected
    names = tmp_path / "only.names"
    names.write_text("window\n")
    assert main(base + ["--map-classes", str(names)]) == 2
    assert "none of the classes (window)" in capsys.readouterr().err
