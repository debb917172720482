"""Training throughput of Tiny YOLOv3: the bare step against a full loop fed by the device-side input path.

For each --freeze N and each mode, in one process (a compiled module is shared by its bare and loop runs):
  bare   forward + YoloLoss + backward + SGD step on tensors already on the device (fixed random batch)
  loop   the same step fed by Uint8Cache.batch (uint8, pinned, non_blocking; or --resident: the whole cache
         in device memory) + batch_augment.augment_batch (yolov3-tiny.cfg's jitter .3, hue .1, saturation
         1.5, exposure 1.5, flip) on synthetic 640x480 JPEGs; ratio = loop / bare images/s
Modes: fp32; bf16cl = bf16 autocast + channels_last; compile = bf16cl + torch.compile of the network.
Freezing uses darktune.train.freeze (set_frozen + PrefixFrozenModel: no backward through layers 0..N-1).
No weights are needed (throughput does not depend on them): the architecture is the published
yolov3-tiny.cfg, embedded below, with 1 class. Multi-scale is off (one size: no recompiles).

    python benchmarks/bench_gpu_train.py --device cuda [--size 416 --batch 64] [--freeze 0,13] [--json]
    python benchmarks/bench_gpu_train.py --write-cfg PATH   # write the embedded cfg and exit
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_batch_augment import make_images  # noqa: E402

from darktune.darknet.cfg import parse_cfg  # noqa: E402
from darktune.data.augment import AugmentConfig  # noqa: E402
from darktune.data.batch_augment import augment_batch  # noqa: E402
from darktune.data.uint8_cache import build_cache  # noqa: E402
from darktune.train.freeze import PrefixFrozenModel, set_frozen  # noqa: E402
from darktune.train.loss import YoloLoss  # noqa: E402
from darktune.darknet.model import Darknet  # noqa: E402


def _conv(filters: int, size: int, bn: bool = True, act: str = "leaky") -> str:
    norm = "batch_normalize=1\n" if bn else ""
    return f"[convolutional]\n{norm}filters={filters}\nsize={size}\nstride=1\npad=1\nactivation={act}\n\n"


def _yolo(mask: str) -> str:
    return (f"[yolo]\nmask = {mask}\nanchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319\nclasses=80\n"
            "num=6\njitter=.3\nignore_thresh = .7\ntruth_thresh = 1\nrandom=1\n\n")


def yolov3_tiny_cfg() -> str:
    """The published yolov3-tiny.cfg (pjreddie darknet), 80 classes."""
    net = ("[net]\nbatch=1\nsubdivisions=1\nwidth=416\nheight=416\nchannels=3\nmomentum=0.9\ndecay=0.0005\n"
           "angle=0\nsaturation = 1.5\nexposure = 1.5\nhue=.1\n\nlearning_rate=0.001\nburn_in=1000\n"
           "max_batches = 500200\npolicy=steps\nsteps=400000,450000\nscales=.1,.1\n\n")
    body = ""
    for i, f in enumerate((16, 32, 64, 128, 256, 512)):
        body += _conv(f, 3) + f"[maxpool]\nsize=2\nstride={1 if i == 5 else 2}\n\n"
    body += _conv(1024, 3) + _conv(256, 1) + _conv(512, 3) + _conv(255, 1, bn=False, act="linear")
    body += _yolo("3,4,5") + "[route]\nlayers = -4\n\n" + _conv(128, 1) + "[upsample]\nstride=2\n\n"
    body += "[route]\nlayers = -1, 8\n\n" + _conv(256, 3) + _conv(255, 1, bn=False, act="linear") + _yolo("0,1,2")
    return net + body


def build_spec(classes: int, size: int):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "yolov3-tiny.cfg"
        path.write_text(yolov3_tiny_cfg())
        return parse_cfg(path).with_classes(classes).with_size(size, size)


class Stepper:
    """One model + optimizer + loss for a (mode, freeze): step(x, targets) is one training iteration."""

    def __init__(self, spec, device: torch.device, mode: str, freeze: int, batch: int):
        torch.manual_seed(0)
        self.device, self.batch = device, batch
        self.amp = mode in ("bf16cl", "compile")
        self.channels_last = self.amp
        model = Darknet(spec).to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if freeze:
            set_frozen(model, range(freeze))
        self.model = model
        net = PrefixFrozenModel(model) if freeze else model
        self.net = torch.compile(net) if mode == "compile" else net
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=0.0005 * batch)
        self.loss_fn = YoloLoss([spec.layers[i] for i in spec.yolo_indices])
        self.hw = tuple(spec.net.height for _ in range(2))
        model.train()

    def step(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            heads = self.net(x)
        loss, _ = self.loss_fn(heads, targets, self.hw)
        (loss / self.batch).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, iters: int, warmup: int, repeats: int) -> dict:
    """images/s of `fn` (one iteration of `batch` images): warm-up, then `repeats` blocks of `iters`."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    warm_s = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            last = fn()
        _sync(device)
        rates.append(iters / (time.perf_counter() - t0))
    if not bool(torch.isfinite(last).all()):
        raise RuntimeError("non-finite loss")
    return {"iterations_per_s": statistics.median(rates), "blocks": [round(r, 3) for r in rates],
            "warmup_s": round(warm_s, 2)}


def random_targets(batch: int, per_image: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = batch * per_image
    wh = torch.rand((n, 2), generator=g) * 0.3 + 0.05
    cxy = wh / 2 + torch.rand((n, 2), generator=g) * (1 - wh)
    img = torch.arange(batch).repeat_interleave(per_image).float()[:, None]
    return torch.cat([img, torch.zeros((n, 1)), cxy, wh], 1).to(device)


def run(args) -> dict:
    device = torch.device(args.device)
    spec = build_spec(args.classes, args.size)
    cfg = AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True)
    report: dict = {"device": str(device), "device_name": _device_name(device), "size": args.size,
                    "batch": args.batch, "classes": args.classes, "torch": torch.__version__, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = build_cache(make_images(Path(tmp), args.images), args.size) if args.loop else None
        report["cache_build_s"] = round(time.perf_counter() - t0, 2)
        if cache is not None and args.resident:
            cache = cache.to(device)
        x = torch.rand((args.batch, 3, args.size, args.size), device=device)
        t_fixed = random_targets(args.batch, 3, device)
        rng = np.random.default_rng(0)
        gen = torch.Generator(device=device).manual_seed(0)

        def loop_step(stepper: Stepper):
            images, targets = cache.batch(rng.integers(0, len(cache), args.batch), device)
            xb, tb = augment_batch(images, targets, args.size, cfg, gen, compact=False)
            return stepper.step(xb, tb)

        for freeze in args.freeze:
            for mode in args.modes:
                case = {"mode": mode, "freeze": freeze}
                try:
                    stepper = Stepper(spec, device, mode, freeze, args.batch)
                    bare = timed(lambda: stepper.step(x, t_fixed), device, args.iters, args.warmup, args.repeats)
                    case["bare_images_per_s"] = bare["iterations_per_s"] * args.batch
                    case["bare_warmup_s"] = bare["warmup_s"]
                    if cache is not None and mode in args.loop_modes:
                        loop = timed(lambda: loop_step(stepper), device, args.iters, args.warmup, args.repeats)
                        case["loop_images_per_s"] = loop["iterations_per_s"] * args.batch
                        case["loop_over_bare"] = case["loop_images_per_s"] / case["bare_images_per_s"]
                except Exception as exc:  # one failing mode (e.g. compile) must not hide the others
                    case["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                report["cases"].append(case)
                if args.json:  # progress on stderr; the table comes at the end otherwise
                    print(_line(case), file=sys.stderr, flush=True)
    return report


def _line(case: dict) -> str:
    if "error" in case:
        return f"freeze {case['freeze']:>2} {case['mode']:<8} error: {case['error']}"
    loop = (f" loop {case['loop_images_per_s']:8.1f} img/s  loop/bare {case['loop_over_bare']:.2f}"
            if "loop_images_per_s" in case else "")
    return f"freeze {case['freeze']:>2} {case['mode']:<8} bare {case['bare_images_per_s']:8.1f} img/s{loop}"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def format_table(report: dict) -> str:
    lines = [f"Tiny YOLOv3 training, {report['size']}x{report['size']} batch {report['batch']}, "
             f"{report['classes']} class, {report['device']} ({report['device_name']}), torch {report['torch']}"]
    lines += [_line(c) for c in report["cases"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--modes", default="fp32,bf16cl,compile", help="fp32, bf16cl, compile (comma-separated)")
    ap.add_argument("--loop-modes", default="bf16cl,compile", help="modes that also run the full loop")
    ap.add_argument("--freeze", default="0,13", help="frozen layer counts (comma-separated)")
    ap.add_argument("--iters", type=int, default=20, help="iterations per timed block")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=256, help="synthetic images in the cache")
    ap.add_argument("--no-loop", dest="loop", action="store_false", help="bare step only")
    ap.add_argument("--resident", action="store_true", help="keep the whole uint8 cache in device memory")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--write-cfg", metavar="PATH", help="write the embedded yolov3-tiny.cfg and exit")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.write_cfg:
        Path(args.write_cfg).write_text(yolov3_tiny_cfg())
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    args.modes = [m for m in args.modes.split(",") if m]
    args.loop_modes = [m for m in args.loop_modes.split(",") if m]
    args.freeze = [int(f) for f in args.freeze.split(",") if f.strip()]
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    report = run(args)
    # PyTorch defaults kept: "fp32" convolutions may use TF32 on Ampere+ (cudnn.allow_tf32 is on by default)
    report["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    print(json.dumps(report) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
