"""Training speed on the real tree-crown crops, one short probe per recipe, interleaved and repeated: where the
time of a CPU training goes (model, size, multi-scale, frozen layers with the feature cache).

    nice -n 5 .venv/bin/python benchmarks/real_speed.py [--iterations 12] [--repeats 2] [--json]

Each probe trains `--iterations` iterations of batch 8 from the model's COCO backbone (no evaluation) and takes
the median seconds per iteration of iterations 3 onward (the first ones build kernels and, with multi-scale,
run at the largest size). The load average is recorded beside every probe: on a shared machine compare only
probes of the same repeat.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RECIPES = {  # name: (model, TrainConfig fields)
    "v3 416": ("yolov3-tiny", {"size": 416, "multi_scale": False}),
    "v3 416 multi-scale": ("yolov3-tiny", {"size": 416, "multi_scale": True}),
    "v3 320": ("yolov3-tiny", {"size": 320, "multi_scale": False}),
    "v3 416 freeze 13 + feature cache": ("yolov3-tiny", {"size": 416, "multi_scale": False, "freeze": 13,
                                                         "augment": False}),
    "v4 416": ("yolov4-tiny", {"size": 416, "multi_scale": False}),
}


def probe(model: str, fields: dict, data: Path, iterations: int, out: Path) -> float:
    from darktune.darknet import zoo
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train
    from real_data import UPTO

    fetched = zoo.cached(model) or zoo.fetch(model)
    config = TrainConfig(cfg=str(fetched.cfg), data=str(data), weights=str(fetched.weights), upto=UPTO[model],
                         iterations=iterations, batch=8, subdivisions=1, burn_in=iterations, out=str(out),
                         checkpoint_every=10_000, **fields)
    train(config, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # images_per_s of a row covers that iteration alone (log_every 1)
    return statistics.median(8 / r["images_per_s"] for r in rows if "images_per_s" in r and r["iteration"] >= 3)


def main(argv: list[str] | None = None) -> int:
    from darktune.machine import cpu_name, load_average
    from real_sets import prepare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", action="append", help="recipe names to probe (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data = prepare("trees")
    names = args.only or list(RECIPES)
    probes = []
    tmp = Path(tempfile.mkdtemp(prefix="real_speed_"))
    try:
        for rep in range(args.repeats):
            for name in names:
                model, fields = RECIPES[name]
                before = load_average()
                s = probe(model, fields, data, args.iterations, tmp / f"{rep}_{len(probes)}")
                probes.append({"recipe": name, "repeat": rep, "s_per_iteration": round(s, 3),
                               "images_per_s": round(8 / s, 2), "load_before": before, "load_after": load_average()})
                if not args.json:
                    print(f"{name:36s} repeat {rep}: {s:6.2f} s/iteration ({8 / s:5.2f} images/s), load "
                          f"{before} -> {probes[-1]['load_after']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    medians = {n: statistics.median(p["s_per_iteration"] for p in probes if p["recipe"] == n) for n in names}
    report = {"machine": cpu_name(), "probes": probes, "median_s_per_iteration": medians,
              "ratio_to_first": {n: round(medians[n] / medians[names[0]], 2) for n in names}}
    print(json.dumps(report) if args.json else "\n".join(f"{n:36s} median {m:6.2f} s/iteration, "
                                                         f"x{report['ratio_to_first'][n]:.2f} of {names[0]}"
                                                         for n, m in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
