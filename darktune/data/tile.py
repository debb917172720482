"""Cutting large images into overlapping tiles: the tile grid, box clipping, and a tiled darknet dataset.

Small objects in large images (a 30 px tree crown in a 2,400 px orthophoto) shrink to a few pixels when the
whole image is resized to the network; cut into network-sized tiles they keep their pixels. One grid serves
training (`tile_dataset`), sliced detection (`darktune.deploy.sliced`) and whole-image mAP
(`darktune.eval.tiled`), so a model is trained, scored and run on the same tiles.

Rules of `tile_dataset`:
- the grid: tiles of `size` x `size` pixels, a stride of size - int(overlap * size); the last tile of a row or
  column is moved back to end at the image's edge (so every tile is whole); an image no larger than a tile
  along an axis has one tile along it, as long as the image;
- a box cut by a tile edge is kept, clipped to the tile, when at least `min_visible` of its area (default
  0.5) lies inside the tile, and dropped from that tile otherwise (counted);
- tiles with no box left are kept as negatives with probability `negatives` (default 0.1, seeded);
- an image no larger than a tile passes through unchanged (copied as it is, its boxes as they are);
- every tile remembers its source image and offset (tiles.json; tile paths relative to its folder); the
  source files are only read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from darktune.data.dataset import Box, Dataset, ImageRecord
from darktune.data.formats.image import known_size, read_image
from darktune.data.formats.yolo import label_line, split_indices
from darktune.errors import DarktuneError
from darktune.files import copy_file, output_folder, write_text
from darktune.plural import plural

MIN_VISIBLE = 0.5  # default share of a box's area that must lie inside a tile for the box to be kept there
NEGATIVES = 0.1  # default share of empty tiles kept as negatives


def tile_stride(size: int, overlap: float) -> int:
    """Pixels between the starts of neighbouring tiles: size - int(overlap * size), at least 1."""
    return max(1, size - int(overlap * size))


def check_tiling(size: int, overlap: float, what: str = "--size") -> None:
    """A tile size of at least 32 px and an overlap in [0, 1); DarktuneError naming the flag otherwise."""
    if not isinstance(size, int) or size < 32:
        raise DarktuneError(f"{what} must be a whole number of pixels, at least 32, got {size}")
    if not 0.0 <= overlap < 1.0:  # also refuses nan
        raise DarktuneError(f"--overlap must be at least 0 and less than 1, got {overlap:g}")


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def tile_grid(width: int, height: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Tiles (x1, y1, x2, y2) in pixels of a width x height image, row by row. Each is size x size (or the
    image's length along an axis no longer than size); the last of a row or column ends at the image edge."""
    stride = tile_stride(size, overlap)
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def fits_one_tile(width: int, height: int, size: int) -> bool:
    return width <= size and height <= size


def clip_to_tile(boxes: np.ndarray, tile: tuple[int, int, int, int], min_visible: float = MIN_VISIBLE
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (n, 4) x1, y1, x2, y2 in image pixels against one tile: (clipped boxes in tile pixels, index of
    each kept box, whether each input box touches the tile but was dropped). A box is kept when the share of
    its area inside the tile is at least `min_visible`; a box wholly outside is neither kept nor dropped."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    tx1, ty1, tx2, ty2 = tile
    ix1, iy1 = np.maximum(b[:, 0], tx1), np.maximum(b[:, 1], ty1)
    ix2, iy2 = np.minimum(b[:, 2], tx2), np.minimum(b[:, 3], ty2)
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    share = np.where(area > 0, inter / np.where(area > 0, area, 1.0), 0.0)
    keep = (inter > 0) & (share >= min_visible - 1e-12)
    dropped = (inter > 0) & ~keep
    out = np.stack([ix1 - tx1, iy1 - ty1, ix2 - tx1, iy2 - ty1], 1)[keep]
    return out, np.nonzero(keep)[0], dropped


@dataclass
class TileCounts:
    """What `tile_dataset` did, for the summary."""

    n_sources: int = 0
    n_sources_tiled: int = 0
    n_sources_unchanged: int = 0
    n_tiles: int = 0
    n_tiles_with_boxes: int = 0
    n_empty_tiles: int = 0
    n_negatives_kept: int = 0
    n_boxes_in: int = 0
    n_boxes_out: int = 0
    n_boxes_clipped: int = 0
    n_box_cuts_dropped: int = 0  # a box dropped from one tile (less than min_visible inside); may be kept in another
    n_boxes_lost: int = 0  # boxes kept in no tile at all
    n_train: int = 0
    n_valid: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self, opts: "TileOptions", obj_data: Path) -> list[str]:
        """The text summary of `data tile`."""
        lines = [f"{plural(self.n_sources, 'image')}: {self.n_sources_tiled} cut into {plural(self.n_tiles, 'tile')} "
                 f"of {opts.size} px ({self.n_tiles_with_boxes} with boxes, {self.n_negatives_kept} of "
                 f"{self.n_empty_tiles} empty kept as negatives), {self.n_sources_unchanged} kept whole",
                 f"boxes: {self.n_boxes_in} in, {self.n_boxes_out} written ({self.n_boxes_clipped} clipped at a tile "
                 f"edge); {plural(self.n_box_cuts_dropped, 'cut')} with less than {opts.min_visible:g} inside "
                 f"dropped from a tile, {plural(self.n_boxes_lost, 'box', 'boxes')} in no tile",
                 f"wrote {obj_data}: {self.n_train} train, {self.n_valid} valid images"]
        if self.n_valid and not opts.tile_valid:
            lines.append(f"whole validation images, scored as detect --tile sees them: map --tile {opts.size} "
                         f"--overlap {opts.overlap:g}, or train --eval-tile {opts.size}")
        return lines


@dataclass
class TileOptions:
    """How `tile_dataset` cuts and splits; validated on construction."""

    size: int = 416
    overlap: float = 0.2
    min_visible: float = MIN_VISIBLE
    negatives: float = NEGATIVES
    val_fraction: float = 0.0
    tile_valid: bool = False  # False: validation images are kept whole (scored with sliced detection)
    seed: int = 0

    def __post_init__(self):
        check_tiling(self.size, self.overlap)
        if not 0.0 < self.min_visible <= 1.0:
            raise DarktuneError(f"--min-visible must be more than 0 and at most 1, got {self.min_visible:g}")
        if not 0.0 <= self.negatives <= 1.0:
            raise DarktuneError(f"--negatives must be between 0 and 1, got {self.negatives:g}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DarktuneError(f"--val-fraction must be at least 0 and less than 1, got {self.val_fraction:g}")


@dataclass
class _Writer:
    """Writes tiles and whole images into images/ of the output folder, with labels and manifest entries."""

    out: Path
    classes: list[str]
    manifest: list[dict] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def name(self, stem: str, suffix: str) -> Path:
        base, n = stem, 1
        while base.lower() in self.used:
            n += 1
            base = f"{stem}_{n}"
        self.used.add(base.lower())
        return self.out / "images" / (base + suffix)

    def labels(self, path: Path, boxes: list[Box]) -> None:
        index = {c: i for i, c in enumerate(self.classes)}
        write_text(path.with_suffix(".txt"), "".join(label_line(index[b.class_name], b) + "\n" for b in boxes))

    def entry(self, path: Path, rec: ImageRecord, tile, split: str, n_boxes: int) -> None:
        x1, y1, x2, y2 = tile
        self.manifest.append({"tile": str(path.relative_to(self.out)), "source": str(Path(rec.path).resolve()),
                              "x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1, "split": split,
                              "boxes": n_boxes})


def _safe_stem(path: Path) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "image"


def _write_tile(writer: _Writer, image: np.ndarray, rec: ImageRecord, tile, boxes: list[Box], split: str) -> Path:
    import cv2

    x1, y1, x2, y2 = tile
    suffix = Path(rec.path).suffix.lower()
    suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".png"
    path = writer.name(f"{_safe_stem(Path(rec.path))}_x{x1}_y{y1}", suffix)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[y1:y2, x1:x2]), params):
        raise DarktuneError("cannot write the tile (is the disk full?)", path=str(path))
    writer.labels(path, boxes)
    writer.entry(path, rec, tile, split, len(boxes))
    return path


def _tile_boxes(rec: ImageRecord, tile, w: int, h: int, opts: TileOptions, counts: TileCounts,
                seen: np.ndarray) -> list[Box]:
    """The boxes of `rec` inside `tile`, normalised to it; marks in `seen` the boxes kept."""
    px = np.array([[b.x1 * w, b.y1 * h, b.x2 * w, b.y2 * h] for b in rec.boxes], np.float64).reshape(-1, 4)
    clipped, kept, dropped = clip_to_tile(px, tile, opts.min_visible)
    tw, th = tile[2] - tile[0], tile[3] - tile[1]
    out = []
    for (x1, y1, x2, y2), i in zip(clipped, kept):
        box = rec.boxes[i]
        nx1, ny1, nx2, ny2 = x1 / tw, y1 / th, x2 / tw, y2 / th
        if nx2 - nx1 <= 1e-6 or ny2 - ny1 <= 1e-6:
            continue
        out.append(Box(box.class_name, max(0.0, nx1), max(0.0, ny1), min(1.0, nx2), min(1.0, ny2)))
        seen[i] = True
        inside = px[i, 0] >= tile[0] and px[i, 1] >= tile[1] and px[i, 2] <= tile[2] and px[i, 3] <= tile[3]
        counts.n_boxes_clipped += not inside
    counts.n_box_cuts_dropped += int(dropped.sum())
    return out


def _tile_one(writer: _Writer, rec: ImageRecord, split: str, opts: TileOptions, counts: TileCounts,
              rng: np.random.Generator) -> list[Path]:
    """Write the tiles of one image (or the image itself when it fits one tile); their paths."""
    w, h = known_size(rec)
    counts.n_sources += 1
    counts.n_boxes_in += len(rec.boxes)
    whole = fits_one_tile(w, h, opts.size) or (split == "valid" and not opts.tile_valid)
    if whole:
        counts.n_sources_unchanged += 1
        path = writer.name(_safe_stem(Path(rec.path)), Path(rec.path).suffix.lower())
        copy_file(Path(rec.path), path)
        writer.labels(path, rec.boxes)
        writer.entry(path, rec, (0, 0, w, h), split, len(rec.boxes))
        counts.n_boxes_out += len(rec.boxes)
        return [path]
    counts.n_sources_tiled += 1
    image = read_image(rec.path)
    if image.shape[:2] != (h, w):
        raise DarktuneError(f"image is {image.shape[1]}x{image.shape[0]}, its annotation says {w}x{h}",
                            path=str(rec.path))
    seen = np.zeros(len(rec.boxes), bool)
    paths = []
    for tile in tile_grid(w, h, opts.size, opts.overlap):
        boxes = _tile_boxes(rec, tile, w, h, opts, counts, seen)
        counts.n_tiles += 1
        if not boxes:
            counts.n_empty_tiles += 1
            if rng.random() >= opts.negatives:
                continue
            counts.n_negatives_kept += 1
        else:
            counts.n_tiles_with_boxes += 1
        counts.n_boxes_out += len(boxes)
        paths.append(_write_tile(writer, image, rec, tile, boxes, split))
    counts.n_boxes_lost += int((~seen).sum())
    return paths


def tile_dataset(dataset: Dataset, out_dir: str | Path, opts: TileOptions) -> tuple[Path, TileCounts]:
    """Write `dataset` cut into tiles as a darknet dataset in `out_dir` (a new or empty folder): images/ with
    a label .txt beside each tile, train.txt, valid.txt, obj.names, obj.data (written last) and tiles.json
    (each tile's source image, offset and size, and the options). The train/valid split is by source image
    (seeded), so no picture has tiles on both sides; validation images stay whole unless `opts.tile_valid`."""
    dataset.validate()
    if not dataset.images or not dataset.classes:
        raise DarktuneError("nothing to tile: the dataset has no images or no classes", path=str(out_dir))
    train_idx, valid_idx = split_indices(len(dataset.images), opts.val_fraction, opts.seed)
    split = {i: "train" for i in train_idx} | {i: "valid" for i in valid_idx}
    counts = TileCounts()
    rng = np.random.default_rng(opts.seed)
    lists: dict[str, list[Path]] = {"train": [], "valid": []}
    with output_folder(out_dir) as folder:
        out = folder.resolve()
        (out / "images").mkdir()
        writer = _Writer(out, list(dataset.classes))
        for i, rec in enumerate(dataset.images):
            lists[split[i]] += _tile_one(writer, rec, split[i], opts, counts, rng)
        counts.n_train, counts.n_valid = len(lists["train"]), len(lists["valid"])
        for name in ("train", "valid"):
            write_text(out / f"{name}.txt", "".join(f"{p}\n" for p in lists[name]))
        write_text(out / "obj.names", "".join(c + "\n" for c in dataset.classes))
        (out / "backup").mkdir(exist_ok=True)
        manifest = {"size": opts.size, "overlap": opts.overlap, "min_visible": opts.min_visible,
                    "negatives": opts.negatives, "tile_valid": opts.tile_valid, "seed": opts.seed,
                    "counts": counts.to_dict(), "tiles": writer.manifest}
        write_text(out / "tiles.json", json.dumps(manifest, indent=1) + "\n")
        obj_data = out / "obj.data"
        write_text(obj_data, f"classes={len(dataset.classes)}\ntrain={out / 'train.txt'}\n"
                             f"valid={out / 'valid.txt'}\nnames={out / 'obj.names'}\nbackup={out / 'backup'}\n")
    return obj_data, counts
