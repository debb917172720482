"""`darktune detect`: run a detector on images (more sources and backends may be added here)."""

from __future__ import annotations

import argparse
import json
import sys


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect objects in images (and videos/cameras with --backend)")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files")
    p.add_argument("--cfg", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--names")
    p.add_argument("--thresh", type=float, default=0.25)
    p.add_argument("--nms", type=float, default=0.45)
    p.add_argument("--letterbox", action="store_true", help="keep aspect ratio (default: plain resize as darknet)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="folder for images with boxes drawn")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_detect)


def cmd_detect(args) -> int:
    from pathlib import Path

    import cv2

    from darktune.detect import detections_to_json, draw, load_torch_detector, read_image, read_names
    from darktune.errors import DarktuneError

    detector = load_torch_detector(args.cfg, args.weights, args.device)
    names = read_names(args.names, detector.model.spec.num_classes)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    records, failures = [], 0
    for source in args.sources:
        try:
            image = read_image(source)
        except DarktuneError as exc:
            print(f"darktune: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        dets = detector.detect([image], args.thresh, args.nms, args.letterbox)[0]
        records.append(detections_to_json(source, dets, names))
        if out_dir:
            cv2.imwrite(str(out_dir / (Path(source).stem + ".jpg")), draw(image, dets, names))
        if not args.json:
            print(f"{source}: {len(dets)} objects")
            for d in records[-1]["detections"]:
                print(f"  {d['name']}: {d['score'] * 100:.0f}%  box {d['box']}")
    if args.json:
        print(json.dumps(records))
    return 1 if failures else 0
