"""darktune.darknet.memory's estimate against the memory one pass of yolov3-tiny really takes on the CPU: the
growth of the process's max RSS over one forward (inference) or forward + backward (training) pass, each case in
a fresh process so that an earlier case's peak does not hide a later one's.

    python benchmarks/bench_memory_estimate.py            # infer 4x416, train 4x416, infer 1x1024
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

CASES = (("infer", 4, 416), ("train", 4, 416), ("infer", 1, 1024))


def one(mode: str, batch: int, size: int) -> None:
    import torch

    from darktune.darknet.cfg import parse_cfg
    from darktune.darknet.memory import estimate_bytes
    from darktune.darknet.model import Darknet

    torch.set_num_threads(1)
    cfg = os.path.expanduser("~/.cache/darktune/yolov3-tiny/yolov3-tiny.cfg")
    spec = parse_cfg(cfg).with_size(size)
    model = Darknet(spec)
    x = torch.rand(batch, 3, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "train":
        sum(o.square().sum() for o in model(x)).backward()
    else:
        with torch.inference_mode():
            model(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    weights = 4 * sum(p.numel() for p in model.parameters())  # allocated before `base`
    estimate = estimate_bytes(spec, batch, mode == "train") - weights  # training: + gradients and momentum
    print(f"{mode} {batch}x{size}: measured {(peak - base) / 1024:.0f} MiB, estimated {estimate / 2**20:.0f} MiB")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        one(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    else:
        for case in CASES:
            subprocess.run([sys.executable, __file__, *map(str, case)], check=True)
