"""Benchmark darktune.eval.metrics.evaluate against pycocotools (the baseline) on the same synthetic detections.

Prints the median wall time of each protocol and its ratio to pycocotools' evaluate+accumulate (COCO AP50-95),
measured in the same run. Usage: python benchmarks/bench_metrics.py [--images 5000] [--dets 50] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from darktune.eval.metrics import PROTOCOLS, evaluate  # noqa: E402


def synthetic(n_images: int, n_dets: int, n_truth: int, num_classes: int, seed: int = 0):
    """Truths at random; detections = jittered copies of them plus random scores and classes."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(n_images):
        xy = rng.uniform(0, 300, (n_truth, 2))
        g = np.column_stack([rng.integers(0, num_classes, n_truth), xy, xy + rng.uniform(10, 100, (n_truth, 2))])
        boxes = g[rng.integers(0, n_truth, n_dets), 1:5] + rng.normal(0, 5, (n_dets, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        dets.append(np.column_stack([boxes, rng.random(n_dets), rng.integers(0, num_classes, n_dets)]))
        gts.append(g)
    return dets, gts


def pycocotools_eval(dets, gts, num_classes: int) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns, results = [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        for c, x1, y1, x2, y2 in g.tolist():
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for x1, y1, x2, y2, s, c in d.tolist():
            results.append({"image_id": i + 1, "category_id": int(c) + 1, "score": s,
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i + 1} for i in range(len(gts))], "annotations": anns,
                      "categories": [{"id": c + 1} for c in range(num_classes)]}
        gt.createIndex()
        e = COCOeval(gt, gt.loadRes(results), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[0])


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=50, help="detections per image")
    ap.add_argument("--truths", type=int, default=8, help="truths per image")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-repeat", type=int, default=1, help="repeats of the (slow) pycocotools run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    dets, gts = synthetic(args.images, args.dets, args.truths, args.classes)
    base_s, base_map = timed(lambda: pycocotools_eval(dets, gts, args.classes), args.baseline_repeat)
    rows = {}
    for protocol in PROTOCOLS:
        s, r = timed(lambda p=protocol: evaluate(dets, gts, args.classes, protocol=p), args.repeat)
        rows[protocol] = {"median_s": s, "map": r.map, "speedup_vs_pycocotools": base_s / s}
    report = {"images": args.images, "dets_per_image": args.dets, "truths_per_image": args.truths,
              "classes": args.classes, "machine": f"{platform.processor() or platform.machine()}, "
              f"{platform.python_implementation()} {platform.python_version()}",
              "pycocotools": {"median_s": base_s, "map50_95": base_map}, "darktune": rows,
              "coco_agrees": abs(rows["coco"]["map"] - base_map) < 1e-6}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.images} images x {args.dets} detections, {args.truths} truths, {args.classes} classes")
    print(f"pycocotools evaluate+accumulate: {base_s:.3f} s (median of {args.baseline_repeat}), "
          f"AP50-95 {base_map:.6f}")
    for protocol, row in rows.items():
        print(f"darktune {protocol:8s}: {row['median_s']:.3f} s (median of {args.repeat}), mAP {row['map']:.6f}, "
              f"{row['speedup_vs_pycocotools']:.1f}x faster than pycocotools")
    print(f"coco mAP50-95 agrees with pycocotools within 1e-6: {report['coco_agrees']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
