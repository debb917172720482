"""One parity run as a script, for a subprocess whose environment narrows the CPU's instruction set (the
libraries read it at load): prints JSON {runtime: {"error": max abs vs float64, "budget": max budget,
"excess": max error/budget}} for torch (fused), ONNX Runtime, OpenCV DNN with and without Winograd, on one
real photo at SIZE (default 224) with the official COCO MODEL (yolov3-tiny, the default, or yolov4-tiny).

    ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default MODEL=yolov4-tiny python tests/parity_check.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    import matplotlib
    import torch

    from darktune.darknet import zoo
    from darktune.darknet.load import load_darknet
    from darktune.deploy.runtimes import make_backend
    from darktune.data.formats.image import read_image
    from darktune.deploy.detect import preprocess_batch
    from parity import excess, max_error, reference

    size = int(os.environ.get("SIZE", "224"))
    fetched = zoo.fetch(os.environ.get("MODEL", "yolov3-tiny"), progress=False)
    model, _ = load_darknet(fetched.cfg, fetched.weights, size=size)
    photo = read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    batch = preprocess_batch([photo], (size, size))
    runs = {name: make_backend(name, fetched.cfg, fetched.weights, size=size, winograd=False)
            for name in ("torch", "onnxruntime", "opencv")}
    runs["opencv-winograd"] = make_backend("opencv", fetched.cfg, fetched.weights, size=size, winograd=True)
    import cv2

    report = {"isa": {"torch": torch.backends.cpu.get_cpu_capability(), "opencv": cv2.getCPUFeaturesLine(),
                      "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA", "default")}}
    for name, backend in runs.items():
        got, ref = backend.raw(batch), reference(model, batch, name)
        report[name] = {"error": max_error(got, ref.heads), "budget": ref.max_budget(), "excess": excess(got, ref)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
