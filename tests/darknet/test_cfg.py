"""cfg parser: the three reference cfgs, write-back equivalence, and 30+ mutated cfgs -> file:line errors."""

from __future__ import annotations

import pytest

from cfgs import yolov3_cfg, yolov4_tiny_cfg
from darktune.darknet.cfg import (ConvSpec, MaxPoolSpec, RouteSpec, ShortcutSpec, UpsampleSpec, YoloSpec, format_cfg,
                          parse_cfg, parse_cfg_text)
from darktune.errors import DarktuneError
from darktune.darknet.summary import summarize

TINY_LAYERS = ["conv16", "max", "conv32", "max", "conv64", "max", "conv128", "max", "conv256", "max", "conv512",
               "max", "conv1024", "conv256", "conv512", "conv255", "yolo", "route", "conv128", "upsample", "route",
               "conv256", "conv255", "yolo"]


def _kind(layer) -> str:
    if isinstance(layer, ConvSpec):
        return f"conv{layer.filters}"
    return {MaxPoolSpec: "max", RouteSpec: "route", UpsampleSpec: "upsample", YoloSpec: "yolo",
            ShortcutSpec: "shortcut"}[type(layer)]


def test_yolov3_tiny_numbering_and_semantics(coco_spec):
    assert [_kind(layer) for layer in coco_spec.layers] == TINY_LAYERS
    pool11 = coco_spec.layers[11]
    assert (pool11.size, pool11.stride, pool11.padding) == (2, 1, 1)
    assert coco_spec.layers[17].layers == (13,)
    assert coco_spec.layers[20].layers == (19, 8)
    assert coco_spec.layers[15].activation == "linear" and coco_spec.layers[0].activation == "leaky"
    # the cfg fetch installs has the weights' own mask on the 26x26 head; the published file says 0,1,2
    assert coco_spec.layers[16].mask == (3, 4, 5) and coco_spec.layers[23].mask == (1, 2, 3)
    assert coco_spec.net.steps == (400000, 450000) and coco_spec.net.hue == pytest.approx(0.1)
    assert coco_spec.layers[16].ignore_thresh == pytest.approx(0.7)


def test_yolov3_tiny_cost(coco_spec):
    s = summarize(coco_spec)
    assert round(s["bflops"], 3) == 5.565
    assert s["params"] == 8_852_366
    assert summarize(coco_spec.with_classes(1))["params"] == 8_669_876
    assert s["layers"][11]["output"] == [512, 13, 13]
    assert s["layers"][22]["output"] == [255, 26, 26]


@pytest.mark.parametrize("text_fn,n_layers,params", [(yolov3_cfg, 107, 61_949_149),
                                                     (yolov4_tiny_cfg, 38, 6_056_606)])
def test_other_reference_cfgs(text_fn, n_layers, params):
    spec = parse_cfg_text(text_fn(), "ref.cfg")
    assert len(spec.layers) == n_layers
    assert summarize(spec)["params"] == params
    assert parse_cfg_text(format_cfg(spec)) == spec


def test_yolov4_tiny_groups_and_yolo_keys():
    spec = parse_cfg_text(yolov4_tiny_cfg(), "v4t.cfg")
    route = spec.layers[3]
    assert (route.groups, route.group_id) == (2, 1)
    head = spec.layers[30]
    assert head.scale_x_y == pytest.approx(1.05) and head.iou_loss == "ciou" and head.nms_kind == "greedynms"
    assert summarize(spec)["layers"][3]["output"][0] == 32


def test_write_back_equivalent(coco, coco_spec, tmp_path):
    text = format_cfg(coco_spec)
    assert parse_cfg_text(text) == coco_spec
    (tmp_path / "a.cfg").write_text(text)
    assert parse_cfg(tmp_path / "a.cfg") == coco_spec
    one = coco_spec.with_classes(1)
    again = parse_cfg_text(format_cfg(one))
    assert again == one and again.layers[15].filters == 18 and again.num_classes == 1


def test_all_activations_parse(coco):
    base = coco.cfg.read_text()
    for act in ("linear", "leaky", "logistic", "mish", "swish", "relu"):
        spec = parse_cfg_text(base.replace("activation=leaky", f"activation={act}", 1))
        assert spec.layers[0].activation == act


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    count = 0
    for i, line in enumerate(text.splitlines(keepends=True), start=1):
        if needle in line:
            count += 1
            if count == occurrence:
                return i
    raise AssertionError(needle)


# (name, mutate(text) -> text, words the message must contain, line finder or None)
MUTATIONS = [
    ("unknown section", lambda t: t.replace("[maxpool]", "[maxpol]", 1), "unknown section", "[maxpol]"),
    ("unknown key", lambda t: t.replace("filters=16", "filtres=16"), "did you mean 'filters'", "filtres"),
    ("misspelt net key", lambda t: t.replace("momentum=0.9", "momentun=0.9"), "momentun", "momentun"),
    ("bad int", lambda t: t.replace("filters=16", "filters=sixteen"), "not an integer", "sixteen"),
    ("float for int", lambda t: t.replace("filters=16", "filters=16.5"), "not an integer", "16.5"),
    ("bad float", lambda t: t.replace("momentum=0.9", "momentum=abc"), "not a number", "momentum=abc"),
    ("nan float", lambda t: t.replace("decay=0.0005", "decay=nan"), "not a number", "decay=nan"),
    ("bad list", lambda t: t.replace("mask = 3,4,5", "mask = 3,x,5"), "list of integers", "3,x,5"),
    ("bad anchors", lambda t: t.replace("10,14,", "10,fourteen,", 1), "list of numbers", "fourteen"),
    ("missing filters", lambda t: t.replace("filters=16\n", "", 1), "missing required key 'filters'", None),
    ("missing route layers", lambda t: t.replace("layers = -4", "groups=1"), "missing required key 'layers'",
     None),
    ("route past start", lambda t: t.replace("layers = -4", "layers = -40"), "does not exist", "layers = -40"),
    ("route forward", lambda t: t.replace("layers = -1, 8", "layers = -1, 22"), "does not exist", "-1, 22"),
    ("route to itself", lambda t: t.replace("layers = -4", "layers = 0"), None, None),
    ("wrong head filters", lambda t: t.replace("filters=255", "filters=254", 1), "(classes+5)*len(mask)",
     "filters=254"),
    ("classes change w/o filters", lambda t: t.replace("classes=80", "classes=1", 1), "expected", None),
    ("mask out of range", lambda t: t.replace("mask = 3,4,5", "mask = 3,4,9"), "mask entries", "3,4,9"),
    ("anchors count", lambda t: t.replace("344,319", "344", 1), "anchors has", "135,169,  344\n"),
    ("unknown activation", lambda t: t.replace("activation=leaky", "activation=leakey", 1), "unknown activation",
     "leakey"),
    ("zero filters", lambda t: t.replace("filters=16", "filters=0"), "must be positive", "filters=0"),
    ("negative size", lambda t: t.replace("size=3", "size=-3", 1), "must be positive", "size=-3"),
    ("zero stride", lambda t: t.replace("stride=1", "stride=0", 1), "must be positive", None),
    ("no net", lambda t: t.replace("[net]", "[convolutional]", 1), None, None),
    ("net twice", lambda t: t + "\n[net]\nbatch=1\n", "only appear once", None),
    ("empty", lambda t: "", "first section must be [net]", None),
    ("only net", lambda t: t.split("[convolutional]")[0], "no layers", None),
    ("header broken", lambda t: t.replace("[maxpool]", "[maxpool", 1), "malformed section header", "[maxpool"),
    ("no equals", lambda t: t.replace("filters=16", "filters 16"), "expected 'key=value'", "filters 16"),
    ("key twice", lambda t: t.replace("filters=16", "filters=16\nfilters=32"), "given twice", None),
    ("key before section", lambda t: "batch=1\n" + t, "before the first [section]", None),
    ("batch not divisible", lambda t: t.replace("subdivisions=1", "subdivisions=3").replace("batch=1", "batch=4"),
     "not divisible", None),
    ("steps/scales mismatch", lambda t: t.replace("scales=.1,.1", "scales=.1"), "steps has 2 values", None),
    ("unknown policy", lambda t: t.replace("policy=steps", "policy=stepz"), "unknown policy", "stepz"),
    ("bool not 0/1", lambda t: t.replace("batch_normalize=1", "batch_normalize=2", 1), "0 or 1", None),
    ("groups mismatch", lambda t: t.replace("filters=32", "filters=32\ngroups=3", 1), "divisible", None),
    ("negative padding", lambda t: t.replace("[maxpool]\nsize=2\nstride=1", "[maxpool]\nsize=2\nstride=1\npadding=-1"),
     "padding", None),
    ("yolo not after conv", lambda t: t.replace("[maxpool]\nsize=2\nstride=2", "[maxpool]\nsize=2\nstride=2\n\n"
     "[yolo]\nmask=0\nanchors=1,1\nclasses=1\nnum=1", 1), "must follow", None),
    ("binary garbage", lambda t: "\x00\x01\x02", None, None),
    ("too small input", lambda t: t.replace("width=416", "width=8"), "different sizes", None),
    ("input too small for conv", lambda t: t.replace("width=416", "width=2").replace("height=416", "height=2")
     .replace("pad=1", "pad=0", 1), "too small", None),
    ("iou_loss unknown", lambda t: t.replace("truth_thresh = 1", "truth_thresh = 1\niou_loss=foo", 1),
     "unknown iou_loss", "iou_loss=foo"),
]


@pytest.mark.parametrize("name,mutate,words,needle", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutated_cfg_is_a_clear_error(coco, tmp_path, name, mutate, words, needle):
    text = mutate(coco.cfg.read_text())
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(DarktuneError) as info:
        parse_cfg(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    if words:
        assert words in message, message
    if needle:
        assert info.value.line == _line_of(text, needle), message


def test_mutations_are_many():
    assert len(MUTATIONS) >= 30


def test_missing_and_undecodable_cfg(tmp_path):
    with pytest.raises(DarktuneError, match="not found"):
        parse_cfg(tmp_path / "nope.cfg")
    bad = tmp_path / "latin1.cfg"
    bad.write_bytes(b"[net]\nbatch=1\xff\n")
    with pytest.raises(DarktuneError, match="cannot read cfg"):
        parse_cfg(bad)


def test_bom_and_comments_tolerated(coco):
    text = "\ufeff" + coco.cfg.read_text().replace("filters=16", "filters=16  # a comment\n; another")
    assert parse_cfg_text(text).layers[0].filters == 16
