"""`darktune data synth`: write the synthetic windows benchmark (domain set or target set).

darktune/cli/data.py calls `add_synth_parser(data_subparsers)`; this module imports only argparse at module
level (the generator is imported when the command runs).
"""

from __future__ import annotations

import argparse


def add_synth_parser(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `synth` subcommand to the `darktune data` subparsers."""
    p = data_subparsers.add_parser(
        "synth",
        help="write a synthetic windows data set (domain: Open Images CSV; target: darknet layout)",
        description="Write a seeded, deterministic synthetic windows data set. 'domain': facades with windows "
        "of many styles, Open Images CSV, with a fraction of IsGroupOf boxes around rows/blocks of windows. "
        "'target': one fixed window design among unlabelled distractors, darknet layout (obj.data with "
        "absolute paths, train.txt, valid.txt).",
    )
    p.add_argument("--kind", choices=("domain", "target"), required=True, help="which set to write")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--size", default="416", help="image size: 416 (square) or WIDTHxHEIGHT (default 416)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--group-fraction", type=float, default=0.2,
                   help="domain: fraction of boxes that are IsGroupOf boxes (default 0.2)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="target: fraction of images in valid.txt (default 0.2)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_synth)
    return p


def run_synth(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from darktune.data.synth import make_domain_set, make_target_set

    start = time.perf_counter()
    if args.kind == "domain":
        path = make_domain_set(args.out, args.n, args.size, args.seed, group_fraction=args.group_fraction,
                               progress=not args.json)
    else:
        path = make_target_set(args.out, args.n, args.size, args.seed, val_fraction=args.val_fraction,
                               progress=not args.json)
    seconds = time.perf_counter() - start
    info = json.loads((Path(args.out) / "synth.json").read_text())
    result = {"kind": args.kind, "path": str(path), "seconds": round(seconds, 3), **info["stats"]}
    if args.json:
        print(json.dumps(result))
    else:
        figures = ", ".join(f"{k} {v}" for k, v in info["stats"].items())
        print(f"wrote {args.kind} set {path} ({figures}) in {seconds:.1f} s")
    return 0
