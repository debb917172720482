"""Other darknet tiny cfgs read without surprise: yolov4-tiny-3l (yolov4-tiny plus a stride-8 head) and
yolov7-tiny (ELAN-tiny, SPP max pools 5/9/13, new_coords heads), written in tests/darknet/cfgs/ from the
published layer tables. Each builds, runs, trains from scratch and exports, or is refused in one line naming
the key; keys darknet acts on and darktune does not are refused (training would differ) or named in a warning
(inference unaffected), never silently accepted (darktune.darknet.cfg REFUSED / WARNED, docs/darknet.md)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from darktune.darknet.cfg import REFUSED, WARNED, CfgWarning, parse_cfg, parse_cfg_text
from darktune.darknet.model import Darknet
from darktune.errors import DarktuneError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFGS = Path(__file__).parent / "cfgs"


def _v7_without_ema(tmp_path: Path) -> Path:
    text = (CFGS / "yolov7-tiny.cfg").read_text().replace("ema_alpha=", "# ema_alpha=")
    path = tmp_path / "yolov7-tiny-noema.cfg"
    path.write_text(text)
    return path


def test_yolov7_tiny_is_refused_in_one_line_naming_ema_alpha():
    with pytest.raises(DarktuneError) as info:
        parse_cfg(CFGS / "yolov7-tiny.cfg")
    message = str(info.value)
    assert "\n" not in message and "ema_alpha" in message and "yolov7-tiny.cfg:" in message


def test_yolov7_tiny_without_ema_warns_naming_each_key_it_does_not_act_on(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = parse_cfg(_v7_without_ema(tmp_path))
    messages = [str(w.message) for w in caught if issubclass(w.category, CfgWarning)]
    assert len(messages) == 2 and "max_delta=20" in messages[0] and "nms_kind=diounms" in messages[1]
    assert len(spec.layers) == 99 and len(spec.yolo_indices) == 3
    assert all(spec.layers[i].new_coords for i in spec.yolo_indices)


@pytest.mark.parametrize("which", ["yolov4-tiny-3l", "yolov7-tiny"])
def test_builds_runs_trains_and_exports(which, tmp_path):
    """Forward at 128 (three heads, finite), 2 iterations from scratch, ONNX export (checked in ONNX Runtime
    against torch) and darknet export (checked in OpenCV DNN)."""
    from darktune.data.synth.sets import make_target_set
    from darktune.deploy.darknet_export import export_darknet
    from darktune.deploy.onnx import export_onnx
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    cfg = CFGS / "yolov4-tiny-3l.cfg" if which == "yolov4-tiny-3l" else _v7_without_ema(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CfgWarning)
        spec = parse_cfg(cfg).with_size(128)
        model = Darknet(spec).eval()
        with torch.inference_mode():
            heads = model(torch.rand(1, 3, 128, 128))
        assert sorted(h.shape[-1] for h in heads) == [4, 8, 16] and all(torch.isfinite(h).all() for h in heads)
        data = make_target_set(tmp_path / "data", 6, 64, seed=1, val_fraction=0.34)
        res = train(TrainConfig(cfg=str(cfg), data=str(data), iterations=2, batch=2, size=64, lr=0.001, burn_in=0,
                                out=str(tmp_path / "run"), checkpoint_every=1000), progress=False)
        assert res.status == "finished" and res.iterations_done == 2
        onnx = export_onnx(model, tmp_path / "m.onnx")
        assert max(onnx.max_abs_diff.values()) < 1e-3
        dk = export_darknet(model, tmp_path / "dk")
        assert dk.max_abs_diff < 1e-3


SMALL = """[net]
width=64
height=64
{net}
[convolutional]
filters=18
size=1
activation=linear
{conv}
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
{yolo}
"""


@pytest.mark.parametrize("section,key", sorted(REFUSED))
def test_refused_keys_name_the_key_and_line(section, key):
    where = {"net": "", "conv": "", "yolo": ""}
    value = "0.1" if "eps" in key else ("1,2" if key == "counters_per_class" else "1")
    where["conv" if section == "*" else section] = f"{key}={value}"
    text = SMALL.format(**where)
    with pytest.raises(DarktuneError) as info:
        parse_cfg_text(text, "x.cfg")
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.startswith(f"{key}="))
    message = str(info.value)
    assert message.startswith(f"x.cfg:{line}: ") and key in message and "not supported" in message


@pytest.mark.parametrize("section,key", sorted(WARNED))
def test_warned_keys_name_the_key(section, key):
    value = {"nms_kind": "diounms", "beta_nms": "0.5", "max_delta": "5", "dynamic_minibatch": "1"}.get(key, "2")
    where = {"net": "", "conv": "", "yolo": ""}
    where[section] = f"{key}={value}"
    with pytest.warns(CfgWarning, match=f"{key}={value}"):
        parse_cfg_text(SMALL.format(**where), "x.cfg")


def test_defaults_and_official_cfgs_parse_silently(coco, coco_v4):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)
        for path in (coco.cfg, coco_v4.cfg, CFGS / "yolov4-tiny-3l.cfg"):
            parse_cfg(path)
        parse_cfg_text(SMALL.format(net="adam=0", conv="", yolo="nms_kind=greedynms\nmax_delta=0"), "x.cfg")
