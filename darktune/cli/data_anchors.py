"""`darktune data anchors SRC --cfg IN.cfg --out OUT.cfg`: the data's k-means anchors written into a copy of a cfg.

Registered by darktune.cli.data (which adds the dataset-source arguments and hands over its source loader), so
this module imports no other command module.
"""

from __future__ import annotations

import argparse
import json

from darktune.numbers import NET_SIZE, SEED


def add_anchors_parser(sub, sources_help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "anchors", help="write the data's k-means anchors into a copy of a cfg",
        description="k-means anchors of the data's boxes (IoU distance, darknet calc_anchors; as `data stats`) "
                    "written into a copy of --cfg: every [yolo] section gets the anchors and num, each head keeps "
                    "its anchor count, and the masks follow darknet's order (the smallest anchors to the head with "
                    "the finest grid: 26x26 mask=0,1,2 and 13x13 mask=3,4,5 in yolov3-tiny). Only those lines "
                    "change; --cfg itself is never modified. The weights' shapes do not depend on anchors, so "
                    "COCO weights still load into the new cfg.",
        epilog=sources_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, metavar="IN.cfg", help="the cfg to start from (read only)")
    p.add_argument("--out", required=True, metavar="OUT.cfg", help="the cfg to write")
    p.add_argument("--size", type=NET_SIZE, metavar="S",
                   help="network size the anchors are for, in pixels (default: the cfg's width and height); "
                        "train at the same --size")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the k-means (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.cfg")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_anchors)
    return p


def cmd_anchors(args) -> int:
    import numpy as np

    from darktune.darknet.anchors import anchor_count, write_cfg_with_anchors
    from darktune.darknet.cfg import parse_cfg
    from darktune.darknet.load import check_size
    from darktune.data.stats import box_shapes, images_on_disk, kmeans_anchors, wh_iou
    from darktune.errors import DarktuneError

    spec = parse_cfg(args.cfg)
    if not spec.yolo_indices:
        raise DarktuneError("no [yolo] layer: nothing takes anchors", path=args.cfg)
    size = (check_size(args.size), check_size(args.size)) if args.size else (spec.net.width, spec.net.height)
    dataset, _ = args.load_sources(args)
    dataset, missing = images_on_disk(dataset)
    wh = box_shapes(dataset) * np.asarray(size, np.float64)
    k = anchor_count(spec)
    anchors, mean_iou = kmeans_anchors(wh, k, args.seed)
    first = spec.layers[spec.yolo_indices[0]]
    before = np.asarray(first.anchors, np.float64).reshape(-1, 2)
    iou_before = float(wh_iou(wh, before).max(1).mean()) if len(wh) else None
    report = write_cfg_with_anchors(args.cfg, anchors, args.out, args.overwrite)
    result = {"cfg": args.cfg, "out": args.out, "size": list(size), "boxes": len(wh), "anchors": report["anchors"],
              "mean_iou": round(float(mean_iou), 4),
              "mean_iou_before": None if iou_before is None else round(iou_before, 4), "heads": report["heads"],
              "missing_images": len(missing)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{len(wh)} boxes, {k} anchors at {size[0]}x{size[1]}: {report['anchors']}")
    print(f"mean IoU of each box with its best anchor: {mean_iou:.4f} (the cfg's anchors: {iou_before:.4f})")
    for head in report["heads"]:
        print(f"  [yolo] layer {head['layer']}: mask {','.join(map(str, head['mask']))}"
              + (f" (was {','.join(map(str, head['mask_before']))})" if head["mask"] != head["mask_before"] else ""))
    if missing:
        print(f"{len(missing)} images not on disk were left out")
    if args.size and (spec.net.width, spec.net.height) != size:
        print(f"note: the cfg's [net] says {spec.net.width}x{spec.net.height}; train with --size {args.size}")
    print(f"wrote {args.out}")
    return 0
