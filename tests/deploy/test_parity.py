"""The error budgets of tests/parity.py: they hold the runtimes on this CPU and under narrower instruction
sets (subprocesses with the libraries' ISA switches), and they are tight enough that real errors fail them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from darktune.deploy.detect import preprocess_batch
from darktune.deploy.fuse import fuse_model
from darktune.darknet.model import Darknet
from parity import excess, reference

# Narrower instruction sets than this machine's. torch: oneDNN's ONEDNN_MAX_CPU_ISA and ATen's
# ATEN_CPU_CAPABILITY; OpenCV: OPENCV_CPU_DISABLE (its dispatched kernels); ONNX Runtime has no switch (MLAS
# picks its kernels from cpuid), so it runs as the CPU allows in every setting.
ISA_SETTINGS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "OPENCV_CPU_DISABLE": "AVX512-SKX"},
    "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default",
              "OPENCV_CPU_DISABLE": "AVX512-SKX,AVX2,FMA3,AVX,FP16,POPCNT,SSE4.2"},
}


@pytest.fixture(scope="module")
def small(coco_model, photo_path):
    """The COCO model at 160 and one real photo: (model, batch, float64 reference with torch's budget)."""
    from darktune.data.formats.image import read_image

    model = Darknet(coco_model.spec.with_size(160)).eval()
    model.load_state_dict(coco_model.state_dict())
    batch = preprocess_batch([read_image(photo_path)], (160, 160))
    return model, batch, reference(model, batch, "torch")


def _fused_heads(model: Darknet, batch: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        return [h.numpy() for h in fuse_model(model)(torch.from_numpy(batch))]


def test_budget_holds_the_correct_model(small):
    model, batch, ref = small
    assert excess(_fused_heads(model, batch), ref) <= 1


@pytest.mark.parametrize("mutation", ["fp16 weights", "bn eps 1e-4", "one weight 1e-3"])
def test_budget_fails_real_errors(small, mutation):
    """Errors a runtime or an export could really make exceed the budget: float16 weights (an export that
    silently lost precision), batch norm folded with a wrong epsilon, one weight of the first layer off by
    one part in a thousand."""
    model, batch, ref = small
    bad = copy.deepcopy(model)
    with torch.no_grad():
        if mutation == "fp16 weights":
            for p in bad.parameters():
                p.copy_(p.half().float())
        elif mutation == "bn eps 1e-4":
            for block in bad.layers:
                if getattr(block, "bn", None) is not None:
                    block.bn.eps = 1e-4
        else:
            w = bad.layers[0].conv.weight.view(-1)
            w[w.abs().argmax()] *= 1 + 1e-3
    assert excess(_fused_heads(bad, batch), ref) > 1


@pytest.mark.slow
@pytest.mark.parametrize("model", ["yolov3-tiny", "yolov4-tiny"])
@pytest.mark.parametrize("isa", sorted(ISA_SETTINGS))
def test_parity_under_narrower_instruction_sets(isa, model, request):
    """tests/parity_check.py in a subprocess with the ISA switches set: every runtime within its budget, on
    both official models."""
    request.getfixturevalue("coco" if model == "yolov3-tiny" else "coco_v4")  # fetched and verified here
    script = Path(__file__).parents[1] / "parity_check.py"
    env = {**os.environ, **ISA_SETTINGS[isa], "SIZE": "160", "MODEL": model}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["isa"]["torch"] == ("AVX2" if isa == "avx2" else "DEFAULT")
    assert report["isa"]["opencv"].endswith("AVX512-SKX?")  # the switch took effect (? = disabled)
    for name in ("torch", "onnxruntime", "opencv", "opencv-winograd"):
        assert report[name]["excess"] <= 1, (name, report[name])
