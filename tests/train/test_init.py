"""--keep-classes: a whole COCO model as the start, the data's classes that COCO has keeping COCO's rows (exact:
before training, a 1-class "person" network finds COCO's person detections), the others new; init.json says so."""

import json

import numpy as np
import pytest
import torch

from darktune.darknet.boxes import ImageGeometry, decode, postprocess
from darktune.darknet.classes import read_names_file
from darktune.darknet.model import Darknet
from darktune.errors import DarktuneError
from darktune.train.config import TrainConfig
from darktune.train.init import init_model, weights_class_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo_input(photo_path):
    import cv2

    from darktune.deploy.detect import preprocess

    return torch.from_numpy(preprocess(cv2.imread(str(photo_path)), (416, 416)))[None]


def _dets(model, x) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        heads = model(x)
    decoded = decode(heads, [h.spec for h in model.heads], (416, 416))
    return postprocess(decoded, [ImageGeometry(512, 600)], (416, 416), 0.005, 0.45)[0].numpy()


def test_kept_person_rows_give_cocos_person_detections_before_training(coco, coco_spec, coco_model, photo_input):
    names = weights_class_names(coco.weights, None)  # the zoo's coco.names beside the weights
    assert names == read_names_file(coco.names)
    model = Darknet(coco_spec.with_classes(1))
    report = init_model(model, coco.weights, None, 0, (["person"], names))
    assert report["mode"] == "classes kept" and report["new_layers"] == [] and report["file_classes"] == 80
    assert report["class_rows"]["layers"] == [15, 22]
    assert report["class_rows"]["classes"] == {"person": {"model_class": 0, "model_name": "person"}}
    coco_person = _dets(coco_model, photo_input)
    coco_person = coco_person[coco_person[:, 5] == 0]
    assert len(coco_person) and np.array_equal(_dets(model, photo_input), coco_person)


def test_a_class_coco_lacks_starts_fresh(coco, coco_spec, coco_model):
    model = Darknet(coco_spec.with_classes(2))
    report = init_model(model, coco.weights, None, 3, (["tree", "Car"], read_names_file(coco.names)))
    assert report["class_rows"]["classes"] == {"tree": None, "Car": {"model_class": 2, "model_name": "car"}}
    mine, theirs = model.layers[22].conv.weight.detach(), coco_model.layers[22].conv.weight.detach()
    for a in range(3):  # per anchor: box + objectness rows and car's row from COCO; tree's row new (not zero)
        np.testing.assert_array_equal(mine[a * 7:a * 7 + 5], theirs[a * 85:a * 85 + 5])
        np.testing.assert_array_equal(mine[a * 7 + 6], theirs[a * 85 + 5 + 2])
        assert mine[a * 7 + 5].abs().sum() > 0
    np.testing.assert_array_equal(model.layers[13].conv.weight.detach(), coco_model.layers[13].conv.weight.detach())


def test_keep_classes_refusals(coco, coco_spec, tmp_path):
    with pytest.raises(DarktuneError, match="none of the data's classes"):
        init_model(Darknet(coco_spec.with_classes(1)), coco.weights, None, 0, (["window"], read_names_file(coco.names)))
    with pytest.raises(DarktuneError, match="2 class names for weights of 80"):
        init_model(Darknet(coco_spec.with_classes(1)), coco.weights, None, 0, (["person"], ["person", "car"]))
    lone = tmp_path / "w.weights"
    lone.write_bytes(b"")
    with pytest.raises(DarktuneError, match="--weights-names"):
        weights_class_names(lone, None)
    with pytest.raises(DarktuneError, match="--keep-classes needs --weights of a whole model"):
        TrainConfig(cfg="a.cfg", data="b.data", weights="c.weights", upto=15, keep_classes=True)
    with pytest.raises(DarktuneError, match="--weights-names is for --keep-classes"):
        TrainConfig(cfg="a.cfg", data="b.data", weights="c.weights", weights_names="coco.names")


def test_train_keep_classes_writes_the_rows_into_init_json_and_the_log(coco, photo_path, tmp_path):
    from photo_set import photo_set

    from darktune.train.loop import train

    data = photo_set(tmp_path / "set", photo_path, ["pedestrian", "tree"])
    res = train(TrainConfig(cfg=str(coco.cfg), data=str(data), weights=str(coco.weights), keep_classes=True,
                            iterations=1, batch=1, subdivisions=1, size=64, burn_in=0, multi_scale=False,
                            out=str(tmp_path / "run")), progress=False)
    init = json.loads((res.run_dir / "init.json").read_text())
    assert init["class_rows"]["classes"]["pedestrian"]["model_name"] == "person"
    assert init["class_rows"]["classes"]["tree"] is None
    log = (res.run_dir / "train.log").read_text()
    assert "init: class pedestrian: rows of the weights' class 0 (person)" in log
    assert "init: class tree: not among the weights' classes, new rows" in log


def test_published_mask_warns_when_training_loads_the_coco_heads(coco):
    """train/init (which loads weights itself, not through load_darknet) warns about the published mask 0,1,2
    when it loads the COCO heads (--keep-classes, a whole model); not for conv.15 (new heads), nor with the
    installed cfg."""
    import warnings

    from darktune.darknet.cfg import CfgWarning, parse_cfg

    published = parse_cfg(coco.published_cfg).with_size(128)
    with pytest.warns(CfgWarning, match=r"mask = 0,1,2 .* trained with mask = 1,2,3"):
        report = init_model(Darknet(published.with_classes(1)), coco.weights, None, 0,
                            (["person"], read_names_file(coco.names)))
    assert "mask = 1,2,3" in report["warning"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)
        report = init_model(Darknet(published.with_classes(1)), coco.weights, 15, 0)  # conv.15: heads new
        assert "warning" not in report
        installed = parse_cfg(coco.cfg).with_size(128)
        init_model(Darknet(installed.with_classes(1)), coco.weights, None, 0, (["person"], read_names_file(coco.names)))
