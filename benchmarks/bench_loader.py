"""Data pipeline throughput beside the bare training step it has to feed, measured in the same run.

1. synth: images/s of `make_target_set` at 160 and at --size (one process).
2. loader: images/s of make_loader on a synthetic target set at --size with darknet augmentation
   (jitter .3, hue .1, saturation 1.5, exposure 1.5, flip), --workers worker processes, batch --batch;
   without cache (decode every time) and with cache="ram".
3. step: images/s of a bare Tiny YOLOv3 training step (1 class, forward + surrogate loss (sum of squared heads)
   + backward + SGD) at --size and batch --batch on --device, using darktune.darknet.model.Darknet built from the
   yolov3-tiny architecture (a plain conv stack of the same shape when darktune.darknet.model is not importable).
Prints medians over --repeats and the ratio loader / step (> 1: the loader keeps up with the step).

    .venv/bin/python benchmarks/bench_loader.py [--size 416] [--workers 2] [--batch 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_ANCHORS = "10,14,  23,27,  37,58,  81,82,  135,169,  344,319"


def yolov3_tiny_cfg(size: int, classes: int = 1) -> str:
    """The published yolov3-tiny architecture as cfg text."""

    def conv(f: int, k: int, bn: bool = True, act: str = "leaky") -> str:
        return f"[convolutional]\n{'batch_normalize=1' if bn else ''}\nfilters={f}\nsize={k}\nstride=1\npad=1\n" \
               f"activation={act}\n\n"

    def yolo(mask: str) -> str:
        return f"[yolo]\nmask={mask}\nanchors={TINY_ANCHORS}\nclasses={classes}\nnum=6\njitter=.3\n" \
               "ignore_thresh=.7\ntruth_thresh=1\nrandom=1\n\n"

    out = [f"[net]\nbatch=64\nsubdivisions=1\nwidth={size}\nheight={size}\nchannels=3\n\n"]
    for i, f in enumerate((16, 32, 64, 128, 256, 512)):
        out += [conv(f, 3), f"[maxpool]\nsize=2\nstride={1 if i == 5 else 2}\n\n"]
    head = 3 * (classes + 5)
    out += [conv(1024, 3), conv(256, 1), conv(512, 3), conv(head, 1, False, "linear"), yolo("3,4,5"),
            "[route]\nlayers=-4\n\n", conv(128, 1), "[upsample]\nstride=2\n\n", "[route]\nlayers=-1,8\n\n",
            conv(256, 3), conv(head, 1, False, "linear"), yolo("0,1,2")]
    return "".join(out)


def build_model(size: int):
    """(model, description): darktune.darknet.model.Darknet if available, else a conv stack of the same shape."""
    import torch
    from torch import nn

    try:
        from darktune.darknet.cfg import parse_cfg_text
        from darktune.darknet.model import Darknet

        return Darknet(parse_cfg_text(yolov3_tiny_cfg(size))), "darktune.darknet.model.Darknet (yolov3-tiny, 1 class)"
    except ImportError:
        pass

    def block(cin: int, cout: int, k: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1))

    class Stack(nn.Module):  # yolov3-tiny's layers, shapes and FLOPs with plain torch modules
        def __init__(self) -> None:
            super().__init__()
            chans = [3, 16, 32, 64, 128, 256]
            self.to26 = nn.Sequential(*[m for i in range(4) for m in (block(chans[i], chans[i + 1], 3),
                                                                       nn.MaxPool2d(2))], block(128, 256, 3))
            self.to13 = nn.Sequential(nn.MaxPool2d(2), block(256, 512, 3), nn.ZeroPad2d((0, 1, 0, 1)),
                                      nn.MaxPool2d(2, 1), block(512, 1024, 3), block(1024, 256, 1))
            self.head13 = nn.Sequential(block(256, 512, 3), nn.Conv2d(512, 18, 1))
            self.up = nn.Sequential(block(256, 128, 1), nn.Upsample(scale_factor=2))
            self.head26 = nn.Sequential(block(384, 256, 3), nn.Conv2d(256, 18, 1))

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            f26 = self.to26(x)
            f13 = self.to13(f26)
            return [self.head13(f13), self.head26(torch.cat([self.up(f13), f26], 1))]

    return Stack(), "conv stack shaped like yolov3-tiny (darktune.darknet.model not importable)"


def synth_rate(n: int, size: int) -> float:
    from darktune.data.synth.sets import make_target_set

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_target_set(Path(tmp) / "s", n, size, seed=0)
        return n / (time.perf_counter() - start)


def loader_rates(items: list, args: argparse.Namespace, cache: str | None) -> list[float]:
    from darktune.data.augment import AugmentConfig
    from darktune.data.loader import DetectionDataset, make_loader

    aug = AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True)
    rates = []
    for r in range(args.repeats):
        it = make_loader(DetectionDataset(items, args.size, aug, cache=cache), args.batch, args.workers, seed=r)
        for _ in range(2):  # workers started, queues filled
            next(it)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        rates.append(args.batches * args.batch / (time.perf_counter() - start))
        it.close()
    return rates


def step_rates(items: list, args: argparse.Namespace) -> tuple[list[float], str]:
    import torch

    from darktune.data.loader import DetectionDataset, make_loader

    device = torch.device(args.device)
    model, desc = build_model(args.size)
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    images, _ = next(make_loader(DetectionDataset(items, args.size), args.batch, 0, seed=0))
    x = images.to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        heads = model(x.float() / 255)
        loss = sum((h.float() ** 2).mean() for h in heads)
        loss.backward()
        opt.step()

    step()  # warm-up
    rates = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(args.steps * args.batch / (time.perf_counter() - start))
    return rates, desc


def make_items(root: Path, n: int, size: int) -> list:
    import numpy as np

    from darktune.data.synth.sets import make_target_set

    make_target_set(root, n, size, seed=1)
    items = []
    for p in sorted((root / "images").glob("*.jpg")):
        items.append((p, np.array(p.with_suffix(".txt").read_text().split(), np.float32).reshape(-1, 5)))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=64, help="images in the synthetic target set")
    parser.add_argument("--batches", type=int, default=12, help="timed loader batches per repeat")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synth-n", type=int, default=100, help="images per synth timing")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                            f"{torch.get_num_threads()} threads, device {args.device}",
                 "size": args.size, "batch": args.batch, "workers": args.workers, "repeats": args.repeats}
    res["synth_img_s"] = {str(s): statistics.median(synth_rate(args.synth_n, s) for _ in range(args.repeats))
                          for s in sorted({160, args.size})}
    with tempfile.TemporaryDirectory() as tmp:
        items = make_items(Path(tmp) / "target", args.images, args.size)
        no_cache = loader_rates(items, args, None)
        ram = loader_rates(items, args, "ram")
        steps, desc = step_rates(items, args)
    res["loader_img_s"] = {"no_cache": statistics.median(no_cache), "ram": statistics.median(ram),
                           "no_cache_runs": no_cache, "ram_runs": ram}
    res["step_img_s"] = statistics.median(steps)
    res["step_runs"] = steps
    res["step_model"] = desc
    res["ratio_loader_ram_over_step"] = res["loader_img_s"]["ram"] / res["step_img_s"]
    res["ratio_loader_no_cache_over_step"] = res["loader_img_s"]["no_cache"] / res["step_img_s"]
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"machine: {res['machine']}")
    for s, v in res["synth_img_s"].items():
        print(f"synth target set at {s}x{s}: {v:8.1f} images/s (median of {args.repeats}, one process)")
    print(f"loader {args.size}, {args.workers} workers, batch {args.batch}, augmented:")
    print(f"  no cache: {res['loader_img_s']['no_cache']:8.1f} images/s   ram cache: {res['loader_img_s']['ram']:8.1f}"
          f" images/s (medians of {args.repeats} x {args.batches} batches)")
    print(f"bare training step ({desc}), {args.device}: {res['step_img_s']:8.2f} images/s "
          f"(median of {args.repeats} x {args.steps} steps)")
    print(f"ratio loader/step: ram {res['ratio_loader_ram_over_step']:.1f}x, no cache "
          f"{res['ratio_loader_no_cache_over_step']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
