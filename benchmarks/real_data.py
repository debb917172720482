"""Real-image benchmark: darktune trained on real annotated images for a wall-clock budget, mAP against iterations
and seconds under two protocols (darknet's `detector map` AP50 and pycocotools' AP at IoU 0.5).

    .venv/bin/python benchmarks/real_data.py --set trees --minutes 15 [--model yolov3-tiny] [--json]
    .venv/bin/python benchmarks/real_data.py --set mot17 --minutes 5 --option freeze=13 --option lr=0.002

The sets (benchmarks/real_sets.py) come from packages of the index (deepforest 2.1.0 tree crowns: train on one
site, validate on the others; MOT17-mini persons from the boxmot 23.0.0 sdist, split by frame order) and are
prepared once under DARKTUNE_REALDATA (default /work/cache/realdata/<set>/). The run starts from the model's COCO
backbone (yolov3-tiny.conv.15 / yolov4-tiny.conv.29, new heads) with darktune's defaults for a `--time` budget,
changed by `--option KEY=VALUE` (TrainConfig fields). It keeps the weights of every evaluation
(`eval_weights`), scores each afterwards with pycocotools too, and writes OUT/results.json and OUT/curve.png
(mAP against iterations and against training seconds). Every figure carries the load average before and after
the run: the machine may be shared, so compare only figures measured under a similar load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

UPTO = {"yolov3-tiny": 15, "yolov4-tiny": 29}  # the darknet `partial` cuts of the study (conv.15, conv.29)
# ultralytics 8.4, YOLO26n from COCO, its defaults, time=0.25 h on a 2-core CPU: measured by the author of
# darktune issue 24 on the same validation crops, pycocotools AP at IoU 0.5 (not re-measured here)
ULTRALYTICS_REFERENCE = {"trees": {"ap50": 0.336, "minutes": 15, "images_seen": 2645,
                                   "note": "ultralytics 8.4 YOLO26n, time=0.25 h, measured by issue 24's author"}}


def coco_ap50(dets: list, truths: list) -> float:
    """pycocotools AP at IoU 0.5 (all areas, maxDets 100) of detections (n, 6) [x1, y1, x2, y2, score, class]
    against truths (m, 5) [class, x1, y1, x2, y2], one class."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (d, t) in enumerate(zip(dets, truths)):
        images.append({"id": i + 1})
        for row in t:
            w, h = float(row[3] - row[1]), float(row[4] - row[2])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                "bbox": [float(row[1]), float(row[2]), w, h], "area": w * h})
        for row in d:
            results.append({"image_id": i + 1, "category_id": 1, "score": float(row[4]),
                            "bbox": [float(row[0]), float(row[1]), float(row[2] - row[0]), float(row[3] - row[1])]})
    if not results:
        return 0.0
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(0.0, float(ev.stats[1]))


def score_weights(run_dir: Path, data: Path, size: int) -> dict[int, dict]:
    """{iteration: {"darknet": AP50, "pycocotools": AP50}} of every RUN/weights/iter_K.weights."""
    from darktune.eval.evaluate import load_eval_set, load_for_data, predict
    from darktune.eval.metrics import evaluate

    out = {}
    es = load_eval_set(data, (size, size))
    for path in sorted((run_dir / "weights").glob("iter_*.weights"), key=lambda p: int(p.stem.split("_")[1])):
        model, _, _ = load_for_data(run_dir / "model.cfg", path, data, size=size, class_map="none")
        dets = predict(model, es)
        dn = evaluate(dets, es.truths, len(es.names), protocol="darknet", class_names=es.names).map
        out[int(path.stem.split("_")[1])] = {"darknet": dn, "pycocotools": coco_ap50(dets, es.truths)}
    return out


def _option_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[text.lower()]
    if "," in text:
        return [_option_value(v) for v in text.split(",")]
    return text


def build_config(args, data: Path, out: Path):
    from darktune.darknet import zoo
    from darktune.train.config import TrainConfig

    fetched = zoo.cached(args.model) or zoo.fetch(args.model)
    options = dict(cfg=str(fetched.cfg), data=str(data), weights=str(fetched.weights), upto=UPTO[args.model],
                   time=f"{args.minutes:g}m", out=str(out), seed=args.seed, eval_weights=True)
    for item in args.option:
        key, _, value = item.partition("=")
        options[key.replace("-", "_")] = _option_value(value)
    return TrainConfig(**options)


def curve(run_dir: Path, scores: dict[int, dict]) -> list[dict]:
    """One row per evaluation: iteration, training and elapsed seconds, images seen, both AP50s."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "map" in r and r["iteration"] in scores:
            rows.append({"iteration": r["iteration"], "train_s": r["train_s"], "elapsed_s": r["elapsed_s"],
                         "images": r["iteration"] * summary["batch"], **scores[r["iteration"]]})
    return rows


def chart(rows: list[dict], path: Path, title: str, reference: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for ax, key, label in ((axes[0], "iteration", "iterations"), (axes[1], "elapsed_s", "seconds (wall clock)")):
        for proto, style in (("darknet", "o-"), ("pycocotools", "s--")):
            ax.plot([r[key] for r in rows], [100 * r[proto] for r in rows], style, label=f"AP50 ({proto})")
        ax.set_xlabel(label)
        ax.set_ylabel("AP50 (%)")
        ax.grid(alpha=0.3)
    if reference:
        axes[1].axhline(100 * reference["ap50"], color="grey", ls=":", label=f"ultralytics {reference['minutes']} min")
        axes[1].axvline(60 * reference["minutes"], color="grey", lw=0.5)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import os

    from real_sets import prepare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=("trees", "mot17"), default="trees")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget (darktune train --time)")
    p.add_argument("--model", choices=tuple(UPTO), default="yolov3-tiny")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field, e.g. freeze=13 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default DARKTUNE_REALDATA/runs/<set>_<model>_<minutes>m_s<seed>)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from darktune.machine import cpu_name, load_average
    from darktune.train.loop import train

    data = prepare(args.set)
    out = Path(args.out or data.parent.parent / "runs" / f"{args.set}_{args.model}_{args.minutes:g}m_s{args.seed}")
    config = build_config(args, data, out)
    load_before, t0 = load_average(), time.time()
    result = train(config, progress=False)
    load_after = load_average()
    summary = json.loads((out / "summary.json").read_text())
    scores = score_weights(out, data, summary["size"][0])
    rows = curve(out, scores)
    reference = ULTRALYTICS_REFERENCE.get(args.set) if args.model else None
    report = {
        "set": args.set, "model": args.model, "minutes": args.minutes, "seed": args.seed, "date": str(date.today()),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "load_before": load_before, "load_after": load_after,
        "command": " ".join(["benchmarks/real_data.py", *(argv if argv is not None else sys.argv[1:])]),
        "status": result.status, "iterations": result.iterations_done, "elapsed_s": round(time.time() - t0, 1),
        "train_s": result.train_seconds, "images_per_s": result.images_per_s, "skipped_steps": result.skipped_steps,
        "recoveries": summary.get("recoveries"), "config": summary["config"], "curve": rows,
        "final": rows[-1] if rows else None, "best_pycocotools": max((r["pycocotools"] for r in rows), default=None),
        "ultralytics_reference": reference,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    chart(rows, out / "curve.png", f"{args.set}, {args.model}, {args.minutes:g} min, load {load_before}-{load_after}",
          reference)
    if args.json:
        print(json.dumps(report))
    else:
        for r in rows:
            print(f"iteration {r['iteration']:5d}  {r['elapsed_s']:7.1f} s  {r['images']:6d} images  "
                  f"AP50 darknet {100 * r['darknet']:5.1f}  pycocotools {100 * r['pycocotools']:5.1f}")
        print(f"{result.status}: {result.iterations_done} iterations, {report['elapsed_s']} s, load average "
              f"{load_before} -> {load_after}; {out / 'results.json'}, {out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
