"""Inference latency of darktune's backends against OpenCV DNN, measured in the same run.

Default (the issue's CPU goal): yolov3-tiny (COCO weights from the cache) at 416x416, batch 1, all CPU threads.
Backends take turns in blocks: torch (BN folded, channels-last), torch-onednn (folded, oneDNN for every conv),
torch-unfused (the training model as it is), ONNX Runtime (all graph optimisations), OpenCV DNN with its
defaults (Winograd 3x3 convs: the baseline) and opencv-exact (no Winograd: the parity setting). Prints median /
p90 latency, images/s, each backend's speed relative to OpenCV DNN (OpenCV median / its median), and whether
darktune's fastest backend is at least as fast as OpenCV DNN.
With --device cuda: batch-1 latency and batch-64 throughput (the issue's GPU figures).

    .venv/bin/python benchmarks/bench_infer.py [--iters 100] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys


def aggregate(runs: list[dict]) -> dict:
    """One report from repeated runs: per backend the median of each figure, the per-run medians kept, and
    darktune's fastest backend (torch or onnxruntime) against OpenCV DNN."""
    report = copy.deepcopy(runs[0])
    for name, r in report["backends"].items():
        for key in ("median_ms", "p90_ms", "images_per_s", "speed_vs_opencv", "cpu_ms"):
            if key in r:
                r[key] = statistics.median(run["backends"][name][key] for run in runs)
        r["median_ms_per_repeat"] = [round(run["backends"][name]["median_ms"], 2) for run in runs]
    report["repeats"] = len(runs)
    report["fastest"] = min(report["backends"], key=lambda n: report["backends"][n]["median_ms"])
    ours = {n: r for n, r in report["backends"].items() if n in ("torch", "onnxruntime")}  # as shipped
    if "opencv" in report["backends"] and ours:
        best = min(ours, key=lambda n: ours[n]["median_ms"])
        report["darktune_best"] = best
        report["darktune_best_vs_opencv"] = ours[best]["speed_vs_opencv"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg")
    parser.add_argument("--weights")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, nargs="+", help="default: 1 on cpu, 1 and 64 on cuda")
    parser.add_argument("--backend", default="all")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="whole runs; the median of their medians is kept")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from darktune.darknet import zoo
    from darktune.cli.bench import backend_names, format_report, run_infer_bench

    cfg, weights = args.cfg, args.weights
    if not (cfg and weights):
        fetched = zoo.fetch("yolov3-tiny")
        cfg, weights = fetched.cfg, fetched.weights
    batches = args.batch or ([1, 64] if args.device == "cuda" else [1])
    reports = []
    for batch in batches:
        runs = [run_infer_bench(cfg, weights, backend_names(args.backend), args.device, batch, args.size,
                                args.iters, args.warmup, args.threads, progress=not args.json,
                                skip_unavailable=args.backend == "all")
                for _ in range(args.repeats)]
        report = aggregate(runs)
        reports.append(report)
        if not args.json:
            print(format_report(report))
            print(f"medians over {args.repeats} runs of {args.iters} timed calls each: "
                  + "; ".join(f"{n} {r['median_ms_per_repeat']}" for n, r in report["backends"].items()))
            if "darktune_best" in report:
                verdict = "meets" if report["darktune_best_vs_opencv"] >= 1 else "misses"
                print(f"darktune's fastest ({report['darktune_best']}) vs OpenCV DNN: "
                      f"{report['darktune_best_vs_opencv']:.2f}x -> {verdict} the goal (>= 1.00x)\n")
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
