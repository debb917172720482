"""Transfer benchmark (issue 4): from COCO conv.15 vs from scratch on the synthetic target set, same settings and
seed, mAP50 (darknet protocol) on the set's valid list over iterations, and iterations / seconds to the target.

    .venv/bin/python benchmarks/bench_transfer.py [--size 224] [--iterations 300] [--freeze 0] [--lr 0.001]
        [--burn-in 50] [--iou-thresh 0.213] [--seeds 0,1,2] [--jobs 2] [--root /tmp/transfer_bench] [--json]

The defaults are the setting of benchmarks/TRANSFER.md (224 px, batch 16, freeze 0, lr 0.001, burn_in 50,
steps 240, 300 iterations, bf16 autocast on CPU, multi-scale as the cfg says); its figures were measured so.

What it does, with `darktune` commands only (no private API):
  1. `darktune data synth --kind target` (default 1000 images at 416 px, seed 0; reused when present),
  2. `darktune weights fetch yolov3-tiny` and `darktune partial ... 15` (COCO layers 0..14: conv.15),
  3. a copy of the official yolov3-tiny.cfg with the overrides asked for: [net] ``--hue``, ``--saturation``,
     ``--exposure``; [yolo] ``--iou-thresh``, ``--truth-thresh``, ``--ignore-thresh`` (none by default),
  4. `darktune train` from conv.15 (``--upto 15``) and from scratch (``--weights none``) with identical
     arguments and seed, ``--jobs`` of them at once (one torch thread each: on a 2-core machine two
     single-thread runs finish sooner than two 2-thread runs one after the other),
  5. a table: mAP at every evaluation, the first evaluated iteration with mAP >= target and its training seconds
     (evaluation excluded) per start and seed; ``--json`` prints the same as one JSON object.

Runs and data live under ``--root`` (default /tmp/transfer_bench): nothing big is written in the repository.
Timings depend on the machine's load: the report records `uptime` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _darktune(*args: str, threads: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, "-m", "darktune", *args], check=False, env=env, capture_output=True,
                          text=True)


def _check(proc: subprocess.CompletedProcess, what: str) -> str:
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def prepare(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(obj.data, cfg, conv.15) under the root; each is made once and reused."""
    import dataclasses

    from darktune.darknet.cfg import YoloSpec, parse_cfg, write_cfg

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / f"target_{args.images}_{args.image_size}_s{args.data_seed}"
    _check(_darktune("data", "synth", "--kind", "target", "--n", str(args.images), "--size", str(args.image_size),
                     "--seed", str(args.data_seed), "--out", str(data_dir), "--json"), "data synth")
    fetched = json.loads(_check(_darktune("weights", "fetch", "yolov3-tiny", "--json"), "weights fetch"))
    cfg_path, weights = Path(fetched["paths"]["yolov3-tiny.cfg"]), Path(fetched["paths"]["yolov3-tiny.weights"])
    conv15 = root / "yolov3-tiny.conv.15"
    if not conv15.exists():
        _check(_darktune("partial", str(cfg_path), str(weights), str(conv15), "15"), "partial")
    spec = parse_cfg(cfg_path)
    net = {k: getattr(args, k) for k in ("hue", "saturation", "exposure") if getattr(args, k) is not None}
    yolo = {k: getattr(args, k) for k in ("iou_thresh", "truth_thresh", "ignore_thresh")
            if getattr(args, k) is not None}
    def changed(section, changes):  # written back by write_cfg only when listed in `explicit`
        explicit = tuple(dict.fromkeys(section.explicit + tuple(changes)))
        return dataclasses.replace(section, explicit=explicit, **changes)

    spec = dataclasses.replace(spec, net=changed(spec.net, net), layers=tuple(
        changed(layer, yolo) if isinstance(layer, YoloSpec) else layer for layer in spec.layers))
    tag = "_".join(f"{k}{v:g}" for k, v in sorted({**net, **yolo}.items())) or "official"
    cfg_out = write_cfg(spec, root / f"yolov3-tiny_{tag}.cfg")
    return data_dir / "obj.data", Path(cfg_out), conv15


def train_args(args: argparse.Namespace, cfg: Path, data: Path, start: str, conv15: Path, seed: int,
               out: Path) -> list[str]:
    weights = ["--weights", str(conv15), "--upto", "15"] if start == "conv15" else ["--weights", "none"]
    extra = {None: [], True: ["--multi-scale"], False: ["--no-multi-scale"]}[args.multi_scale]
    extra += ["--amp"] if args.amp else []
    extra += ["--obj-prior", str(args.obj_prior)] if args.obj_prior is not None else []
    extra += ["--eval-at", args.eval_at] if args.eval_at else []
    extra += ["--stop-at-target"] if args.stop_at_target else []
    freeze = args.freeze if start == "conv15" or args.freeze_scratch is None else args.freeze_scratch
    return ["train", "--cfg", str(cfg), "--data", str(data), *weights, "--freeze", str(freeze),
            "--size", str(args.size), "--batch", str(args.batch), "--subdivisions", "1",
            "--iterations", str(args.iterations), "--lr", str(args.lr), "--burn-in", str(args.burn_in),
            "--steps", args.steps, "--scales", args.scales, "--eval-every", str(args.eval_every),
            "--target-map", str(args.target), "--seed", str(seed), "--threads", str(args.threads),
            "--out", str(out), "--no-progress", "--json", *extra]


def run_one(args: argparse.Namespace, cfg: Path, data: Path, conv15: Path, start: str, seed: int) -> dict:
    out = Path(args.root) / "runs" / f"{args.name}_{start}_s{seed}"
    summary_path = out / "summary.json"
    if not (args.reuse and summary_path.exists()):
        cmd = train_args(args, cfg, data, start, conv15, seed, out)
        if out.exists() and not args.reuse:
            import shutil

            shutil.rmtree(out)
        _check(_darktune(*cmd, threads=args.threads), f"train {start} seed {seed}")
    summary = json.loads(summary_path.read_text())
    evals = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "map" in rec:
            evals.append({"iteration": rec["iteration"], "map": rec["map"], "train_s": rec.get("train_s")})
    return {"start": start, "seed": seed, "run": str(out), "evals": evals,
            "time_to_target": summary.get("time_to_target"), "best_map": summary.get("best_map"),
            "final_map": summary.get("final_map"), "train_seconds": summary.get("train_seconds"),
            "images_per_s": summary.get("images_per_s"), "status": summary.get("status")}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def table(results: list[dict], target: float) -> list[str]:
    iters = sorted({e["iteration"] for r in results for e in r["evals"]})
    head = f"{'start':8} {'seed':>4} " + " ".join(f"{i:>6}" for i in iters) + f"  {'to ' + format(target, 'g'):>14}"
    lines = [head, "-" * len(head)]
    for r in results:
        by_it = {e["iteration"]: e["map"] for e in r["evals"]}
        cells = " ".join(f"{by_it[i]:6.3f}" if i in by_it else f"{'':>6}" for i in iters)
        ttt = r["time_to_target"]
        reached = f"it {ttt['iteration']}, {ttt['seconds']:.0f} s" if ttt else "not reached"
        lines.append(f"{r['start']:8} {r['seed']:>4} {cells}  {reached:>14}")
    return lines


def get_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/transfer_bench", help="data, weights and runs (outside the repo)")
    p.add_argument("--name", default="bench", help="run-name prefix under ROOT/runs")
    p.add_argument("--images", type=int, default=1000, help="synthetic target images (80%% train, 20%% valid)")
    p.add_argument("--image-size", type=int, default=416, help="size of the synthetic images")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="network size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--freeze", type=int, default=0, help="frozen layers 0..N-1 (conv.15 start)")
    p.add_argument("--freeze-scratch", type=int, help="frozen layers of the scratch start (default: --freeze; "
                   "freezing random layers only handicaps scratch)")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--burn-in", type=int, default=50)
    p.add_argument("--steps", default="240", help="lr steps (darknet policy steps)")
    p.add_argument("--scales", default="0.1")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-at", default="", help="extra evaluation iterations, e.g. 125,175")
    p.add_argument("--target", type=float, default=0.9, help="target mAP50 (darknet protocol)")
    p.add_argument("--stop-at-target", action="store_true")
    p.add_argument("--hue", type=float, help="[net] hue override (official cfg: 0.1)")
    p.add_argument("--saturation", type=float, help="[net] saturation override (official: 1.5)")
    p.add_argument("--exposure", type=float, help="[net] exposure override (official: 1.5)")
    p.add_argument("--iou-thresh", type=float, help="[yolo] iou_thresh override (extra anchors; off: 1)")
    p.add_argument("--truth-thresh", type=float, help="[yolo] truth_thresh override (off: 1)")
    p.add_argument("--ignore-thresh", type=float, help="[yolo] ignore_thresh override (official: .7)")
    p.add_argument("--multi-scale", action=argparse.BooleanOptionalAction, default=None,
                   help="darknet multi-scale training (default: as the cfg's random=1 says: on for yolov3-tiny)")
    p.add_argument("--obj-prior", type=float, help="train --obj-prior P for the new heads (default: darknet's 0 bias)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast on CPU (2.3-2.5x faster on AVX512-BF16 CPUs)")
    p.add_argument("--starts", default="conv15,scratch")
    p.add_argument("--seeds", default="0")
    p.add_argument("--jobs", type=int, default=2, help="runs at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs of the same name")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    load_before = _uptime()
    t0 = time.perf_counter()
    data, cfg, conv15 = prepare(args)
    jobs = [(start, int(seed)) for seed in args.seeds.split(",") for start in args.starts.split(",")]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda js: run_one(args, cfg, data, conv15, *js), jobs))
    report = {"command": "benchmarks/bench_transfer.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
              "cfg": str(cfg), "data": str(data), "protocol": "darknet", "target": args.target,
              "uptime_before": load_before, "uptime_after": _uptime(), "cpu_count": os.cpu_count(),
              "wall_seconds": round(time.perf_counter() - t0, 1), "results": results}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"# {report['command']}\n# cfg {cfg.name}, data {data}, mAP50 darknet protocol on valid.txt")
        print("\n".join(table(results, args.target)))
        print(f"# wall {report['wall_seconds']} s; load before: {load_before}; after: {report['uptime_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
