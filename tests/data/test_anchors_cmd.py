"""`darktune data anchors`: the data's k-means anchors (as `data stats` computes them) written into a copy of a
cfg that trains; the input cfg untouched."""

import json

import pytest

from darktune.cli import main
from darktune.darknet.cfg import parse_cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from darktune.data.synth.sets import make_target_set

    return make_target_set(tmp_path_factory.mktemp("anchors") / "set", 12, 96, seed=3)


def test_anchors_into_a_cfg_in_one_command(coco, data, tmp_path, capsys):
    cfg = tmp_path / "in.cfg"
    cfg.write_text(coco.cfg.read_text())
    before = cfg.read_bytes()
    out = tmp_path / "out.cfg"
    assert main(["data", "anchors", str(data), "--cfg", str(cfg), "--out", str(out), "--size", "320",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert main(["data", "stats", str(data), "--size", "320", "320", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    expected = ", ".join(f"{max(1, round(w))},{max(1, round(h))}" for w, h in stats["anchors"])
    assert result["anchors"] == expected  # the same k-means as `data stats`
    assert result["mean_iou"] == pytest.approx(stats["anchors_mean_iou"], abs=1e-4)
    assert result["mean_iou"] > result["mean_iou_before"]  # the data's own anchors fit its boxes better
    spec = parse_cfg(out)
    assert [spec.layers[i].mask for i in spec.yolo_indices] == [(3, 4, 5), (0, 1, 2)]
    written = [round(v) for v in spec.layers[spec.yolo_indices[0]].anchors]
    assert written == [int(v) for pair in expected.split(", ") for v in pair.split(",")]
    assert cfg.read_bytes() == before
    from darktune.darknet.load import load_darknet

    load_darknet(out, coco.weights)  # the COCO weights load into it: anchors change no shape
    assert main(["data", "anchors", str(data), "--cfg", str(cfg), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "anchors", str(data), "--cfg", str(cfg), "--out", str(cfg), "--overwrite"]) == 2
    assert "never modified" in capsys.readouterr().err and cfg.read_bytes() == before
    assert main(["data", "anchors", str(data), "--cfg", str(cfg), "--out", str(out), "--overwrite"]) == 0
    text = capsys.readouterr().out
    assert "anchors at 416x416" in text and "mask 0,1,2" in text and f"wrote {out}" in text
