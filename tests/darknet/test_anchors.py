"""A cfg with new anchors (`darktune.darknet.anchors`): every [yolo] gets them, masks in darknet's order (the
smallest anchors to the finest grid), only those lines change, the input cfg is never written."""

import numpy as np
import pytest
from cfgs import small_cfg

from darktune.darknet.anchors import anchors_text, cfg_with_anchors, head_masks, write_cfg_with_anchors
from darktune.darknet.cfg import parse_cfg, parse_cfg_text
from darktune.errors import DarktuneError

NEW = np.array([[200, 300], [5, 6], [40, 50], [9, 20], [90, 100], [20, 30]], np.float64)  # any order


@pytest.mark.parametrize("which", ["coco", "coco_v4"])
def test_official_cfgs_get_the_anchors_and_darknets_masks(which, request):
    cfg = request.getfixturevalue(which).cfg
    text = cfg.read_text()
    new_text, report = cfg_with_anchors(text, NEW)
    spec, old = parse_cfg_text(new_text), parse_cfg(cfg)
    heads = list(spec.yolo_indices)
    assert [spec.layers[i].mask for i in heads] == [(3, 4, 5), (0, 1, 2)]  # 13x13 the large, 26x26 the small
    assert all(spec.layers[i].anchors == (5, 6, 9, 20, 20, 30, 40, 50, 90, 100, 200, 300) for i in heads)
    assert report["anchors"] == "5,6, 9,20, 20,30, 40,50, 90,100, 200,300"
    assert [h["mask_before"] for h in report["heads"]] == [list(old.layers[i].mask) for i in heads]
    changed = [(a, b) for a, b in zip(text.splitlines(), new_text.splitlines()) if a != b]
    assert len(new_text.splitlines()) == len(text.splitlines())
    assert all(a.split("=")[0].strip() in ("mask", "anchors") for a, _ in changed)  # num was 6 already
    assert "mask = 3,4,5" in new_text  # the file's own spacing kept


def test_heads_are_ordered_by_grid_and_num_follows_the_anchor_count():
    text = small_cfg({}, head=16, masks=("1,2", "0,1"), anchors="4,6, 10,14, 23,27", classes=3)
    spec = parse_cfg_text(text)  # layer 6: an 8x8 grid, layer 9: 16x16 (the finer one gets the small anchors)
    assert head_masks(spec) == {6: (2, 3), 9: (0, 1)}
    new_text, _ = cfg_with_anchors(text, np.array([[1, 2], [3, 4], [5, 6], [7, 8]]))
    new = parse_cfg_text(new_text)
    assert [(new.layers[i].num, new.layers[i].mask) for i in new.yolo_indices] == [(4, (2, 3)), (4, (0, 1))]
    with pytest.raises(DarktuneError, match="use 4 anchors together, not 3"):
        cfg_with_anchors(text, np.array([[1, 2], [3, 4], [5, 6]]))


def test_anchors_text_rounds_and_never_writes_zero():
    assert anchors_text(np.array([[0.2, 3.5], [10.49, 7.51]])) == "1,4, 10,8"


def test_the_input_is_never_written(coco, tmp_path):
    cfg = tmp_path / "in.cfg"
    cfg.write_text(coco.cfg.read_text())
    before = cfg.read_bytes()
    with pytest.raises(DarktuneError, match="never modified"):
        write_cfg_with_anchors(cfg, NEW, cfg)
    out = tmp_path / "out.cfg"
    write_cfg_with_anchors(cfg, NEW, out)
    with pytest.raises(DarktuneError, match="--overwrite"):
        write_cfg_with_anchors(cfg, NEW, out)
    write_cfg_with_anchors(cfg, NEW, out, overwrite=True)
    assert cfg.read_bytes() == before and parse_cfg(out).num_classes == 80
