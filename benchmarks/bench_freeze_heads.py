"""Freeze-20 mechanism check (issue 5): the domain start with 0 vs 20 frozen layers at a network size where most
target boxes go to the [yolo] head that freezing 20 layers freezes (layer 16, stride 32).

    .venv/bin/python benchmarks/bench_freeze_heads.py [--size 320] [--seeds 0,1] [--jobs 2]
        [--root /tmp/freeze_heads_bench] [--json]

With whole scenes at 128 px the quick profile could not show the study's freeze-20 penalty for the domain start:
99% of its target boxes went to the stride-16 head (layer 23), which N=20 leaves trainable. This benchmark runs
that whole-scene profile's data and schedule (close views, batch 8, lr 0.001, burn_in 20, domain stage of 300
iterations from conv.15, 160 target iterations evaluated every 10) at `--size`, only for the domain start and N = 0,
20, and prints the mean mAP over the table rows (iterations 40, 80, 120, 160) next to the share of the training boxes
that each head learns at that size. Figures: benchmarks/FREEZE20.md. Everything is written under ``--root``; a second
call with the same arguments reuses what is there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROWS = (40, 80, 120, 160)


def whole_scene_profile():
    """The quick profile as it was before close-ups: whole scenes with window widths 14-40% of the image side,
    200 target images, 40 evaluation images, target 60 mAP (the setting of FREEZE20.md)."""
    from darktune.reproduce import PROFILES

    return replace(PROFILES["quick"], target_images=200, max_valid_images=40, target_map=0.6,
                   target_close_up=None, domain_close_up=None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=320, help="network and image size (multiple of 32)")
    ap.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    ap.add_argument("--root", default="/tmp/freeze_heads_bench")
    ap.add_argument("--coco15", action="store_true",
                    help="also train coco15 with N=0 (the quick profile's 200 iterations) on the same data, in "
                         "exp-coco15/, and compare the iterations to the target mAP with the domain start's")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from darktune.darknet.cfg import parse_cfg
    from darktune.experiment.runner import run_experiment
    from darktune.experiment.spec import spec_from_dict
    from darktune.report.heads import head_shares, training_box_sizes
    from darktune.report.render import write_report
    from darktune.report.data import load_experiment, seed_means
    from darktune.reproduce import prepare_data

    root = Path(args.root) / f"size{args.size}"
    quick = whole_scene_profile()
    data = prepare_data(replace(quick, size=args.size), root, progress=not args.json, workers=2)
    train = {"batch": quick.batch, "subdivisions": 1, "size": args.size, "lr": quick.lr, "burn_in": quick.burn_in,
             "protocol": "darknet", "checkpoint_every": 50, "augment": False,
             "max_valid_images": quick.max_valid_images}
    spec = {"cfg": "yolov3-tiny", "train": train,
            "stages": {"domain": {"data": data["domain"], "weights": "coco15", "iterations": quick.stage_iterations,
                                  "eval_at": [quick.stage_iterations // 2, quick.stage_iterations]}},
            "grid": {"data": data["target"], "starts": ["domain"], "freeze": [0, 20], "images": ["all"],
                     "seeds": [int(s) for s in args.seeds.split(",")], "iterations": quick.domain_iterations,
                     "eval_at": list(ROWS), "eval_every": 10, "target_map": quick.target_map}}
    t0 = time.perf_counter()
    run_experiment(spec_from_dict(spec, str(root / "spec.yaml")), root / "exp", jobs=args.jobs,
                   progress=not args.json)
    wall = time.perf_counter() - t0
    write_report(root / "exp", title=f"freeze-20 mechanism check at {args.size} px")
    exp = load_experiment(root / "exp")
    run = exp.select("domain", 20)[0]
    shares = head_shares(parse_cfg(run.run_dir / "model.cfg"), training_box_sizes(data["target"]), args.size)
    result = {"size": args.size, "seeds": spec["grid"]["seeds"], "wall_s": round(wall, 1),
              "heads": {str(h.layer): round(h.share, 3) for h in shares}}
    for n in (0, 20):
        values = seed_means(exp, "domain", n, None, list(ROWS))
        result[f"domain_f{n}_map"] = round(100 * sum(values) / len(values), 1)
        result[f"domain_f{n}_seeds"] = [round(100 * v, 1) for v in values]
    if args.coco15:
        result.update(_coco15(args, root, spec, exp))
    if args.json:
        print(json.dumps(result))
    else:
        heads = ", ".join(f"layer {k}: {v * 100:.0f}%" for k, v in result["heads"].items())
        print(f"{args.size} px, seeds {args.seeds}: domain N=0 {result['domain_f0_map']} vs N=20 "
              f"{result['domain_f20_map']} mean mAP over iterations {', '.join(map(str, ROWS))}; training boxes "
              f"per head: {heads} (layer 16 is frozen by N=20); {wall:.0f} s; report {root / 'exp' / 'report.md'}")
        if args.coco15:
            print(f"iterations to {100 * spec['grid']['target_map']:.0f} mAP (mean over seeds): domain "
                  f"{result['domain_to_target']}, coco15 {result['coco15_to_target_seeds']} per seed: "
                  f"{'at least ' if result['fewer_is_lower_bound'] else ''}{result['fewer_iterations_pct']}% fewer")
    return 0


def _coco15(args: argparse.Namespace, root: Path, spec: dict, domain_exp) -> dict:
    """coco15 with N=0 on the same data (its own experiment folder), and the time-to-target comparison."""
    from darktune.experiment.runner import run_experiment
    from darktune.experiment.spec import spec_from_dict
    from darktune.report.data import load_experiment, time_to_target

    quick = whole_scene_profile()
    grid = dict(spec["grid"], starts=["coco15"], freeze=[0], iterations=quick.iterations,
                eval_at=list(quick.eval_at))
    other = {"cfg": spec["cfg"], "train": spec["train"], "grid": grid}
    t0 = time.perf_counter()
    run_experiment(spec_from_dict(other, str(root / "spec-coco15.yaml")), root / "exp-coco15", jobs=args.jobs,
                   progress=not args.json)
    wall = time.perf_counter() - t0
    coco_exp = load_experiment(root / "exp-coco15")
    coco = time_to_target(coco_exp, "coco15", 0, None)
    dom = time_to_target(domain_exp, "domain", 0, None)
    target = spec["grid"]["target_map"]
    runs = coco_exp.select("coco15", 0)
    out = {"coco15_wall_s": round(wall, 1), "domain_to_target": dom.iterations, "coco15_to_target": coco.iterations,
           "coco15_to_target_seeds": [h.iteration if (h := r.reached(target)) else None for r in runs],
           "coco15_final_map": [round(100 * (r.final_map() or 0), 1) for r in runs], "fewer_is_lower_bound": False}
    if dom.iterations is None:
        out["fewer_iterations_pct"] = None
    elif coco.iterations:
        out["fewer_iterations_pct"] = round(100 * (1 - dom.iterations / coco.iterations))
    else:  # a coco15 seed never reached the target: count it at its last iteration, a lower bound on the cut
        its = [h if h is not None else coco.max_iterations for h in out["coco15_to_target_seeds"]]
        out["fewer_iterations_pct"] = round(100 * (1 - dom.iterations / (sum(its) / len(its))))
        out["fewer_is_lower_bound"] = True
    return out


if __name__ == "__main__":
    raise SystemExit(main())
