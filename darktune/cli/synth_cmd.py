"""`darktune data synth`: write the synthetic windows benchmark (domain set or target set).

darktune/cli/data.py calls `add_synth_parser(data_subparsers)`; this module imports only argparse at module
level (the generator is imported when the command runs).
"""

from __future__ import annotations

import argparse

from darktune.numbers import FRACTION, SEED, SHARE, integer


def add_synth_parser(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `synth` subcommand to the `darktune data` subparsers."""
    p = data_subparsers.add_parser(
        "synth",
        help="write a synthetic windows data set (domain: Open Images CSV; target: darknet layout)",
        description="Write a seeded, deterministic synthetic windows data set. 'domain': facades with windows "
        "of many styles, Open Images CSV, with a fraction of IsGroupOf boxes around rows/blocks of windows. "
        "'target': one fixed window design among unlabelled distractors, darknet layout (obj.data with "
        "absolute paths, train.txt, valid.txt). Output bytes depend only on the arguments, not on --workers.",
    )
    p.add_argument("kind_arg", nargs="?", choices=("domain", "target"), metavar="KIND",
                   help="domain or target (or give --kind)")
    p.add_argument("--kind", choices=("domain", "target"), help="which set to write (same as KIND)")
    p.add_argument("--n", type=integer(1, 10_000_000), required=True, help="number of images")
    p.add_argument("--size", default="416", help="image size: 416 (square) or WIDTHxHEIGHT (default 416)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--group-fraction", type=FRACTION, default=0.2,
                   help="domain: fraction of boxes that are IsGroupOf boxes (default 0.2)")
    p.add_argument("--val-fraction", type=SHARE, default=0.2,
                   help="target: fraction of images in valid.txt (default 0.2)")
    p.add_argument("--distractors", type=integer(0, 1000), default=None, metavar="N",
                   help="target: at most N distractor windows per image, a seeded choice; the others are left "
                        "out (blank wall); 0 gives the target design only (default: no cap, about 5 to 6 per image)")
    p.add_argument("--window-scale", default=None, metavar="LO,HI",
                   help="range of a building's window width as fractions of the image's shorter side, "
                        "drawn log-uniformly (default 0.07,0.32; larger: closer views, fewer and bigger windows)")
    p.add_argument("--close-up", default=None, metavar="LO,HI",
                   help="every image a close-up: the scene is drawn 3x larger and cropped around one of its windows, "
                        "which spans LO..HI of the crop's width (default: whole scenes)")
    p.add_argument("--near-miss", type=FRACTION, default=None, metavar="P",
                   help="target: chance that a distractor is a near miss of the target design (one or two "
                        "details changed) rather than any other design (default 0.5)")
    p.add_argument("--workers", type=integer(1, 1024), default=1, metavar="N",
                   help="processes drawing images (default 1); the files are the same for any N")
    p.add_argument("--json", action="store_true", help="print the result as JSON (with images_per_s)")
    p.set_defaults(func=run_synth)
    return p


def run_synth(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from darktune.data.synth.sets import (
        check_close_up,
        check_window_scale,
        make_domain_set,
        make_target_set,
    )
    from darktune.errors import DarktuneError

    if args.kind and args.kind_arg and args.kind != args.kind_arg:
        raise DarktuneError(f"KIND '{args.kind_arg}' and --kind '{args.kind}' disagree")
    kind = args.kind or args.kind_arg
    if kind is None:
        raise DarktuneError("say which set to write: `darktune data synth target ...` or `... domain ...`")
    for flag, value in (("--distractors", args.distractors), ("--near-miss", args.near_miss)):
        if kind == "domain" and value is not None:
            raise DarktuneError(f"{flag} is a setting of the target set")
    extra = {}
    if args.window_scale is not None:
        extra["window_scale"] = check_window_scale(args.window_scale.split(","))
    if args.close_up is not None:
        extra["close_up"] = check_close_up(args.close_up.split(","))
    target_only = {"near_miss": args.near_miss} if args.near_miss is not None else {}
    start = time.perf_counter()
    if kind == "domain":
        path = make_domain_set(args.out, args.n, args.size, args.seed, group_fraction=args.group_fraction,
                               progress=not args.json, workers=args.workers, **extra)
    else:
        path = make_target_set(args.out, args.n, args.size, args.seed, val_fraction=args.val_fraction,
                               progress=not args.json, distractors=args.distractors, workers=args.workers, **extra,
                               **target_only)
    seconds = time.perf_counter() - start
    info = json.loads((Path(args.out) / "synth.json").read_text())
    result = {"kind": kind, "path": str(path), "seconds": round(seconds, 3), "workers": args.workers,
              "images_per_s": round(args.n / seconds, 2) if seconds > 0 else None, **info["stats"]}
    if args.json:
        print(json.dumps(result))
    else:
        figures = ", ".join(f"{k} {v}" for k, v in info["stats"].items())
        print(f"wrote {kind} set {path} ({figures}) in {seconds:.1f} s")
    return 0
