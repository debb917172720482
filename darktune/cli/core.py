"""Core commands: summary, partial, weights fetch/list."""

from __future__ import annotations

import argparse
import json

from darktune.numbers import COUNT, NET_SIZE, integer


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="darknet-style layer table, BFLOPs and parameters of a cfg")
    p.add_argument("cfg")
    p.add_argument("--size", type=NET_SIZE, help="network input size (square, a multiple of 32), default: the cfg's "
                                            "width/height")
    p.add_argument("--classes", type=COUNT, help="re-head the network for this many classes (>= 1) first")
    p.add_argument("--json", action="store_true", help="print JSON with layers, bflops, params")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("partial", help="write the first N layers' weights (darknet `partial`), seen reset to 0")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("out")
    p.add_argument("n", type=integer(1, 10_000), metavar="N")
    p.add_argument("--json", action="store_true", help="print what was written as JSON (out, layers, floats, "
                                                      "bytes)")
    p.set_defaults(func=cmd_partial)

    p = sub.add_parser("weights", help="known weights: fetch into the cache, list")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    f = wsub.add_parser("fetch", help="download (or import) and verify a known model; print the paths")
    f.add_argument("model", help="e.g. yolov3-tiny")
    f.add_argument("--from", dest="files", nargs="+", metavar="FILE",
                   help="import local copies instead of downloading (verified the same way)")
    f.add_argument("--json", action="store_true", help="print the result as JSON")
    f.set_defaults(func=cmd_weights_fetch)
    ls = wsub.add_parser("list", help="known models and whether they are cached")
    ls.add_argument("--json", action="store_true", help="print the result as JSON")
    ls.set_defaults(func=cmd_weights_list)


def _load_spec(args):
    from darktune.darknet.cfg import parse_cfg
    from darktune.errors import DarktuneError

    classes, size = getattr(args, "classes", None), getattr(args, "size", None)
    if classes is not None and classes < 1:
        raise DarktuneError(f"--classes must be at least 1, got {classes}")
    if size is not None:  # before the cfg: a bad size is the option's fault, not a layer's
        from darktune.darknet.load import check_size

        check_size(size)
    spec = parse_cfg(args.cfg)
    if classes is not None:
        spec = spec.with_classes(classes)
    if size is not None:
        spec = spec.with_size(size)
    return spec


def cmd_summary(args) -> int:
    from darktune.darknet.summary import format_summary, summarize

    summary = summarize(_load_spec(args))
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def cmd_partial(args) -> int:
    from darktune.darknet.weights import partial

    out, floats = partial(args.cfg, args.weights, args.out, args.n)
    size = out.stat().st_size  # header (16 or 20 bytes, by the source's version) + 4 bytes a float
    if args.json:
        print(json.dumps({"cfg": str(args.cfg), "weights": str(args.weights), "out": str(out), "layers": args.n,
                          "first_layer": 0, "last_layer": args.n - 1, "floats": floats, "bytes": size,
                          "seen": 0}))
    else:
        print(f"wrote layers 0..{args.n - 1} ({floats:,} floats, {size:,} bytes) to {out}")
    return 0


def cmd_weights_fetch(args) -> int:
    from darktune.darknet import zoo

    result = zoo.import_files(args.model, args.files) if args.files else zoo.fetch(args.model)
    if args.json:
        print(json.dumps({"model": result.model, "source": result.source,
                          "paths": {k: str(v) for k, v in result.paths.items()}}))
    else:
        print(f"{result.model} ({result.source}):")
        for name, path in result.paths.items():
            print(f"  {name:<22} {path}")
    return 0


def cmd_weights_list(args) -> int:
    from darktune.darknet import zoo

    rows = [{"model": name, "cached": zoo.cached(name) is not None, "notes": m.notes,
             "folder": str(zoo.darktune_home() / name)} for name, m in zoo.KNOWN.items()]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['model']:<14} {'cached' if r['cached'] else 'not cached':<11} {r['folder']}  {r['notes']}")
    return 0
