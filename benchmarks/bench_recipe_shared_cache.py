"""The recipe search's training seconds with and without the frozen-layer outputs shared across its trials
(darktune/train/feature_cache.py `SharedFeatures`, issue 28), the same small synthetic search twice in one process.

    .venv/bin/python benchmarks/bench_recipe_shared_cache.py [--images 60] [--size 96] [--order off,on]
        [--threads 1] [--root /tmp/recipe_shared_bench] [--json]

The search: a synthetic windows target set (`--images`, a fifth of them to validate: 48 training images, 6
iterations an epoch), starts coco15 and coco, frozen 8 and 13 (coco15 and coco load the same layers 0..14: the
same prefix outputs), batch 8, no augmentation (the cache applies), first rung 10 iterations, evaluated every
10, at most 30, eta 2, target 0.9 (not reached at these sizes: no finals). "off" is the search as before sharing
(each trial's cache in the trial only), "on" shares; each search gets a fresh folder. Prints, per search: training
seconds (the trials' own wall clock), the process's CPU seconds during the search (less sensitive to what else
the machine runs), wall seconds, iterations, trials, the training images taken from the shared store (from each
trial's final summary: the last run of a trial extended in later rungs); and whether
the mAP curves of the trials both searches trained are equal (sharing changes no number).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def search(data: Path, out: Path, size: int, shared: bool) -> dict:
    from darktune.experiment import recipe as recipe_mod
    from darktune.experiment.recipe_space import RecipeSettings
    from darktune.train.feature_cache import SharedFeatures

    settings = RecipeSettings(data=str(data), target_map=0.9, starts=("coco15", "coco"), freeze=(8, 13),
                              sizes=(size,), first_rung=10, eval_every=10, max_iterations=30, eta=2, seeds=2,
                              finalists=1, train={"batch": 8, "subdivisions": 1, "augment": False})
    recipe_mod.SharedFeatures = SharedFeatures if shared else (lambda: None)
    if out.exists():
        shutil.rmtree(out)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    result = recipe_mod.run_recipe(settings, out, device="cpu", progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    taken, curves = 0, {}
    for run in sorted((out / "runs").iterdir()):
        summary = json.loads((run / "summary.json").read_text())
        taken += (summary.get("feature_cache") or {}).get("shared_images", 0)
        lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
        curves[run.name] = [(r["iteration"], r["map"]) for r in lines if r.get("map") is not None]
    s = result["search"]
    return {"shared": shared, "train_s": s["train_s"], "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
            "iterations": s["iterations"],
            "trials": s["trials"], "shared_images": taken, "winner": (result["winner"] or {}).get("name"),
            "load": os.getloadavg(), "curves": curves}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--order", default="off,on")
    ap.add_argument("--root", default="/tmp/recipe_shared_bench")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    from darktune.data.synth.sets import make_target_set

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    data = root / "data" / "obj.data"
    if not data.is_file():
        data = make_target_set(root / "data", args.images, args.size, seed=3, val_fraction=0.2)
    runs = []
    for k, mode in enumerate(args.order.split(",")):
        print(f"load before {mode}: {os.getloadavg()}", file=sys.stderr, flush=True)
        runs.append(search(data, root / f"search-{k}-{mode}", args.size, mode == "on"))
        r = runs[-1]
        print(f"{mode}: {r['train_s']:.1f} s of training, {r['cpu_s']:.1f} CPU s, {r['wall_s']:.0f} s wall, "
              f"{r['iterations']} iterations in "
              f"{r['trials']} trials, {r['shared_images']} training images from the shared store, winner "
              f"{r['winner']}, load after {r['load'][0]:.1f}", file=sys.stderr, flush=True)
    both = set.intersection(*(set(r["curves"]) for r in runs))
    same = all(len({json.dumps(r["curves"][t]) for r in runs}) == 1 for t in both)
    if args.json:
        print(json.dumps({"runs": [{k: v for k, v in r.items() if k != "curves"} for r in runs],
                          "trials_in_all": len(both), "curves_equal": same}))
    else:
        print(f"trials in every search: {len(both)}; their mAP curves equal: {same}")


if __name__ == "__main__":
    main()
