"""`darktune recipe DATA --target-map M`: the fastest recipe (start point, frozen layers, size, lr, burn-in) to a
target mAP on your data, by successive halving on time to target; then its report."""

from __future__ import annotations

import argparse
import re

from darktune.numbers import COUNT, FRACTION, integer, list_type
from darktune.train.config import OPTIONS

EXAMPLE = """\
example:
  darktune recipe target/obj.data --target-map 0.9 --budget 30m --size 128 --batch 8 \\
      --domain domain.weights --out runs/recipe
  prints the winner as one `darktune train` line; rerun the same command to continue an interrupted search
"""


def domain(option: str):
    """The domain of a training option (TrainConfig's Option: the rule `darktune train` checks its flag by)."""
    return OPTIONS[option].domain


def _values(option: str):
    """A comma-separated list of a training option's values, each in that option's domain (TrainConfig's
    Option: the rule `darktune train` checks its flag by), as a tuple."""
    parse = list_type(OPTIONS[option].domain)

    def values(text: str) -> tuple:
        return tuple(parse(text))
    values.integer = parse.integer
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def duration(text: str) -> float:
    """Seconds from 90, 90s, 30m, 1.5h or 1h30m."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 2h, 1h30m or 600 (seconds), got {text!r}")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return 3600 * h + 60 * m + s


def add_commands(sub: argparse._SubParsersAction) -> None:
    from darktune.cli.experiment import add_ray_flags

    p = sub.add_parser("recipe", help="find the fastest recipe (start, frozen layers, size, lr, burn-in) to a "
                                      "target mAP on your data, by successive halving on time to target",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", help="obj.data of your data set (train and valid lists)")
    p.add_argument("--target-map", type=FRACTION, required=True, metavar="M", help="the mAP to reach (fraction, 0.8)")
    p.add_argument("--budget", type=duration, metavar="TIME", help="wall-clock limit of the whole search (30m, "
                                                                    "2h, 600); default none")
    p.add_argument("--model", choices=("yolov3-tiny", "yolov4-tiny"), default="yolov3-tiny",
                   help="the model (default %(default)s)")
    p.add_argument("--cfg", help="a .cfg of that model to train instead of the zoo's")
    p.add_argument("--out", default="runs/recipe", help="search folder (rerun to continue); default %(default)s")
    g = p.add_argument_group("the candidates (comma-separated lists narrow or widen each axis)")
    g.add_argument("--starts", type=_names, help="of scratch, backbone, coco15/coco29 (or partial), coco, coco-keep "
                                                 "(--keep-classes), domain (default: scratch, backbone, the "
                                                 "partial start, coco, and domain with --domain)")
    g.add_argument("--freeze", type=_values("freeze"),
                   help="frozen layer counts (default: 0,8,13,15,20 on yolov3-tiny, 0,18,27,29,35 on yolov4-tiny); "
                        "only where the start loads them")
    g.add_argument("--size", type=_values("size"), dest="sizes",
                   help="network sizes, multiples of 32 (default: the cfg's)")
    g.add_argument("--lr", type=_values("lr"), default=(0.001,), help="learning rates (default 0.001)")
    g.add_argument("--burn-in", type=_values("burn_in"), default=(20,), help="burn-in iterations (default 20)")
    g.add_argument("--backbone", metavar="FILE", help="darknet weights whose first layers are the backbone start "
                                                      "(default: a stand-in, the COCO weights' first layers)")
    g.add_argument("--backbone-layers", type=domain("upto"), metavar="N",
                   help="layers of --backbone to load (default: the model's backbone, 13 / 27)")
    g.add_argument("--domain", metavar="FILE", help="your weights trained on a related (domain) data set: the "
                                                    "domain start")
    h = p.add_argument_group("the search")
    h.add_argument("--first-rung", type=domain("iterations"), default=100,
                   help="iterations of every candidate first (default 100)")
    h.add_argument("--eval-every", type=integer(1, 100_000_000), default=10,
                   help="mAP every E iterations: the resolution of the time to target (default 10)")
    h.add_argument("--eta", type=integer(2, 100), default=3, help="each rung keeps 1/eta of its trials (default 3)")
    h.add_argument("--max-iterations", type=domain("iterations"), default=2000,
                   help="no trial trains longer (default 2000)")
    h.add_argument("--seeds", type=integer(1, 1000), default=3,
                   help="seeds of each finalist, to tell a real difference from noise (default 3)")
    h.add_argument("--finalists", type=integer(1, 1000), default=2, help="candidates checked across seeds (default 2)")
    t = p.add_argument_group("options of every trial")
    t.add_argument("--batch", type=domain("batch"))
    t.add_argument("--subdivisions", type=domain("subdivisions"))
    t.add_argument("--protocol", choices=("darknet", "voc07", "coco101", "coco"), help="mAP protocol (default "
                                                                                        "darknet)")
    t.add_argument("--max-valid-images", type=domain("max_valid_images"), metavar="N",
                   help="evaluate on the first N valid images")
    t.add_argument("--max-images", type=domain("max_images"), metavar="N", help="a seeded subset of N training images")
    t.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no augmentation "
                                                                                             "(the frozen-layer "
                                                                                             "feature cache applies)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda:0 if available, else cpu)")
    p.add_argument("--jobs", type=COUNT, default=None, help="trials at a time, above 1 through a local Ray instance")
    add_ray_flags(p)
    p.add_argument("--rerun-changed", action="store_true", help="delete and retrain trial folders whose data, cfg "
                                                                "or start weights changed")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every trial's checkpoint.pt")
    p.add_argument("--no-report", action="store_true", help="no report.md / report.html")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_recipe)


def settings_from_args(args):
    from darktune.experiment.recipe_space import RecipeSettings

    train = {k: getattr(args, k) for k in ("batch", "subdivisions", "protocol", "max_valid_images", "max_images",
                                           "augment") if getattr(args, k) is not None}
    return RecipeSettings(data=args.data, target_map=args.target_map, model=args.model, cfg=args.cfg,
                          starts=args.starts, freeze=args.freeze, sizes=args.sizes, lrs=args.lr,
                          burn_ins=args.burn_in, backbone=args.backbone, backbone_layers=args.backbone_layers,
                          domain=args.domain, first_rung=args.first_rung, eval_every=args.eval_every, eta=args.eta,
                          max_iterations=args.max_iterations, seeds=args.seeds, finalists=args.finalists, train=train)


def cmd_recipe(args) -> int:
    import json

    from darktune.cli.experiment import ray_options

    ray = ray_options(args)
    settings = settings_from_args(args)

    from darktune.experiment.recipe import run_recipe
    from darktune.report.recipe import write_recipe_report

    result = run_recipe(settings, args.out, budget_s=args.budget, device=args.device, jobs=args.jobs or 1, ray=ray,
                        progress=not args.no_progress, rerun_changed=args.rerun_changed,
                        keep_checkpoints=args.keep_checkpoints)
    report = None if args.no_report else write_recipe_report(args.out)
    if args.json:
        extra = {"report_md": str(report.markdown), "report_html": str(report.html)} if report else {}
        print(json.dumps({"out": str(args.out), **result, **extra}))
        return 0
    _print_result(result, report)
    return 0


def _print_result(result: dict, report) -> None:
    s, target = result["search"], f"{100 * result['target_map']:.1f}"
    w = result["winner"]
    if w:
        print(f"fastest to {target} mAP: {w['name']}, {w['seconds']:.1f} s of training (iteration {w['iteration']})")
        print(f"how sure: {'sure' if result['sure'] else 'not sure'}, {result['verdict']}")
        print(f"repeat it: {w['train_command']}")
        print(f"its weights: {w['weights']}")
    else:
        c = result.get("closest")
        if c:
            print(f"no candidate reached {target} mAP; closest: {c['name']} at {100 * c['best_map']:.1f}")
        print("try: " + "; ".join(result["advice"]))
    print(f"search: {s['wall_s']:.0f} s wall, {s['train_s']:.1f} s of training in {s['trials']} trials of "
          f"{s['candidates']} candidates, {s['rungs']} rungs")
    if report is not None:
        print(f"report: {report.markdown} and {report.html}")
