"""Images/s of the batch augmentation (darktune.data.batch_augment) against the CPU per-image path, same run.

Cases, each timed `--repeats` times (median reported), with the yolov3-tiny.cfg settings (jitter .3, hue .1,
saturation 1.5, exposure 1.5, flip) unless --no-hue / --mosaic:
  cpu_per_image   DetectionDataset(cache="ram").load + collate: the CPU loader's work for one batch, in this
                  process (decoded images cached first; augment_sample per image with OpenCV)
  batch_augment   augment_batch on a uint8 batch already on the device
  cache+augment   Uint8Cache.batch(indices, device) + augment_batch: the whole device-side input path
  compiled_augment  (--compile) sample_params + torch.compile(apply_images) + apply_targets
Synthetic JPEGs (640x480, smooth noise, 1-3 boxes) are written to a temporary folder first.

    python benchmarks/bench_batch_augment.py [--device cpu|cuda] [--batches 16,64] [--size 416] [--json]
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

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from darktune.data.augment import AugmentConfig  # noqa: E402
from darktune.data.batch_augment import apply_images, apply_targets, augment_batch, sample_params  # noqa: E402
from darktune.data.uint8_cache import build_cache  # noqa: E402


def make_images(folder: Path, n: int, seed: int = 0) -> list[tuple[Path, np.ndarray]]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        small = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
        img = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        path = folder / f"img{i:04d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        k = int(rng.integers(1, 4))
        wh = rng.uniform(0.05, 0.4, (k, 2))
        c = rng.uniform(wh / 2, 1 - wh / 2)
        items.append((path, np.concatenate([np.zeros((k, 1)), c, wh], 1).astype(np.float32)))
    return items


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def bench_cpu_per_image(items, size: int, cfg: AugmentConfig, batch: int, repeats: int) -> list[float] | None:
    try:
        from darktune.data.loader import DetectionDataset, collate
    except ImportError:
        return None
    ds = DetectionDataset(items, size, cfg, cache="ram")
    ds.warm_cache(threads=1)
    state = {"i": 0}

    def one_batch():
        samples = []
        for _ in range(batch):
            img, boxes = ds.load(state["i"] % len(ds), epoch=1, seed=state["i"])
            samples.append((torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(boxes)))
            state["i"] += 1
        return collate(samples)

    return time_call(one_batch, torch.device("cpu"), repeats)


def summarise(times: list[float], batch: int) -> dict:
    med = statistics.median(times)
    return {"median_s": med, "images_per_s": batch / med, "repeats": len(times)}


def run(device: torch.device, batches: list[int], size: int, repeats: int, cfg: AugmentConfig,
        n_images: int, cpu_baseline: bool, compile_: bool = False) -> dict:
    results: dict[str, dict] = {}
    compiled = torch.compile(apply_images, dynamic=False) if compile_ else None
    with tempfile.TemporaryDirectory() as tmp:
        items = make_images(Path(tmp), n_images)
        t0 = time.perf_counter()
        cache = build_cache(items, size)
        cache_s = time.perf_counter() - t0
        gen = torch.Generator(device=device).manual_seed(0)
        rng = np.random.default_rng(0)
        for b in batches:
            row: dict[str, dict] = {}
            if cpu_baseline:
                times = bench_cpu_per_image(items, size, cfg, b, repeats)
                if times is not None:
                    row["cpu_per_image"] = summarise(times, b)
            idx = rng.integers(0, len(cache), b)
            images, targets = cache.batch(idx, device)
            row["batch_augment"] = summarise(
                time_call(lambda: augment_batch(images, targets, size, cfg, gen, compact=False), device, repeats), b)

            def full():
                imgs, tg = cache.batch(rng.integers(0, len(cache), b), device)
                return augment_batch(imgs, tg, size, cfg, gen, compact=False)

            row["cache+augment"] = summarise(time_call(full, device, repeats), b)
            if compiled is not None:
                def comp():
                    p = sample_params(b, cfg, size, gen, device)
                    return compiled(images, p, size, cfg.letterbox, None, cfg.hue > 0), \
                        apply_targets(targets, p, (size, size), size, cfg.letterbox, None, compact=False)

                row["compiled_augment"] = summarise(time_call(comp, device, repeats, warmup=2), b)
            if "cpu_per_image" in row:
                base = row["cpu_per_image"]["images_per_s"]
                for name in ("batch_augment", "cache+augment", "compiled_augment"):
                    if name in row:
                        row[name]["vs_cpu_per_image"] = row[name]["images_per_s"] / base
            results[str(b)] = row
    return {"device": str(device), "device_name": _device_name(device), "size": size, "repeats": repeats,
            "threads": torch.get_num_threads(), "cfg": cfg.__dict__, "cache_build_s": cache_s,
            "cache_images": n_images, "torch": torch.__version__, "results": results}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        return f"{names[0]} x{len(names)}" if names else platform.processor()
    except OSError:
        return platform.processor()


def format_table(report: dict) -> str:
    lines = [f"batch augmentation, {report['size']}x{report['size']}, device {report['device']} "
             f"({report['device_name']}), {report['threads']} threads, median of {report['repeats']}",
             f"{'batch':>5} {'case':<15} {'median ms':>10} {'images/s':>9} {'vs cpu/img':>10}"]
    for b, row in report["results"].items():
        for name, r in row.items():
            ratio = f"{r['vs_cpu_per_image']:.2f}x" if "vs_cpu_per_image" in r else "-"
            lines.append(f"{b:>5} {name:<15} {1000 * r['median_s']:>10.1f} {r['images_per_s']:>9.1f} {ratio:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    ap.add_argument("--batches", default="16,64", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=64, help="synthetic images in the cache")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--no-hue", action="store_true", help="hue 0 (the fast colour path)")
    ap.add_argument("--mosaic", action="store_true")
    ap.add_argument("--no-cpu-baseline", dest="cpu_baseline", action="store_false")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(apply_images)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(name)
    cfg = AugmentConfig(jitter=0.3, hue=0.0 if args.no_hue else 0.1, saturation=1.5, exposure=1.5, flip=True,
                        mosaic=args.mosaic)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    report = run(device, batches, args.size, args.repeats, cfg, args.images, args.cpu_baseline, args.compile)
    report["load_avg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(report) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
