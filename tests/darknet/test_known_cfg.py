"""known_cfg: the cfg fetch installs gives the COCO weights' own accuracy on real photos (MOT17 frames, person
AP50), the published one is kept byte for byte, content digests tell an edited cfg apart, and a cfg with the
known-bad mask is warned about where weights are loaded."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from darktune.darknet.boxes import ImageGeometry, decode, postprocess
from darktune.darknet.cfg import CfgWarning
from darktune.darknet.known_cfg import YOLOV3_TINY_MASK, CfgFix, apply_fixes, content_digest
from darktune.darknet.load import load_darknet
from darktune.data.formats.mot import read_mot
from darktune.eval.metrics import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MOT = Path(__file__).parent.parent / "data" / "mot17_mini"
SIZE = 416


@pytest.fixture(scope="module")
def frames():
    """(network input (N, 3, 416, 416) float, image sizes, person truths per frame) of the 8 MOT17 frames."""
    dataset = read_mot(MOT)
    assert dataset.classes == ["pedestrian"] and len(dataset.images) == 8
    inputs, sizes, truths = [], [], []
    for rec in dataset.images:
        bgr = cv2.imread(str(rec.path))
        h, w = bgr.shape[:2]
        rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        inputs.append(rgb.transpose(2, 0, 1))
        sizes.append((w, h))
        truths.append(np.array([[0, b.x1 * w, b.y1 * h, b.x2 * w, b.y2 * h] for b in rec.boxes]).reshape(-1, 5))
    return torch.from_numpy(np.stack(inputs)).float() / 255, sizes, truths


def person_ap50(cfg: Path, weights: Path, frames) -> float:
    """COCO person (class 0) AP50 under darknet's protocol (score 0.005, NMS 0.45, all points), in percent."""
    x, sizes, truths = frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CfgWarning)
        model, _ = load_darknet(cfg, weights, size=SIZE)
    with torch.no_grad():
        decoded = decode(model(x), [h.spec for h in model.heads], (SIZE, SIZE))
    dets = postprocess(decoded, [ImageGeometry(w, h) for w, h in sizes], (SIZE, SIZE), 0.005, 0.45)
    person = [d[d[:, 5] == 0].numpy() for d in dets]
    person = [np.concatenate([d[:, :5], np.zeros((len(d), 1))], 1) for d in person]
    return 100 * evaluate(person, truths, 1, protocol="darknet", class_names=["person"]).classes[0].ap


def test_fetched_yolov3_tiny_cfg_gives_the_weights_accuracy(coco, frames):
    """Measured 2026-12-07: 21.9 with the installed cfg (mask 1,2,3), 0.7 with the published one (0,1,2)."""
    fixed = person_ap50(coco.cfg, coco.weights, frames)
    published = person_ap50(coco.published_cfg, coco.weights, frames)
    assert fixed > 15 and published < 3, (fixed, published)


def test_yolov4_tiny_published_masks_are_the_weights_own(coco_v4, frames, tmp_path):
    """yolov4-tiny's published 26x26 head already says mask = 1,2,3: kept as published (38.3 on these frames,
    0.3 with 0,1,2, 2026-12-07)."""
    assert coco_v4.cfg.read_bytes() == coco_v4.published_cfg.read_bytes()
    wrong = tmp_path / "yolov4-tiny.cfg"
    wrong.write_text(coco_v4.cfg.read_text().replace("mask = 1,2,3", "mask = 0,1,2"))
    published = person_ap50(coco_v4.cfg, coco_v4.weights, frames)
    assert published > 25 and person_ap50(wrong, coco_v4.weights, frames) < 3


def test_installed_cfg_is_the_published_one_with_only_the_mask_changed(coco):
    published = coco.published_cfg.read_text()
    installed = coco.cfg.read_text()
    assert coco.published_cfg.name == "yolov3-tiny.published.cfg" and published.count("mask = 0,1,2") == 1
    assert installed == apply_fixes(published, (YOLOV3_TINY_MASK,))
    removed = [line for line in published.splitlines() if line not in installed.splitlines()]
    added = [line for line in installed.splitlines() if line not in published.splitlines()]
    assert removed == ["mask = 0,1,2"] and added[-1] == "mask = 1,2,3" and added[0].startswith("# darktune:")


def test_content_digest_ignores_layout_and_catches_values(coco):
    text = coco.published_cfg.read_text()
    digest = content_digest(text)
    assert content_digest(text.replace("\n", "\r\n") + "\n# a comment\n") == digest
    assert content_digest(text.replace("mask = 3,4,5", "mask=3, 4, 5")) == digest
    doubled = text.replace("10,14,  23,27,  37,58,  81,82,  135,169,  344,319",
                           "20,28,  46,54,  74,116,  162,164,  270,338,  688,638")
    assert content_digest(doubled) != digest
    assert content_digest(text.replace("filters=16", "filters=17")) != digest


def test_apply_fixes_refuses_a_cfg_without_the_published_value(coco):
    with pytest.raises(ValueError, match="layer 23 has no 'mask = 0,1,2'"):
        apply_fixes(coco.cfg.read_text(), (YOLOV3_TINY_MASK,))  # already fixed
    with pytest.raises(ValueError, match="layer 99"):
        apply_fixes(coco.published_cfg.read_text(), (CfgFix(99, "mask", "0,1,2", "1,2,3", "test"),))


def test_known_bad_mask_warns_where_weights_are_loaded(coco, tmp_path):
    with pytest.warns(CfgWarning, match=r"mask = 0,1,2 .* trained with mask = 1,2,3"):
        load_darknet(coco.published_cfg, coco.weights, size=128)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)
        load_darknet(coco.cfg, coco.weights, size=128)  # the installed cfg: no warning
        load_darknet(coco.published_cfg, None, size=128)  # no weights: nothing to be wrong for
        other = tmp_path / "other.weights"  # other weights of the same size (a retrained model): no warning
        data = bytearray(coco.weights.read_bytes())
        data[-4:] = b"\x00\x00\x80\x3f"
        other.write_bytes(bytes(data))
        load_darknet(coco.published_cfg, other, size=128)
