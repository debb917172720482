"""What the frozen-prefix caches save: evaluation (`evaluate.PrefixCache`) and training without augmentation
(`train_cache.FeatureCache`), each against the same work done without the cache, in one run.

    .venv/bin/python benchmarks/bench_prefix_cache.py [--size 128] [--images 80] [--repeats 5] [--json]

Setting: the quick profile's (yolov3-tiny with the COCO weights, 1 thread, channels_last, batch 8, 1 class),
on a synthetic target set written under a temporary folder.
- evaluation: `predict` on `--images` validation images, median of `--repeats` calls, for freeze 0 / 13 / 20;
- training: `--iterations` iterations of a freeze 13 / 20 run without augmentation (no evaluation), cache on
  and off alternately, median training seconds of `--repeats` runs each; the last weights of the two must be
  byte-identical (the script fails otherwise).
Figures are medians with the ratio plain / cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=80, help="validation images (evaluation)")
    ap.add_argument("--iterations", type=int, default=60, help="training iterations per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from darktune.darknet import zoo
    from darktune.darknet.cfg import parse_cfg
    from darktune.data.synth.sets import make_target_set
    from darktune.eval.evaluate import PrefixCache, load_eval_set, predict
    from darktune.train.freeze import set_frozen
    from darktune.darknet.model import Darknet
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train
    from darktune.darknet.weights import load_weights

    torch.set_num_threads(1)
    coco = zoo.fetch("yolov3-tiny", progress=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="darktune-prefix-bench-") as tmp:
        n_train = 160
        data = make_target_set(Path(tmp) / "set", n_train + args.images, args.size, seed=0,
                               val_fraction=args.images / (n_train + args.images), close_up=(0.45, 0.75),
                               window_scale=(0.14, 0.40))
        es = load_eval_set(data, (args.size, args.size), "valid")
        net = Darknet(parse_cfg(coco.cfg).with_classes(1))
        load_weights(net, coco.weights, upto=15)
        net.to(memory_format=torch.channels_last)
        for freeze in (0, 13, 20):
            set_frozen(net, range(freeze))
            times = {}
            for name, cache in (("plain", None), ("cached", PrefixCache())):
                predict(net, es, 32, channels_last=True, prefix_cache=cache)  # warm-up (and the cache's build)
                ts = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    predict(net, es, 32, channels_last=True, prefix_cache=cache)
                    ts.append(time.perf_counter() - t)
                times[name] = statistics.median(ts)
            rows.append({"what": f"evaluation, {len(es)} images, freeze {freeze}", "plain_s": times["plain"],
                         "cached_s": times["cached"], "ratio": times["plain"] / times["cached"]})
        for freeze in (13, 20):
            secs: dict[str, list[float]] = {"plain": [], "cached": []}
            weights = {}
            for r in range(args.repeats):
                for name in ("cached", "plain") if r % 2 else ("plain", "cached"):
                    out = Path(tmp) / f"run-{freeze}-{name}-{r}"
                    res = train(TrainConfig(cfg=str(coco.cfg), data=str(data), weights=str(coco.weights), upto=15,
                                            freeze=freeze, iterations=args.iterations, batch=8, size=args.size,
                                            burn_in=20, augment=False, threads=1, out=str(out),
                                            checkpoint_every=10_000, feature_cache=name == "cached"),
                                progress=False)
                    secs[name].append(res.train_seconds)
                    weights[name] = (out / "weights" / "last.weights").read_bytes()
            if weights["plain"] != weights["cached"]:
                print(f"FAIL: freeze {freeze}: the cached run's weights differ from the plain run's", file=sys.stderr)
                return 1
            plain, cached = statistics.median(secs["plain"]), statistics.median(secs["cached"])
            rows.append({"what": f"training, {args.iterations} iterations x 8 images, freeze {freeze} "
                                 "(weights byte-identical)", "plain_s": plain, "cached_s": cached,
                         "ratio": plain / cached})
    if args.json:
        print(json.dumps({"size": args.size, "repeats": args.repeats, "rows": rows}, indent=1))
    else:
        print(f"{'what':<70} {'plain s':>8} {'cached s':>9} {'ratio':>6}   (size {args.size}, medians of "
              f"{args.repeats})")
        for row in rows:
            print(f"{row['what']:<70} {row['plain_s']:8.3f} {row['cached_s']:9.3f} {row['ratio']:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
