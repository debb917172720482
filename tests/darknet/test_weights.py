"""`.weights`: byte-exact round trip, header versions, exact float accounting, partial/upto."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darktune.cli import main
from darktune.errors import DarktuneError
from darktune.darknet.model import Darknet
from darktune.darknet.weights import (Header, conv_float_counts, expected_floats, infer_num_classes, load_weights,
                              partial, read_weights_file, save_weights, weights_bytes)


def test_official_file_facts(coco, coco_spec):
    data = coco.weights.read_bytes()
    assert len(data) == 35_434_956
    wf = read_weights_file(coco.weights)
    assert (wf.header.major, wf.header.minor) == (0, 2) and wf.header.nbytes == 20
    assert wf.floats.size == 8_858_734 == expected_floats(coco_spec)


def test_round_trip_is_byte_identical(coco, coco_model):
    header = read_weights_file(coco.weights).header
    assert weights_bytes(coco_model, header) == coco.weights.read_bytes()


def test_save_then_load_equal(coco_model, coco_spec, tmp_path):
    out = save_weights(coco_model, tmp_path / "w.weights", Header(0, 2, 0, 123))
    other = Darknet(coco_spec)
    header = load_weights(other, out)
    assert header.seen == 123
    for a, b in zip(coco_model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("major,minor,seen_bytes", [(0, 1, 4), (0, 2, 8), (1, 0, 8), (0, 0, 4)])
def test_header_versions(coco_spec, tmp_path, major, minor, seen_bytes):
    model = Darknet(coco_spec)
    header = Header(major, minor, 5, 4242)
    path = save_weights(model, tmp_path / "v.weights", header)
    assert path.stat().st_size == 12 + seen_bytes + 4 * expected_floats(coco_spec)
    assert load_weights(Darknet(coco_spec), path) == header


def test_partial_15_size_and_upto_load(coco, coco_spec, coco_model, tmp_path):
    out = tmp_path / "yolov3-tiny.conv.15"
    rc = main(["partial", str(coco.cfg), str(coco.weights), str(out), "15"])
    assert rc == 0
    floats_0_14 = sum(n for i, n in conv_float_counts(coco_spec) if i < 15)
    assert out.stat().st_size == 20 + 4 * floats_0_14
    assert read_weights_file(out).header.seen == 0
    one = Darknet(coco_spec.with_classes(1))
    load_weights(one, out, upto=15)
    for i in range(15):
        for a, b in zip(one.layers[i].state_dict().values(), coco_model.layers[i].state_dict().values()):
            assert torch.equal(a, b), f"layer {i}"
    # the file holds exactly layers 0..14: asking for more is an error that says how many floats
    with pytest.raises(DarktuneError, match="needs"):
        load_weights(Darknet(coco_spec), out)


def test_partial_bad_n(coco, tmp_path):
    with pytest.raises(DarktuneError, match="N must be in"):
        partial(coco.cfg, coco.weights, tmp_path / "x", 99)


CUTS = [0, 5, 12, 16, 19, 20, 21, 1000, 17_000_000, 35_434_952]


@pytest.mark.parametrize("cut", CUTS)
def test_truncated_weights_are_clear_errors(coco, coco_spec, tmp_path, cut):
    path = tmp_path / "cut.weights"
    path.write_bytes(coco.weights.read_bytes()[:cut])
    with pytest.raises(DarktuneError) as info:
        load_weights(Darknet(coco_spec), path)
    message = str(info.value)
    assert str(path) in message
    if cut >= 20 and (cut - 20) % 4 == 0:
        assert f"{(cut - 20) // 4:,}" in message and "8,858,734" in message


@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00\x00\x00"])
def test_extra_bytes_are_clear_errors(coco, coco_spec, tmp_path, extra):
    path = tmp_path / "extra.weights"
    path.write_bytes(coco.weights.read_bytes() + extra)
    with pytest.raises(DarktuneError, match="stray bytes|\\+1"):
        load_weights(Darknet(coco_spec), path)


@pytest.mark.parametrize("header", [np.array([-1, 2, 0], "<i4"), np.array([1000, 2, 0], "<i4"),
                                    np.array([0, 5000, 0], "<i4")])
def test_bad_header_version(coco, coco_spec, tmp_path, header):
    path = tmp_path / "bad.weights"
    path.write_bytes(header.tobytes() + coco.weights.read_bytes()[12:])
    with pytest.raises(DarktuneError, match="header version"):
        load_weights(Darknet(coco_spec), path)


def test_wrong_cfg_is_clear_error(coco, coco_spec):
    with pytest.raises(DarktuneError, match="another cfg or number of classes"):
        load_weights(Darknet(coco_spec.with_classes(1)), coco.weights)


def test_infer_num_classes(coco, coco_spec):
    floats = read_weights_file(coco.weights).floats.size
    assert infer_num_classes(coco_spec.with_classes(1), floats) == 80
    assert infer_num_classes(coco_spec, floats + 1) is None


def test_partial_json_reports_what_it_wrote(coco, tmp_path, capsys):
    out = tmp_path / "yolov3-tiny.conv.15"
    assert main(["partial", str(coco.cfg), str(coco.weights), str(out), "15", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON object and nothing else
    assert report["out"] == str(out) and report["layers"] == 15 and report["last_layer"] == 14
    assert report["bytes"] == out.stat().st_size == 20 + 4 * report["floats"] and report["seen"] == 0
    assert report["cfg"] == str(coco.cfg) and report["weights"] == str(coco.weights)


def test_partial_29_of_yolov4_tiny(coco_v4, coco_v4_model, tmp_path):
    """darknet's own v4-tiny transfer start: layers 0..28 (the backbone and the first head's 1x1 and 3x3
    convs), 4,947,424 floats, the first floats of the official file, seen reset; loads back with upto=29."""
    out = tmp_path / "yolov4-tiny.conv.29"
    assert main(["partial", str(coco_v4.cfg), str(coco_v4.weights), str(out), "29"]) == 0
    source, written = read_weights_file(coco_v4.weights), read_weights_file(out)
    assert written.floats.size == 4_947_424 and out.stat().st_size == 20 + 4 * 4_947_424
    assert np.array_equal(written.floats, source.floats[:4_947_424])
    assert written.header.seen == 0 and written.header.major == 0 and written.header.minor == 2
    one = Darknet(coco_v4_model.spec.with_classes(1))
    load_weights(one, out, upto=29)
    for i in range(29):
        for a, b in zip(one.layers[i].state_dict().values(), coco_v4_model.layers[i].state_dict().values()):
            assert torch.equal(a, b), f"layer {i}"
