"""`darktune experiment` (a grid of training runs from a YAML spec, then its report), `darktune report` (rewrite
the report of an experiment or recipe search folder) and `darktune reproduce` (the whole study on the synthetic
benchmark)."""

from __future__ import annotations

import argparse

from darktune.numbers import COUNT, real

SPEC_EXAMPLE = """\
example SPEC.yaml (paths relative to the spec file):
  cfg: yolov3-tiny                  # a zoo model name or a .cfg path
  weights: {backbone: darknet.weights}   # optional: your own ImageNet backbone / coco weights
  train: {batch: 16, size: 416, lr: 0.001, burn_in: 100}   # options for every run
  stages:
    domain: {data: domain/obj.data, weights: coco15, iterations: 1000}
  grid:
    data: target/obj.data
    starts: [scratch, backbone, coco15, coco, domain, other.weights]
    freeze: [0, 13, 20]
    images: [all, 50]
    seeds: [0]
    iterations: 2000
    eval_at: [1000, 1500, 1800, 2000]
    eval_every: 100
    target_map: 0.9
    per_start:
      domain: {iterations: 400, eval_at: [100, 200, 300, 400], eval_every: 20}
"""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a grid of training runs (starts x frozen layers x images x seeds) "
                                          "from a YAML spec and write its report",
                       epilog=SPEC_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC.yaml")
    p.add_argument("--out", required=True, help="experiment folder (runs, report); rerun to resume")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N for runs in this process (default: cuda:0 "
                                                  "if available, else cpu); with Ray, Ray places the runs")
    p.add_argument("--jobs", type=COUNT, default=None,
                   help="at most N runs at a time; above 1 they run on a local Ray instance, each with 1/N of the "
                        "CPU cores (and of the GPU) (default: 1, or as many as the resources allow with --ray)")
    add_ray_flags(p)
    p.add_argument("--rerun-changed", action="store_true",
                   help="delete and retrain the run folders the spec no longer matches (changed options, data, "
                        "start weights; without it they are an error that lists them)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep checkpoint.pt of finished runs (default: deleted, only an unfinished run needs it)")
    p.add_argument("--no-report", action="store_true", help="run the grid only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. when logging to a file)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("report", help="write report.md and report.html of an experiment folder or a `darktune "
                                      "recipe` search folder (of a `reproduce --model both` folder: each model's "
                                      "and the comparison)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="reproduce the transfer-learning study on the synthetic windows benchmark")
    p.add_argument("--profile", choices=("smoke", "quick", "full"), default="quick",
                   help="smoke: < 2 min on 2 CPU cores; quick (default): < 15 min on 2 CPU cores; full: the "
                        "study's sizes and iterations, for a GPU")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--out", default="runs/reproduce", help="output folder (rerun to resume); default %(default)s")
    p.add_argument("--model", choices=("yolov3-tiny", "yolov4-tiny", "both"), default="yolov3-tiny",
                   help="the study on Tiny YOLOv3 (default), on Tiny YOLOv4 (its layer numbering: coco29, frozen "
                        "0/27/35), or both: OUT/<model>/ each and OUT/report.md side by side")
    p.add_argument("--backbone", metavar="WEIGHTS", help="darknet's ImageNet darknet.weights for the backbone start "
                                                        "(first 13 layers); default: the COCO weights' "
                                                        "layers 0..7 as a stand-in, said so in the report")
    p.add_argument("--jobs", type=COUNT, default=None, help="runs at a time, above 1 through a local Ray instance "
                                                          "(default: one per CPU core up to 4 on CPU when Ray is "
                                                          "installed, else 1; 1 on a GPU)")
    add_ray_flags(p)
    p.add_argument("--rerun-changed", action="store_true",
                   help="delete and retrain the run folders this version no longer matches (e.g. made by an older "
                        "darktune; without it they are an error that lists them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. when logging to a file)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_reproduce)


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray (pip install 'darktune[ray]'; see docs/cluster.md)")
    g.add_argument("--ray", action="store_true", help="run each run as a Ray task on a local Ray instance that "
                                                      "darktune starts (all CPUs and GPUs of this machine)")
    g.add_argument("--ray-address", metavar="ADDRESS", help="join a running Ray cluster instead: auto, HOST:6379 or "
                                                            "ray://HOST:10001; the --out folder must be on a "
                                                            "filesystem every node shares")
    g.add_argument("--gpus-per-run", type=real(0, 1024), metavar="G",
                   help="GPUs each run holds; fractions pack several runs on one GPU (default: 1 when the cluster "
                        "has GPUs, 1/N with --jobs N, else 0)")
    g.add_argument("--cpus-per-run", type=real(0, 4096, low_open=True), metavar="C",
                   help="CPUs each run holds, also its torch threads (default 1; cores / N with --jobs N)")


def ray_options(args):
    """RayOptions from the flags, or None when the runs train in this process (--jobs above 1 alone: the
    library's local Ray instance)."""
    import os

    from darktune.errors import DarktuneError
    from darktune.experiment.ray_executor import RayOptions

    if args.jobs is not None and args.jobs < 1:
        raise DarktuneError(f"--jobs must be at least 1, got {args.jobs}")
    if not (args.ray or args.ray_address):
        if args.gpus_per_run is not None or args.cpus_per_run is not None:
            raise DarktuneError("--gpus-per-run and --cpus-per-run place runs on Ray: add --ray or --ray-address")
        return None
    cpus = args.cpus_per_run
    if cpus is None:
        cpus = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs and not args.ray_address else 1.0
    return RayOptions(address=args.ray_address, cpus_per_run=cpus, gpus_per_run=args.gpus_per_run,
                      jobs=args.jobs)


def _print_outcome(result, report, as_json: bool, extra: dict | None = None) -> None:
    import json

    runs = [{"run": o.plan.folder, "status": o.status, "reused": o.reused, "error": o.error}
            for o in result.outcomes]
    if as_json:
        payload = {"out": str(result.out_dir), "wall_s": round(result.wall_s, 3), "runs": runs,
                   "failed": len(result.failed), **(extra or {})}
        if report is not None:
            payload.update(report_md=str(report.markdown), report_html=str(report.html))
        print(json.dumps(payload))
        return
    for o in result.outcomes:
        if o.error:
            print(f"{o.plan.folder}: failed: {o.error.splitlines()[0]}")
    done = len(result.outcomes) - len(result.failed)
    print(f"{done}/{len(result.outcomes)} runs done ({sum(o.reused for o in result.outcomes)} reused) "
          f"in {result.wall_s:.0f} s; folder {result.out_dir}")
    if report is not None:
        print(f"report: {report.markdown} and {report.html}")


def cmd_experiment(args) -> int:
    from darktune.experiment.spec import load_spec

    ray = ray_options(args)
    spec = load_spec(args.spec)  # before torch is imported: a bad spec is refused at once

    from darktune.experiment.runner import run_experiment
    from darktune.report.render import write_report

    result = run_experiment(spec, args.out, device=args.device, jobs=args.jobs or 1, ray=ray,
                            progress=not args.no_progress, rerun_changed=args.rerun_changed,
                            keep_checkpoints=args.keep_checkpoints)
    report = None if args.no_report else write_report(args.out)
    _print_outcome(result, report, args.json)
    return 1 if result.failed else 0


def cmd_report(args) -> int:
    import json
    import sys

    from darktune.report.compare import write_reports
    from darktune.report.recipe import is_recipe_folder

    made = write_reports(args.dir)
    damaged = [line for p in made for line in p.damaged]
    what = ("the trial's curve is left out of the figure" if is_recipe_folder(args.dir)
            else "the run is reported as damaged, not measured")
    for line in damaged:  # refused run files: shown as not measured in the report, and said here
        print(f"darktune: error: {line} ({what})", file=sys.stderr)
    if args.json:
        records = [{"report_md": str(p.markdown), "report_html": str(p.html), "figures": [str(f) for f in p.figures],
                    "damaged_runs": list(p.damaged)} for p in made]
        print(json.dumps(records[0] if len(records) == 1 else records))
    else:
        for paths in made:
            print(f"report: {paths.markdown} and {paths.html}")
    return 1 if damaged else 0


def cmd_reproduce(args) -> int:
    from darktune.reproduce import reproduce

    ray = ray_options(args)
    outcome = reproduce(args.profile, args.out, device=args.device, progress=not args.no_progress,
                        backbone=args.backbone, jobs=args.jobs, rerun_changed=args.rerun_changed, model=args.model,
                        ray=ray)
    _print_outcome(outcome.result, outcome.report, args.json,
                   {"profile": args.profile, "model": args.model, "findings": outcome.verdicts})
    if not args.json:
        for line in outcome.verdicts:
            print(f"  {line}")
    return 1 if outcome.result.failed else 0
