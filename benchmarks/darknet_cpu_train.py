"""`darktune train` with darknet-CPU's four departures from darknet's GPU arithmetic emulated: an arm of
benchmarks/darknet_curves.py (`--arm "cpu_quirks=@darknet-cpu --obj-prior 0.5"`), to test whether they explain
why darknet's CPU build learns faster than darktune from darknet's own objectness start.

    .venv/bin/python benchmarks/darknet_cpu_train.py [darktune train options]

The departures (docs/darknet_training.md, "darknet as the reference"; pinned number for number against
darknet by tests/train/test_darknet_reference.py, whose emulation this reuses): training batch norm with the
unbiased batch variance and its own backward, rolling statistics with momentum 0.1, batch-norm shifts never
trained, and a route's gradient into a layer that also feeds a conv lost (yolov3-tiny: route 17 -> layer 13).
Evaluation (eval mode) uses the ordinary batch norm on the rolling statistics, as darknet's does.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from darktune.cli import main  # noqa: E402
from darktune.darknet.cfg import RouteSpec  # noqa: E402
import darktune.train.loop as loop  # noqa: E402


def _reference():
    spec = importlib.util.spec_from_file_location("darknet_reference",
                                                  REPO / "tests" / "train" / "test_darknet_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def emulate(model, ref) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            plain = m.forward
            m.forward = (lambda z, bn=m, plain=plain: ref._cpu_bn_forward(bn, z) if bn.training else plain(z))
            m.bias.register_hook(torch.zeros_like)  # never trained (the run resets requires_grad after init)
    layers = model.spec.layers
    for r, layer in enumerate(layers):
        if isinstance(layer, RouteSpec):
            for src in layer.layers:
                if src + 1 < r and hasattr(model.layers[src + 1], "conv"):
                    route = model.layers[r]
                    route.forward = (lambda outputs, f=route.forward, s=src:
                                     f([o.detach() if k == s and o is not None else o for k, o in enumerate(outputs)]))


def run(argv: list[str]) -> int:
    ref = _reference()
    original = loop.init_model

    def init_then_emulate(model, *args, **kwargs):
        report = original(model, *args, **kwargs)
        emulate(model, ref)
        report["emulated"] = "darknet-CPU: unbiased BN variance, BN momentum 0.1, BN shifts frozen, lost route grads"
        return report

    loop.init_model = init_then_emulate
    return main(["train", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
