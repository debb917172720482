"""Model semantics that no runtime questions: an experiment spec whose `model:` names one network while its cfg
builds another, cfg keys that change the decode set out of their domain, and an ONNX export whose raw heads
match while the cfg stored in it decodes them into other boxes. Each is refused with one line naming the spec
file and line, the cfg file and line, or the exported file.
"""

from __future__ import annotations

import pytest
import torch

import cfgs
from corpus import datasets
from corpus.harness import exception_outcome
from reliability_table import tally  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def yolov3_tiny_cfg(classes: int = 1) -> str:
    """yolov3-tiny's layers (24: two heads at strides 32 and 16), for `classes`."""
    anchors = "10,14,  23,27,  37,58,  81,82,  135,169,  344,319"
    f = 3 * (classes + 5)
    out = [cfgs.NET.format(size=416, lr=0.001, max_batches=500200, steps="400000,450000")]
    for i, c in enumerate((16, 32, 64, 128, 256)):
        out += [cfgs.conv(c, 3), "[maxpool]\nsize=2\nstride=2\n"]
    out += [cfgs.conv(512, 3), "[maxpool]\nsize=2\nstride=1\n", cfgs.conv(1024, 3), cfgs.conv(256, 1),
            cfgs.conv(512, 3), cfgs.conv(f, 1, bn=False, act="linear"), cfgs.yolo("3,4,5", anchors, classes),
            "[route]\nlayers = -4\n", cfgs.conv(128, 1), "[upsample]\nstride=2\n", "[route]\nlayers = -1, 8\n",
            cfgs.conv(256, 3), cfgs.conv(f, 1, bn=False, act="linear"), cfgs.yolo("0,1,2", anchors, classes)]
    return "\n".join(out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """cfgs of each kind of network and a tiny data set."""
    root = tmp_path_factory.mktemp("semantics")
    _, obj = datasets.make_tiny(root / "data")
    paths = {}
    for name, text in (("v3", yolov3_tiny_cfg()), ("v4", cfgs.yolov4_tiny_cfg(classes=1)),
                       ("tiny", datasets.tiny_cfg_text())):
        paths[name] = root / f"{name}.cfg"
        paths[name].write_text(text)
    return paths, obj


SPECS = [  # (name, model line or "", cfg, refused: the key the error names or None)
    ("v4-named-v3-built", "model: yolov4-tiny\n", "v3", "model"),
    ("v3-named-v4-built", "model: yolov3-tiny\n", "v4", "model"),
    ("v4-named-own-network", "model: yolov4-tiny\n", "tiny", "model"),
    ("v3-named-own-network", "model: yolov3-tiny\n", "tiny", "model"),
    ("default-model-v4-built", "", "v4", "cfg"),
    ("notes-then-v4-named-v3-built", "notes: a v4 study\nmodel: yolov4-tiny\n", "v3", "model"),
]
CONTROLS = [("v4-named-v4-built", "model: yolov4-tiny\n", "v4"), ("v3-named-v3-built", "model: yolov3-tiny\n", "v3"),
            ("no-model-own-network", "", "tiny")]


def test_a_spec_model_is_the_network_its_cfg_builds(files, tmp_path, tally):
    """`model: yolov4-tiny` with a yolov3-tiny cfg (and every other mismatch): refused before any run trains,
    naming the spec file and the key's line (today: v3-tiny trains while the report says v4-tiny). A cfg that
    builds the named model (its classes edited) still runs."""
    from darktune.errors import DarktuneError
    from darktune.experiment.runner import run_experiment
    from darktune.experiment.spec import load_spec

    paths, obj = files
    t = tally("semantics")
    trained = []

    def train_fn(kwargs, progress):
        trained.append(kwargs["out"])
        raise RuntimeError("stub: the run would train here")

    for name, head, cfg, key in SPECS + [(n, h, c, None) for n, h, c in CONTROLS]:
        spec_path = tmp_path / f"{name}.yaml"
        spec_path.write_text(f"{head}cfg: {paths[cfg]}\ngrid:\n  data: {obj}\n  starts: [scratch]\n"
                             "  iterations: 1\n")
        line = next(i for i, text in enumerate(spec_path.read_text().splitlines(), 1) if text.startswith(f"{key}:")) \
            if key else None
        trained.clear()
        try:
            run_experiment(load_spec(spec_path), tmp_path / f"out-{name}", device="cpu", train_fn=train_fn,
                           progress=False)
            outcome = ("handled", "") if key is None and trained else ("silent", f"trained {len(trained)} runs")
        except DarktuneError as exc:
            ok = key is not None and f"{spec_path}:{line}:" in str(exc) and not trained
            outcome = ("handled", "") if ok else ("crash", str(exc))
        except Exception as exc:  # noqa: BLE001
            outcome = exception_outcome(exc, str(spec_path))
        if key is not None:
            t.case(f"spec:{name}", *outcome)
        else:
            assert outcome[0] == "handled", (name, outcome)
    bad = {k: v for k, v in t.cases.items() if v[0] != "handled"}
    assert not bad, bad


DECODE_KEYS = [  # [yolo] keys that change how a head's outputs become boxes, set out of their domain
    "scale_x_y = -1", "scale_x_y = 0", "scale_x_y = 0.5", "scale_x_y = nan", "scale_x_y = inf", "scale_x_y = 1e30",
    "scale_x_y = 100", "new_coords = 2", "anchors = 0,0,1,1,2,2,3,3,4,4,5,5", "mask = 0,1,9", "classes = 0",
    "random = 1000",
]


def test_decode_keys_out_of_domain_are_refused_at_parse(tmp_path, tally):
    """scale_x_y = -1 (boxes mirrored about their cell), 0 (every box at the cell's centre) and their kind: the
    cfg is refused when read, naming its file and the key's line (today: scale_x_y = -1 trains, exports and
    "verifies")."""
    from darktune.darknet.cfg import parse_cfg
    from darktune.errors import DarktuneError

    t = tally("semantics")
    base = datasets.tiny_cfg_text()
    for key_text in DECODE_KEYS:
        key = key_text.split("=")[0].strip()
        lines = base.splitlines()
        first = lines.index("[yolo]")
        end = next((i for i in range(first + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        at = next((i for i in range(first + 1, end) if lines[i].split("=")[0].strip() == key), None)
        if at is None:  # a key the cfg leaves to its default: written first in the section
            at = first + 1
            lines.insert(at, key_text)
        else:
            lines[at] = key_text
        path = tmp_path / f"{key_text.replace(' ', '').replace(',', '_')}.cfg"
        path.write_text("\n".join(lines) + "\n")
        try:
            parse_cfg(path)
            t.case(f"cfg:{key_text}", "silent", "parsed")
        except DarktuneError as exc:
            ok = f"{path}:{at + 1}:" in str(exc)
            t.case(f"cfg:{key_text}", "handled" if ok else "crash", "" if ok else str(exc))
        except Exception as exc:  # noqa: BLE001
            t.case(f"cfg:{key_text}", *exception_outcome(exc, str(path)))
    bad = {k: v for k, v in t.cases.items() if v[0] != "handled"}
    assert not bad, bad


@pytest.fixture(scope="module")
def decoded_model(tmp_path_factory):
    """A tiny model with scale_x_y = 1.2 whose heads' biases push sigmoid(t) away from 1/2 (where scale_x_y
    changes nothing), so that a decode key lost on the way shows in the boxes."""
    from darktune.darknet.load import load_darknet

    root = tmp_path_factory.mktemp("decoded")
    cfg = root / "s.cfg"
    cfg.write_text(datasets.tiny_cfg_text().replace("[yolo]\n", "[yolo]\nscale_x_y = 1.2\n"))
    model, _ = load_darknet(cfg, datasets.random_weights(cfg, root / "w.weights"))
    with torch.no_grad():
        for i in model.spec.yolo_indices:
            model.layers[i - 1].conv.bias += 2.0
    return model


STORED = [  # (name, what the cfg stored in the ONNX file loses or changes)
    ("scale_x_y-dropped", lambda text: text.replace("scale_x_y=1.2\n", "")),
    ("anchors-doubled", lambda text: text.replace("anchors=6.0,8.0,10.0", "anchors=12.0,16.0,20.0")),
    ("masks-swapped", lambda text: text.replace("mask=3,4,5", "mask=0,1,2", 1)),
]


def test_onnx_export_verifies_decoded_boxes_not_only_raw_heads(decoded_model, tmp_path, monkeypatch, tally):
    """A raw-heads export whose stored cfg decodes differently from the model (a decode key dropped, anchors
    doubled, masks swapped): the raw heads are identical, the boxes are not; the export is refused naming the
    file (today: written and "verified"). An export whose stored cfg is faithful passes, and says how far its
    decoded boxes are from torch's."""
    from darktune.deploy import onnx as deploy_onnx
    from darktune.errors import DarktuneError

    pytest.importorskip("onnxruntime")
    t = tally("semantics")
    good = deploy_onnx.export_onnx(decoded_model, tmp_path / "good.onnx")
    assert "decoded" in good.max_abs_diff and good.max_abs_diff["decoded"] < 1e-4, good.max_abs_diff
    original = deploy_onnx.format_cfg
    for name, change in STORED:
        assert change(original(decoded_model.spec)) != original(decoded_model.spec), name
        monkeypatch.setattr(deploy_onnx, "format_cfg", lambda spec, change=change: change(original(spec)))
        out = tmp_path / f"{name}.onnx"
        try:
            deploy_onnx.export_onnx(decoded_model, out)
            t.case(f"onnx:{name}", "silent", "exported and verified")
        except DarktuneError as exc:
            ok = str(out) in str(exc) and "decode" in str(exc)
            t.case(f"onnx:{name}", "handled" if ok else "crash", "" if ok else str(exc))
        except Exception as exc:  # noqa: BLE001
            t.case(f"onnx:{name}", *exception_outcome(exc, str(out)))
    bad = {k: v for k, v in t.cases.items() if v[0] != "handled"}
    assert not bad, bad
