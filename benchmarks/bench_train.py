"""Training throughput: darktune's training loop (CPU loader, and --gpu-augment: uint8 cache + augmentation of
whole batches on the device) vs the bare forward+backward+step of the same model, and freeze N vs freeze 0
(medians of interleaved repeats, ratios from the same run). Same as `darktune bench train`.

    .venv/bin/python benchmarks/bench_train.py --sizes 416,160 --batch 8 [--freeze 0] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from darktune.train.bench import run_bench_train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="416,160")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--freeze", type=int, default=13, help="frozen layers to compare with freeze 0 (0: none)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in both cases")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    report = run_bench_train(device=args.device, sizes=[int(s) for s in args.sizes.split(",")], batch=args.batch,
                             iterations=args.iterations, repeats=args.repeats, freeze=args.freeze, amp=args.amp,
                             threads=args.threads, progress=not args.json)
    print(json.dumps(report) if args.json else "\n".join(report["lines"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
