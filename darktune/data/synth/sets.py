"""Synthetic windows benchmark: writes seeded, bit-deterministic data sets of procedural facades.

- domain set (`make_domain_set`): windows of many styles, written as Open Images CSV (images/<ImageID>.jpg,
  boxes.csv, class-descriptions.csv). Like the study's Open Images "Window" set it is noisy: a fraction of the
  boxes are IsGroupOf=1 boxes drawn around a row or block of >= 2 windows, and then the member windows get no
  box of their own (a lazy annotator).
- target set (`make_target_set`): one fixed window design (synth_style.TARGET_STYLE) among unlabelled
  distractor windows, written in darknet layout (obj.data, obj.names, images/*.jpg with a .txt beside each,
  train.txt, valid.txt). obj.data and the list files hold ABSOLUTE paths, so darknet and darktune can be run
  from any working directory; move the set and regenerate (it is cheap and deterministic) rather than edit.

Image i of a set depends only on (seed, kind, i) and the generator version, so the same arguments give the
same bytes (with the same numpy and OpenCV builds), whatever the number of worker processes (`workers`:
images are drawn and written in parallel, the annotations are made in image order in this process). Speed,
one process: about 100 images/s at 160x160 and 17-30 at 416x416 on a 2-core x86 VM.

Target sets take `distractors`: at most that many distractor windows per image (a seeded choice; the others
are left out, blank wall), e.g. 0 for a set with the target design only; default: no cap (the layout's own
mix: 5.7 distractors per image in 200 images at 128x128, 5.0 in 60 at 416x416).

A finished set carries synth.json; asking again for the same set in the same folder reuses it; a different
set, or a non-empty folder without synth.json, is refused (nothing is deleted).
"""

from __future__ import annotations

import csv
import json
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from darktune.data.synth.scene import (
    NEAR_MISS,
    WINDOW_SCALE,
    WindowRecord,
    crop_close_up,
    render_scene,
)
from darktune.errors import DarktuneError

CLOSE_UP_RENDER = 3  # close-ups: the scene is drawn this many times larger, then cropped and resized
GENERATOR_VERSION = 1  # bump whenever the bytes written for a given seed change
WINDOW_LABEL = "/m/0d4v4"
OPEN_IMAGES_HEADER = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
                      "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
JPEG_QUALITY = 90
MIN_SIZE, MAX_SIZE = 32, 4096
_KIND_CODE = {"domain": 1, "target": 2}


def parse_size(size: int | str | tuple[int, int]) -> tuple[int, int]:
    """(width, height) from 416, "416", "416x320" or (416, 320); DarktuneError when out of range."""
    try:
        if isinstance(size, str):
            parts = size.lower().replace(",", "x").split("x")
            dims = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else None
        elif isinstance(size, (int, np.integer)):
            dims = (int(size), int(size))
        else:
            dims = (int(size[0]), int(size[1]))
    except (ValueError, TypeError, IndexError):
        dims = None
    if dims is None or not all(MIN_SIZE <= d <= MAX_SIZE for d in dims):
        raise DarktuneError(f"size must be WIDTH or WIDTHxHEIGHT with each in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    return dims


@dataclass(frozen=True)
class DomainBox:
    """One annotation of the domain set, in pixels (x0, y0, x1, y1)."""

    box: tuple[float, float, float, float]
    group: bool
    truncated: bool
    occluded: bool


def _group_candidates(recs: list[WindowRecord]) -> list[tuple[int, ...]]:
    """Indices of windows an annotator could lump together: runs of 2..4 in a row, and 2x2 blocks."""
    where = {(r.building, r.row, r.col): i for i, r in enumerate(recs)}
    cands = []
    for (b, row, col), i in where.items():
        run = [i]
        for k in range(1, 4):
            j = where.get((b, row, col + k))
            if j is None:
                break
            run.append(j)
            cands.append(tuple(run))
        block = [where.get(key) for key in ((b, row, col + 1), (b, row + 1, col), (b, row + 1, col + 1))]
        if all(j is not None for j in block):
            cands.append((i, *block))
    return sorted(cands)


def annotate_domain(recs: list[WindowRecord], rng: np.random.Generator, fraction: float,
                    totals: list[int]) -> list[DomainBox]:
    """Boxes for one domain image: groups are accepted while they bring the running share of group boxes
    over the whole set (totals = [group boxes, all boxes], updated in place) closer to `fraction`."""
    cands = _group_candidates(recs)
    used: set[int] = set()
    chosen: list[tuple[int, ...]] = []
    n_groups, n_boxes = totals
    grouped = 0

    def error(g: int, k: int) -> float:  # |group boxes - fraction * all boxes| if g groups hold k windows
        return abs(n_groups + g - fraction * (n_boxes + len(recs) - k + g))

    for ci in rng.permutation(len(cands)) if cands else []:
        members = cands[ci]
        if used.isdisjoint(members) and error(len(chosen) + 1, grouped + len(members)) < error(len(chosen), grouped):
            chosen.append(members)
            used.update(members)
            grouped += len(members)
    out = [DomainBox(r.box, False, r.truncated, r.occluded) for i, r in enumerate(recs) if i not in used]
    for members in chosen:
        boxes = np.array([recs[i].box for i in members])
        box = (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())
        out.append(DomainBox(tuple(box), True, any(recs[i].truncated for i in members),
                             any(recs[i].occluded for i in members)))
    totals[0] += len(chosen)
    totals[1] += len(out)
    return out


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DarktuneError("could not encode image", path=str(path))
    path.write_bytes(buf.tobytes())


def _prepare_out(out_dir: Path, params: dict) -> bool:
    """Make out_dir ready. True when it already holds exactly this set (nothing to do)."""
    marker = out_dir / "synth.json"
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise DarktuneError(f"unreadable synth.json ({exc})", path=str(marker)) from None
        if isinstance(old, dict) and old.get("params") == params:
            return True
        raise DarktuneError("holds a different synthetic set; choose another --out or delete it",
                            path=str(out_dir))
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DarktuneError("exists and is not an empty folder; choose another --out", path=str(out_dir))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    return False


def _check_common(n: int, seed: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DarktuneError(f"n must be a positive number of images, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DarktuneError(f"seed must be a non-negative integer, got {seed!r}")


def _fraction_range(value, what: str) -> tuple[float, float]:
    """(lo, hi) with 0 < lo <= hi <= 1, as floats, or a DarktuneError naming `what`."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise DarktuneError(f"{what} must be two numbers LO,HI, got {value!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise DarktuneError(f"{what} must satisfy 0 < LO <= HI <= 1, got {lo:g},{hi:g}")
    return lo, hi


def check_window_scale(window_scale) -> tuple[float, float]:
    return _fraction_range(window_scale, "window scale")


def check_close_up(close_up) -> tuple[float, float] | None:
    """None (whole scenes), or a checked (lo, hi)."""
    return None if close_up is None else _fraction_range(close_up, "close-up")


def _image_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _KIND_CODE[kind], int(index)])


def _check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise DarktuneError(f"workers must be a positive number of processes, got {workers!r}")
    return int(workers)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core: OpenCV's own threads would only contend


def draw_image(job: tuple) -> tuple[list[WindowRecord], dict]:
    """Draw image `index` of a set and write it as JPEG; returns its window records and the state of its random
    stream after drawing (the domain set's annotation goes on from there). A picklable job for a worker:
    (kind, seed, index, width, height, path, max_distractors, window_scale, near_miss, close_up). With
    `close_up` = (lo, hi), the scene is drawn CLOSE_UP_RENDER times larger and a crop around one of its windows,
    which spans lo..hi of the crop's width, is resized to width x height."""
    kind, seed, index, width, height, path, distractors, window_scale, near_miss, close_up = job
    rng = _image_rng(seed, kind, index)
    choice = np.random.default_rng([int(seed), _KIND_CODE[kind], int(index), 1]) if distractors is not None else None
    big = (width * CLOSE_UP_RENDER, height * CLOSE_UP_RENDER) if close_up else (width, height)
    img, recs = render_scene(rng, big[0], big[1], kind, max_distractors=distractors, choice_rng=choice,
                             window_scale=window_scale, near_miss=near_miss)
    if close_up:
        crop_rng = np.random.default_rng([int(seed), _KIND_CODE[kind], int(index), 2])
        img, recs = crop_close_up(img, recs, crop_rng, (width, height), close_up)
    _write_jpeg(Path(path), img)
    return recs, rng.bit_generator.state


def _drawn(jobs: list[tuple], workers: int, desc: str, progress: bool):
    """(records, random state) of every job, in order: in this process, or from `workers` processes."""
    import contextlib

    with contextlib.ExitStack() as stack:
        if workers <= 1 or len(jobs) < 2:
            results = map(draw_image, jobs)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the caller may hold torch or OpenCV threads that fork would copy in a broken state
            pool = stack.enter_context(ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)), initializer=_init_worker, mp_context=mp.get_context("spawn")))
            results = pool.map(draw_image, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))
        if progress:
            from tqdm import tqdm

            results = stack.enter_context(tqdm(results, total=len(jobs), desc=desc, unit="img", leave=False))
        try:
            yield from results
        except BrokenProcessPool:
            raise DarktuneError(f"a {desc} worker process died (out of memory?); try fewer workers") from None


def _generator(state: dict) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


def make_domain_set(out_dir: str | Path, n: int, size: int | str | tuple[int, int], seed: int,
                    group_fraction: float = 0.2, progress: bool = False, workers: int = 1,
                    window_scale: tuple[float, float] = WINDOW_SCALE,
                    close_up: tuple[float, float] | None = None) -> Path:
    """Write a domain set of n images; returns the path of boxes.csv. See the module docstring. `window_scale`,
    `close_up`: as for make_target_set."""
    _check_common(n, seed)
    window_scale = check_window_scale(window_scale)
    close_up = check_close_up(close_up)
    workers = _check_workers(workers)
    width, height = parse_size(size)
    if not 0.0 <= group_fraction < 1.0:
        raise DarktuneError(f"group fraction must be in [0, 1), got {group_fraction}")
    out = Path(out_dir)
    params = {"kind": "domain", "n": int(n), "size": [width, height], "seed": int(seed),
              "group_fraction": float(group_fraction), "version": GENERATOR_VERSION}
    if window_scale != WINDOW_SCALE:  # recorded only when not the default, so older sets are reused
        params["window_scale"] = list(window_scale)
    if close_up:
        params["close_up"] = list(close_up)
    if _prepare_out(out, params):
        return out / "boxes.csv"
    totals = [0, 0]
    rows = []
    ids = [f"{int(seed) & 0xFFFFFFFF:08x}{i:08x}" for i in range(n)]
    jobs = [("domain", int(seed), i, width, height, str(out / "images" / f"{ids[i]}.jpg"), None, window_scale,
             NEAR_MISS, close_up) for i in range(n)]
    for i, (recs, state) in enumerate(_drawn(jobs, workers, "synth domain", progress)):
        image_id = ids[i]
        for b in annotate_domain(recs, _generator(state), group_fraction, totals):
            x0, y0, x1, y1 = b.box
            rows.append([image_id, "synth", WINDOW_LABEL, "1", f"{x0 / width:.6f}", f"{x1 / width:.6f}",
                         f"{y0 / height:.6f}", f"{y1 / height:.6f}", int(b.occluded), int(b.truncated),
                         int(b.group), 0, 0])
    with open(out / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(OPEN_IMAGES_HEADER)
        writer.writerows(rows)
    (out / "class-descriptions.csv").write_text(f"{WINDOW_LABEL},Window\n")
    stats = {"images": int(n), "boxes": totals[1], "group_boxes": totals[0]}
    (out / "synth.json").write_text(json.dumps({"params": params, "stats": stats}, indent=1) + "\n")
    return out / "boxes.csv"


def _split(n: int, seed: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Seeded (train, valid) indices; at least one of each when n >= 2 and 0 < val_fraction."""
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng([int(seed), 99]).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def make_target_set(out_dir: str | Path, n: int, size: int | str | tuple[int, int], seed: int,
                    val_fraction: float = 0.2, progress: bool = False, distractors: int | None = None,
                    workers: int = 1, window_scale: tuple[float, float] = WINDOW_SCALE,
                    near_miss: float = NEAR_MISS, close_up: tuple[float, float] | None = None) -> Path:
    """Write a target set of n images in darknet layout; returns the path of obj.data. `distractors`: at most
    this many distractor windows per image (None: no cap). `window_scale` (lo, hi): range of a building's
    window width as a fraction of the shorter side (closer views: larger values). `near_miss`: chance that a
    distractor is a near miss of the target design (the rest are any other design). `close_up` (lo, hi): every
    image a close-up around one window that spans lo..hi of its width (the scene drawn larger and cropped);
    None: whole scenes."""
    _check_common(n, seed)
    workers = _check_workers(workers)
    width, height = parse_size(size)
    if not 0.0 <= val_fraction < 1.0:
        raise DarktuneError(f"val fraction must be in [0, 1), got {val_fraction}")
    if distractors is not None and (isinstance(distractors, bool) or not isinstance(distractors, (int, np.integer))
                                    or distractors < 0):
        raise DarktuneError(f"distractors must be a number of windows >= 0, got {distractors!r}")
    window_scale = check_window_scale(window_scale)
    close_up = check_close_up(close_up)
    if isinstance(near_miss, bool) or not isinstance(near_miss, (int, float)) or not 0.0 <= near_miss <= 1.0:
        raise DarktuneError(f"near-miss fraction must be in [0, 1], got {near_miss!r}")
    near_miss = float(near_miss)
    out = Path(out_dir)
    params = {"kind": "target", "n": int(n), "size": [width, height], "seed": int(seed),
              "val_fraction": float(val_fraction), "version": GENERATOR_VERSION}
    if distractors is not None:  # absent when not capped, so sets written before the option are reused
        params["distractors"] = int(distractors)
    if window_scale != WINDOW_SCALE:  # likewise recorded only when not the default
        params["window_scale"] = list(window_scale)
    if near_miss != NEAR_MISS:
        params["near_miss"] = near_miss
    if close_up:
        params["close_up"] = list(close_up)
    if _prepare_out(out, params):
        return out / "obj.data"
    root = out.resolve()
    paths, n_boxes, n_windows = [], 0, 0
    jobs = [("target", int(seed), i, width, height, str(root / "images" / f"{i:06d}.jpg"),
             None if distractors is None else int(distractors), window_scale, near_miss, close_up) for i in range(n)]
    for i, (recs, _) in enumerate(_drawn(jobs, workers, "synth target", progress)):
        stem = root / "images" / f"{i:06d}"
        lines = []
        for r in recs:
            if r.target:
                x0, y0, x1, y1 = r.box
                lines.append(f"0 {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                             f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n")
        stem.with_suffix(".txt").write_text("".join(lines))
        paths.append(str(stem.with_suffix(".jpg")))
        n_boxes += len(lines)
        n_windows += len(recs)
    train, valid = _split(n, seed, val_fraction)
    (root / "train.txt").write_text("".join(paths[i] + "\n" for i in train))
    (root / "valid.txt").write_text("".join(paths[i] + "\n" for i in valid))
    (root / "obj.names").write_text("window\n")
    (root / "obj.data").write_text(f"classes = 1\ntrain = {root / 'train.txt'}\nvalid = {root / 'valid.txt'}\n"
                                   f"names = {root / 'obj.names'}\nbackup = backup/\n")
    stats = {"images": int(n), "train": len(train), "valid": len(valid), "target_boxes": n_boxes,
             "distractor_windows": n_windows - n_boxes}
    (root / "synth.json").write_text(json.dumps({"params": params, "stats": stats}, indent=1) + "\n")
    return out / "obj.data"
