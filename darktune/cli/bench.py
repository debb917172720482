"""`darktune bench`: the `bench` command group; `bench infer` times inference backends side by side.

`bench train` comes from `darktune.cli.train.add_bench_train_parser` when that module provides it.
"""

from __future__ import annotations

import argparse
import json

from darktune.numbers import COUNT, NET_SIZE, THREADS, integer


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: inference latency of the backends (and training, if present)")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    i = bsub.add_parser("infer", help="latency and throughput of torch, ONNX Runtime and OpenCV DNN, same run",
                        description="Times each backend's network run on one preprocessed batch (host input to "
                                    "host outputs; no preprocessing, decoding or NMS), after warm-up, the "
                                    "backends taking turns call by call. Reports median/p90 latency, images/s "
                                    "at the median, and speed relative to OpenCV DNN (its median / ours).")
    i.add_argument("--cfg", help="darknet cfg (default: the cached COCO yolov3-tiny)")
    i.add_argument("--weights", help="darknet weights (default: the cached COCO yolov3-tiny)")
    i.add_argument("--backend", default="all",
                   help="comma-separated torch,onnxruntime,opencv and the variants torch-unfused (BN not folded), "
                        "torch-onednn (folded, oneDNN for every conv) and opencv-exact (no Winograd), or all")
    i.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    i.add_argument("--batch", type=COUNT, default=1, help="images per call (default 1)")
    i.add_argument("--size", type=NET_SIZE, default=416, help="square input size, multiple of 32")
    i.add_argument("--iters", type=integer(1, 1_000_000), default=50, help="timed calls per backend")
    i.add_argument("--warmup", type=integer(0, 1_000_000), default=10, help="untimed calls per backend first")
    i.add_argument("--threads", type=THREADS, help="CPU threads for every backend (default: all CPUs)")
    i.add_argument("--block", type=integer(1, 1_000_000), default=5,
                   help="timed calls per turn (each turn starts with one untimed)")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(func=cmd_bench_infer)
    try:
        from darktune.cli.train import add_bench_train_parser

        add_bench_train_parser(bsub)
    except (ImportError, AttributeError):
        pass


# Bench-only variants: name -> (backend, make_backend options). OpenCV's defaults (Winograd) stay the baseline.
VARIANTS = {"torch-unfused": ("torch", {"fuse": False}), "torch-onednn": ("torch", {"precise": False}),
            "opencv-exact": ("opencv", {"winograd": False})}


def backend_names(text: str) -> list[str]:
    from darktune.deploy.runtimes import BACKENDS
    from darktune.errors import DarktuneError

    known = [*BACKENDS, *VARIANTS]
    names = known if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise DarktuneError(f"unknown backend '{','.join(unknown) or text}'; use {','.join(known)} or all")
    return list(dict.fromkeys(names))


def run_infer_bench(cfg, weights, backends: list[str], device: str = "cpu", batch: int = 1, size: int = 416,
                    iters: int = 50, warmup: int = 10, threads: int | None = None, block: int = 5,
                    progress: bool = True, skip_unavailable: bool = False) -> dict:
    """Build each backend, time them in the same run, and return a JSON-ready report. With
    `skip_unavailable`, a backend that cannot run here (e.g. OpenCV without CUDA) is listed under `skipped`."""
    import torch

    from darktune.devices import cpu_count
    from darktune.machine import cpu_name, library_versions, load_average
    from darktune.deploy.runtimes import (
        latency_summary,
        make_backend,
        time_backends,
    )
    from darktune.devices import parse_device
    from darktune.errors import DarktuneError
    from darktune.deploy.onnx import verification_input

    if batch < 1 or iters < 1 or warmup < 0 or block < 1:
        raise DarktuneError("--batch, --iters and --block must be >= 1, --warmup >= 0")
    parse_device(device)  # a misspelt --device is an error even where unavailable backends are skipped
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    built, skipped = [], {}
    for name in backends:
        base, options = VARIANTS.get(name, (name, {}))
        try:
            backend = make_backend(base, cfg, weights, size=size, device=device, batch=batch, threads=threads,
                                   **options)
        except DarktuneError as exc:
            if not skip_unavailable:
                raise
            skipped[name] = str(exc)
            continue
        backend.name = name  # timings are keyed by the variant's name
        built.append(backend)
    if not built:
        raise DarktuneError("no backend can run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    x = verification_input(batch, built[0].net_hw)
    load_before = load_average()
    times = time_backends(built, x, iters, warmup, block=block, progress=progress)
    results = {name: latency_summary(t, batch) for name, t in times.items()}
    if "opencv" in results:
        for r in results.values():
            r["speed_vs_opencv"] = results["opencv"]["median_ms"] / r["median_ms"]
    return {"cfg": str(cfg), "weights": str(weights), "device": device, "batch": batch, "size": size,
            "threads": threads, "iters": iters, "block": block,
            "machine": cpu_name(),
            "cpus": cpu_count(), "load_1min": [load_before, load_average()], "backends": results,
            "skipped": skipped,
            "fastest": min(results, key=lambda n: results[n]["median_ms"]),
            "versions": {k: v for k, v in library_versions().items() if v}}


def format_report(report: dict) -> str:
    lines = [(f"bench infer: batch {report['batch']}, {report['size']}x{report['size']}, {report['device']}, "
              f"{report['threads']} threads, {report['machine']} ({report['cpus']} CPUs), "
              f"load {report['load_1min'][0]} -> {report['load_1min'][1]}"),
             f"{'backend':<12} {'median ms':>10} {'p90 ms':>8} {'images/s':>9} {'vs OpenCV':>9} {'CPU ms':>7}"]
    for name, r in report["backends"].items():
        ratio = f"{r['speed_vs_opencv']:.2f}x" if "speed_vs_opencv" in r else "-"
        lines.append(f"{name:<12} {r['median_ms']:>10.2f} {r['p90_ms']:>8.2f} {r['images_per_s']:>9.1f} "
                     f"{ratio:>9} {r['cpu_ms']:>7.1f}")
    lines += [f"{name:<12} skipped: {why}" for name, why in report.get("skipped", {}).items()]
    lines.append(f"fastest: {report['fastest']} (vs OpenCV = OpenCV median / this median; >1 is faster; "
                 "CPU ms = median process CPU time per call, all threads)")
    return "\n".join(lines)


def cmd_bench_infer(args) -> int:
    from darktune.devices import parse_device

    parse_device(args.device)  # before the default model is fetched
    cfg, weights = args.cfg, args.weights
    if cfg is None or weights is None:
        if cfg or weights:
            from darktune.errors import DarktuneError

            raise DarktuneError("give both --cfg and --weights, or neither (the cached COCO yolov3-tiny)")
        from darktune.darknet import zoo

        fetched = zoo.fetch("yolov3-tiny")
        cfg, weights = fetched.cfg, fetched.weights
    report = run_infer_bench(cfg, weights, backend_names(args.backend), args.device, args.batch, args.size,
                             args.iters, args.warmup, args.threads, args.block,
                             progress=not args.json, skip_unavailable=args.backend == "all")
    print(json.dumps(report) if args.json else format_report(report))
    return 0


