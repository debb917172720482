"""Classes matched by name and the COCO rows they keep: a 1-class "person" network built from the COCO model
finds exactly the COCO model's person detections; detections remapped to a dataset's classes agree with it."""

import numpy as np
import pytest
import torch

from darktune.darknet.boxes import ImageGeometry, decode, postprocess
from darktune.darknet.classes import (
    SILENT_BIAS, match_classes, model_for_classes, model_to_data, names_beside, read_names_file, remap_detections,
)
from darktune.errors import DarktuneError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_match_by_name_case_spacing_and_aliases():
    coco = ["person", "bicycle", "car", "motorcycle", "airplane", "dining table", "tv"]
    m = match_classes(["Car", "pedestrian", "tree", "Dining_Table", "motorbike", "tvmonitor"], coco)
    assert m.rows == (2, 0, None, 5, 3, 6)
    assert m.matched == 5
    assert m.describe()[2] == "tree: not among the model's classes"
    assert m.to_dict()["pedestrian"] == {"model_class": 0, "model_name": "person"}
    # one model class goes to one data class: the exact name wins over an alias, whatever the order
    assert match_classes(["pedestrian", "person"], coco).rows == (None, 0)
    assert model_to_data(match_classes(["car", "person"], coco)) == [1, -1, 0, -1, -1, -1, -1]


def test_names_beside_and_read_names_file(tmp_path):
    (tmp_path / "w.weights").write_bytes(b"")
    assert names_beside(tmp_path / "w.weights") is None
    (tmp_path / "coco.names").write_text("person\n\ncar\n")
    assert names_beside(tmp_path / "w.weights") == tmp_path / "coco.names"
    assert read_names_file(tmp_path / "coco.names") == ["person", "car"]
    with pytest.raises(DarktuneError, match="not found"):
        read_names_file(tmp_path / "missing.names")


def _detections(model, image: torch.Tensor, thresh: float = 0.25) -> np.ndarray:
    with torch.no_grad():
        heads = model(image)
    decoded = decode(heads, [h.spec for h in model.heads], (416, 416))
    return postprocess(decoded, [ImageGeometry(640, 480)], (416, 416), thresh, 0.45)[0].numpy()


@pytest.fixture(scope="module")
def photo_input(photo_path):
    import cv2

    from darktune.deploy.detect import preprocess

    return torch.from_numpy(preprocess(cv2.imread(str(photo_path)), (416, 416)))[None]


def test_person_network_from_coco_finds_exactly_cocos_person_detections(coco, coco_model, photo_input):
    coco_names = read_names_file(coco.names)
    person, match = model_for_classes(coco_model, ["pedestrian"], coco_names)  # alias: pedestrian = person
    assert match.rows == (0,) and person.spec.num_classes == 1
    full = _detections(coco_model, photo_input, 0.005)
    full = full[full[:, 5] == 0]
    mine = _detections(person, photo_input, 0.005)
    assert len(full) > 0 and np.array_equal(mine, full)  # the kept rows are exact: same boxes, same scores


def test_a_class_coco_lacks_is_never_detected_and_detections_remap(coco, coco_model, photo_input):
    coco_names = read_names_file(coco.names)
    net, match = model_for_classes(coco_model, ["tree", "tie", "person"], coco_names)
    assert match.rows == (None, coco_names.index("tie"), 0)
    assert float(net.layers[15].conv.bias.detach().view(3, 8)[0, 5]) == SILENT_BIAS
    mine = _detections(net, photo_input, 0.005)
    assert 0 not in set(mine[:, 5].tolist())  # tree: silenced rows
    full = _detections(coco_model, photo_input, 0.005)
    remapped = remap_detections(full, model_to_data(match))
    assert set(remapped[:, 5].tolist()) == {1.0, 2.0}
    for c in (1, 2):  # per class NMS: each class's rows are the same in both (order aside)
        a, b = mine[mine[:, 5] == c], remapped[remapped[:, 5] == c]
        np.testing.assert_allclose(a[np.lexsort(a.T)], b[np.lexsort(b.T)], rtol=0, atol=1e-4)


def test_no_shared_class_is_an_error(coco, coco_model):
    with pytest.raises(DarktuneError, match="none of the data's classes"):
        model_for_classes(coco_model, ["window"], read_names_file(coco.names))
    with pytest.raises(DarktuneError, match="2 class names for a model with 80"):
        model_for_classes(coco_model, ["person"], ["person", "car"])
