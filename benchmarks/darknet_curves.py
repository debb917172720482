"""darknet's mAP curve beside darktune's: the same cfg, data, start and schedule, several runs of each, every
checkpoint scored the same way (issue 24's reference comparison).

    .venv/bin/python benchmarks/darknet_curves.py --darknet /path/to/darknet [--runs 3] [--size 320] [--json]

darknet is AlexeyAB's, built for the CPU outside this repository (never a dependency of darktune; how:
docs/darknet_training.md, "darknet as the reference"). Each darknet run is `darknet detector train obj.data
net.cfg conv15.weights -dont_show -clear` with `saveweights = EVERY` in obj.data, so it leaves
`backup/net_K.weights` every EVERY iterations; each darktune run is `darktune train` with the same cfg keys
(`--iterations --batch --size --lr --burn-in --steps --multi-scale`, augmentation as the cfg says, darknet's
objectness start) and `--eval-weights`, seeds 0..RUNS-1 (darknet seeds itself from the clock: its runs differ
anyway). Both start from the same floats: the COCO yolov3-tiny weights cut at layer 15 by `darktune partial`
(darknet's `partial`), new heads for the set's one class.

Every checkpoint of both tools is scored by darktune at the cfg's size on the valid list (darknet's `detector
map` protocol, and pycocotools' AP at IoU 0.5): darktune loads darknet's .weights exactly (tests/darknet), so
the scoring is the same for both. A run folder that already holds its last checkpoint is not run again, so an
interrupted comparison goes on where it stopped. Writes OUT/results.json (per run and per iteration; means and
ranges; load averages) and OUT/curves.png (mean and range of each tool against iterations).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

UPTO = 15  # yolov3-tiny.conv.15: the backbone darknet's users start from


def net_cfg(zoo_cfg: Path, out: Path, *, size: int, batch: int, iterations: int, lr: float, burn_in: int,
            steps: tuple[int, int]) -> Path:
    """The zoo's yolov3-tiny cfg with one class and this comparison's [net] keys, as darknet reads it."""
    text = zoo_cfg.read_text()
    keys = {"batch": batch, "subdivisions": 1, "width": size, "height": size, "learning_rate": lr,
            "burn_in": burn_in, "max_batches": iterations, "steps": f"{steps[0]},{steps[1]}"}
    for key, value in keys.items():
        text, n = re.subn(rf"^{key}\s*=.*$", f"{key}={value}", text, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"{zoo_cfg}: no [net] key {key}")
    text = text.replace("filters=255", "filters=18").replace("classes=80", "classes=1")
    out.write_text(text)
    return out


def run_darknet(darknet: Path, folder: Path, data: Path, cfg: Path, start: Path, every: int, last: int) -> float:
    """One darknet training run in `folder` (skipped when its last checkpoint is there); its wall seconds."""
    if (folder / "backup" / f"net_{last}.weights").exists():
        return json.loads((folder / "run.json").read_text())["wall_s"] if (folder / "run.json").exists() else 0.0
    (folder / "backup").mkdir(parents=True, exist_ok=True)
    lines = [line for line in data.read_text().splitlines() if not line.startswith(("backup", "saveweights"))]
    lines += [f"backup = {folder / 'backup'}/", f"saveweights = {every}"]
    (folder / "obj.data").write_text("\n".join(lines) + "\n")
    (folder / "net.cfg").write_text(cfg.read_text())
    t0 = time.time()
    with open(folder / "train.log", "w") as log:
        subprocess.run([str(darknet), "detector", "train", "obj.data", "net.cfg", str(start), "-dont_show",
                        "-clear", "-nocolor"], cwd=folder, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = round(time.time() - t0, 1)
    (folder / "run.json").write_text(json.dumps({"wall_s": wall}) + "\n")
    return wall


def run_darktune(folder: Path, data: Path, zoo, args, seed: int, extra: list[str]) -> float:
    """One darktune training run with the comparison's keys (skipped when it finished); its wall seconds."""
    summary = folder / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "finished":
        return json.loads(summary.read_text()).get("elapsed_seconds", 0.0)
    entry = [sys.executable, "-m", "darktune", "train"]
    if extra[:1] == ["@darknet-cpu"]:  # darktune with darknet-CPU's arithmetic (benchmarks/darknet_cpu_train.py)
        entry, extra = [sys.executable, str(Path(__file__).with_name("darknet_cpu_train.py"))], extra[1:]
    cmd = [*entry, "--cfg", str(zoo.cfg), "--data", str(data),
           "--weights", str(zoo.weights), "--upto", str(UPTO), "--iterations", str(args.iterations),
           "--batch", str(args.batch), "--subdivisions", "1", "--size", str(args.size), "--lr", str(args.lr),
           "--burn-in", str(args.burn_in), "--steps", ",".join(map(str, args.steps)), "--multi-scale",
           "--eval-every", str(args.every), "--eval-weights", "--seed", str(seed), "--out", str(folder),
           "--overwrite", "--no-progress", *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.time()
    with open(folder.parent / f"{folder.name}.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return round(time.time() - t0, 1)


def score(cfg: Path, checkpoints: dict[int, Path], data: Path, size: int) -> dict[int, dict]:
    """{iteration: {"darknet": AP50, "pycocotools": AP50}} of each checkpoint, scored by darktune."""
    from real_data import coco_ap50

    from darktune.eval.evaluate import load_eval_set, load_for_data, predict
    from darktune.eval.metrics import evaluate

    es = load_eval_set(data, (size, size))
    out = {}
    for iteration, path in sorted(checkpoints.items()):
        model, _, _ = load_for_data(cfg, path, data, size=size, class_map="none")
        dets = predict(model, es)
        out[iteration] = {"darknet": evaluate(dets, es.truths, len(es.names), protocol="darknet",
                                              class_names=es.names).map,
                          "pycocotools": coco_ap50(dets, es.truths)}
    return out


def darknet_checkpoints(folder: Path) -> dict[int, Path]:
    found = {}
    for path in (folder / "backup").glob("net_*.weights"):
        tail = path.stem.split("_")[-1]
        if tail.isdigit():
            found[int(tail)] = path
    return found


def darktune_checkpoints(folder: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p for p in (folder / "weights").glob("iter_*.weights")}


def darknet_losses(log: Path) -> dict[int, float]:
    """darknet's printed loss per iteration (`  K: loss, avg loss, rate, ...`)."""
    found = {}
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"\s*(\d+): ([-\d.naif]+), ", line)
        if m:
            found[int(m.group(1))] = float(m.group(2))
    return found


def summarise(runs: list[dict[int, dict]], key: str) -> dict[int, dict]:
    """Mean, min and max over the runs at every iteration all of them scored."""
    common = set.intersection(*(set(r) for r in runs)) if runs else set()
    return {i: {"mean": statistics.fmean(r[i][key] for r in runs), "min": min(r[i][key] for r in runs),
                "max": max(r[i][key] for r in runs)} for i in sorted(common)}


def chart(means: dict[str, dict[int, dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for tool, rows in means.items():
        if not rows:
            continue
        style = "o-" if tool == "darknet" else "s-"
        xs = sorted(rows)
        ax.plot(xs, [100 * rows[i]["mean"] for i in xs], style, label=f"{tool} (mean)")
        ax.fill_between(xs, [100 * rows[i]["min"] for i in xs], [100 * rows[i]["max"] for i in xs], alpha=0.2)
    ax.set_xlabel("iterations")
    ax.set_ylabel("AP50 (%), darknet protocol")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--darknet", type=Path, help="the darknet binary (without it: only runs already on disk)")
    p.add_argument("--runs", type=int, default=3, help="runs of each tool (darktune seeds 0..RUNS-1)")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--burn-in", type=int, default=20)
    p.add_argument("--steps", type=lambda s: tuple(int(v) for v in s.split(",")), default=None,
                   help="lr steps (default 80%% and 90%% of --iterations, as timed runs)")
    p.add_argument("--every", type=int, default=20, help="checkpoint every N iterations")
    p.add_argument("--threads", type=int, default=0, help="darktune's torch threads (default torch's)")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=FLAGS",
                   help="another darktune arm with extra train flags, e.g. 'prior=--obj-prior 0.01' (repeatable)")
    p.add_argument("--no-default-arm", action="store_true", help="only the --arm arms (and darknet's)")
    p.add_argument("--out", type=Path, help="default DARKTUNE_REALDATA/runs/darknet_curves_<size>")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.steps = args.steps or (int(0.8 * args.iterations), int(0.9 * args.iterations))

    from real_sets import prepare

    from darktune.darknet import zoo
    from darktune.darknet.weights import partial
    from darktune.machine import cpu_name, load_average

    data = prepare("trees")
    out = args.out or data.parent.parent / "runs" / f"darknet_curves_{args.size}"
    out.mkdir(parents=True, exist_ok=True)
    fetched = zoo.cached("yolov3-tiny") or zoo.fetch("yolov3-tiny")
    cfg = net_cfg(fetched.cfg, out / "net.cfg", size=args.size, batch=args.batch, iterations=args.iterations,
                  lr=args.lr, burn_in=args.burn_in, steps=args.steps)
    start = out / "yolov3-tiny.conv.15"
    if not start.exists():
        partial(fetched.cfg, fetched.weights, start, UPTO)
    load_before = load_average()
    arms = {} if args.no_default_arm else {"darktune": []}
    for item in args.arm:
        name, _, flags = item.partition("=")
        arms[f"darktune_{name}"] = flags.split()
    walls: dict[str, list[float]] = {"darknet": [], **{arm: [] for arm in arms}}
    scores: dict[str, list[dict[int, dict]]] = {"darknet": [], **{arm: [] for arm in arms}}
    losses = []
    for r in range(args.runs):
        folder = out / f"darknet_r{r}"
        if args.darknet:
            walls["darknet"].append(run_darknet(args.darknet, folder, data, cfg, start, args.every,
                                                args.iterations))
        if (folder / "backup").exists():
            scores["darknet"].append(score(folder / "net.cfg", darknet_checkpoints(folder), data, args.size))
            losses.append(darknet_losses(folder / "train.log"))
        for arm, extra in arms.items():
            folder = out / f"{arm}_s{r}"
            walls[arm].append(run_darktune(folder, data, fetched, args, r, extra))
            scores[arm].append(score(folder / "model.cfg", darktune_checkpoints(folder), data, args.size))
    means = {tool: summarise(runs, "darknet") for tool, runs in scores.items()}
    coco = {tool: summarise(runs, "pycocotools") for tool, runs in scores.items()}
    report = {
        "date": str(date.today()), "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
        "load_before": load_before, "load_after": load_average(),
        "command": " ".join(["benchmarks/darknet_curves.py", *(argv if argv is not None else sys.argv[1:])]),
        "arms": {"darknet": "darknet detector train (AlexeyAB, CPU build)",
                 **{arm: " ".join(extra) or "darktune train, defaults" for arm, extra in arms.items()}},
        "schedule": {"size": args.size, "batch": args.batch, "iterations": args.iterations, "lr": args.lr,
                     "burn_in": args.burn_in, "steps": list(args.steps), "multi_scale": True},
        "wall_s": walls, "runs": scores, "mean_darknet_protocol": means, "mean_pycocotools": coco,
        "darknet_non_finite_losses": [sum(1 for v in run.values() if v != v or abs(v) == float("inf"))
                                      for run in losses],
    }
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    if means["darknet"] and any(means[arm] for arm in arms):
        chart(means, out / "curves.png", f"trees, yolov3-tiny conv.15, {args.size} px, batch {args.batch}, "
              f"{args.runs} runs each, burn-in {args.burn_in}, multi-scale")
    if args.json:
        print(json.dumps(report))
        return 0
    tools = list(means)
    print("iteration  " + "  ".join(f"{t + ' mean [min, max]':>28}" for t in tools) + "  (AP50, darknet protocol)")
    for i in sorted(set().union(*(set(m) for m in means.values()))):
        cells = []
        for tool in tools:
            m = means[tool].get(i)
            cells.append(f"{100 * m['mean']:5.1f} [{100 * m['min']:4.1f}, {100 * m['max']:4.1f}]" if m else " " * 18)
        print(f"{i:9d}  " + "  ".join(f"{c:>28}" for c in cells))
    print(f"load average {report['load_before']} -> {report['load_after']}; {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
