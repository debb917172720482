"""Dataset checks: every image decoded once and fully, every label line validated; results cached by content.

Owns `check_dataset` (one split of an obj.data, the trainer's entry), `scan_folder` (any folder of images and
labels), `CheckReport`, and the check cache. Image-level checks live in `formats.image` (sniffing, header
size, decompression-bomb guard, truncation, decode), label-level ones in `dataset.read_label_file`.
An image with any error (its own or its label file's) is skipped and counted; warnings keep it. A missing
label file means "no objects": allowed, counted and listed. A listed image that is not on disk is counted as
missing (and skipped), not as an image without a label file.

Cache: `$DARKTUNE_HOME/cache/checks/<key>.json` (DARKTUNE_HOME defaults to ~/.cache/darktune), never the
dataset folder, JSON only. An entry is reused when image and label have the size and mtime they had when
checked and were not modified within 2 s before the check (such "racy" entries are re-hashed, as git does);
otherwise when their sha256 matches. A damaged cache file or entry is rebuilt and counted. Limit of the stat
fast path: an edit that keeps the file size and puts the old mtime back (`touch -r`) is not seen; --no-cache
checks everything again. (Hashing every file on every run would cost what the cache saves.)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darktune.data.dataset import Problem
from darktune.data.formats.yolo import label_path_for, MAX_LABEL_BYTES, parse_label_bytes, read_names, read_obj_data
from darktune.files import read_regular
from darktune.data.formats.image import IMAGE_EXTENSIONS, MAX_PIXELS, inspect_image_bytes, sniff_format
from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes, darktune_home
from darktune.plural import plural

CACHE_VERSION = 3  # 2: EXIF orientation warnings, label files that are not regular files; 3: "1 class" wording
_RACY_NS = 2_000_000_000
MAX_IMAGE_BYTES = 1 << 30
_LIST_FILES = {"obj.names", "classes.txt", "train.txt", "valid.txt", "test.txt", "obj.data"}


@dataclass
class ImageResult:
    """The check of one image and its label file."""

    image: Path
    labels: np.ndarray
    problems: list[Problem]
    has_label: bool | None  # None: not looked for (the image itself could not be used)
    found: bool = True  # False: the image is not on disk

    @property
    def usable(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


@dataclass
class CheckReport:
    """What a check found. `good` holds the usable images with their labels (n, 5) [cls, cx, cy, w, h]."""

    source: str
    split: str | None
    n_classes: int | None
    good: list[tuple[Path, np.ndarray]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_images: int = 0
    n_skipped_images: int = 0  # not usable, the missing ones included
    n_missing_images: int = 0
    n_missing_labels: int = 0
    missing_images: list[Path] = field(default_factory=list)
    unlabelled_images: list[Path] = field(default_factory=list)  # found, without a label file
    n_boxes: int = 0
    n_cache_hits: int = 0
    n_cache_rebuilt: int = 0

    @property
    def n_errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def n_warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    def to_dict(self) -> dict:
        keys = ("source", "split", "n_classes", "n_images", "n_skipped_images", "n_missing_images",
                "n_missing_labels", "n_boxes", "n_errors", "n_warnings", "n_cache_hits", "n_cache_rebuilt")
        out = {k: getattr(self, k) for k in keys}
        out["n_good_images"] = len(self.good)
        out["problems"] = [p.to_dict() for p in self.problems]
        out["missing_images"] = [str(p) for p in self.missing_images]
        out["images_without_label_file"] = [str(p) for p in self.unlabelled_images]
        return out

    def summary(self) -> str:
        split = f" [{self.split}]" if self.split else ""
        missing = f" ({self.n_missing_images} not found)" if self.n_missing_images else ""
        return (f"{self.source}{split}: {plural(self.n_images, 'image')}, {len(self.good)} good, "
                f"{self.n_skipped_images} skipped{missing}, {self.n_missing_labels} without label file, "
                f"{plural(self.n_boxes, 'box')}, {plural(self.n_errors, 'error')}, "
                f"{plural(self.n_warnings, 'warning')} (cache: {self.n_cache_hits} reused)")

    def unlabelled_lines(self, limit: int = 20) -> list[str]:
        """The images without a label file (used as images without objects), at most `limit` named."""
        split = f" [{self.split}]" if self.split else ""
        lines = [f"{p}: no label file (used as an image without objects)" for p in self.unlabelled_images[:limit]]
        if len(self.unlabelled_images) > limit:
            lines.append(f"{self.source}{split}: ... and {len(self.unlabelled_images) - limit} more images "
                         "without a label file (all of them in --json)")
        return lines


# ------------------------------------------------------------------------------------------------ cache


def cache_path(key_text: str) -> Path:
    return darktune_home() / "cache" / "checks" / (hashlib.sha256(key_text.encode()).hexdigest()[:32] + ".json")


def _load_cache(path: Path) -> tuple[dict, int]:
    """(entries, 1 if a damaged file was found else 0)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, 0
    except (OSError, ValueError):
        return {}, 1
    if isinstance(doc, dict) and isinstance(doc.get("version"), int) and doc["version"] < CACHE_VERSION:
        return {}, 0  # an older darktune's cache: checked again, not damaged
    if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION or not isinstance(doc.get("entries"), dict):
        return {}, 1
    return doc["entries"], 0


def _save_cache(path: Path, entries: dict) -> None:
    """Atomic write; a cache that cannot be written (read-only home) is simply not kept."""
    try:
        atomic_write_bytes(path, json.dumps({"version": CACHE_VERSION, "entries": entries}).encode("utf-8"))
    except (OSError, DarktuneError):
        pass


def _stat_sig(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _result_from_entry(image: Path, entry: dict) -> ImageResult:
    r = entry["result"]
    labels = np.asarray(r["labels"], np.float32).reshape(-1, 5)
    problems = [Problem(str(p[0]), p[1], str(p[2]), str(p[3])) for p in r["problems"]]
    return ImageResult(image, labels, problems, bool(r["has_label"]))


def _entry_from_result(res: ImageResult, sigs: tuple, shas: tuple, checked_ns: int) -> dict:
    return {"sigs": list(sigs), "shas": list(shas), "checked_ns": checked_ns,
            "result": {"labels": res.labels.tolist(), "has_label": res.has_label,
                       "problems": [[p.path, p.line, p.reason, p.severity] for p in res.problems]}}


# ------------------------------------------------------------------------------------------ one image


def _no_rows() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def _read(path: Path | None, what: str, max_bytes: int) -> bytes | str | None:
    """The file's bytes, or why it cannot be read (a str), or None when there is no file."""
    if path is None:
        return None
    try:
        return read_regular(path, what, max_bytes)
    except DarktuneError as exc:
        return str(exc).removeprefix(f"{path}: ")


def _check_bytes(image: Path, data: bytes, label: Path | None, label_data: bytes | str | None,
                 n_classes: int | None, max_pixels: int) -> ImageResult:
    _, found, _ = inspect_image_bytes(image, data, max_pixels)
    problems = [Problem(str(image), None, reason, severity) for severity, reason in found]
    labels = _no_rows()
    if label is not None:
        if not isinstance(label_data, bytes):
            problems.append(Problem(str(label), None, label_data or "cannot read label file"))
        else:
            labels, label_problems = parse_label_bytes(label_data, label, n_classes)
            problems += label_problems
    return ImageResult(image, labels, problems, label is not None)


def _reuse(image: Path, entry: dict | None, sigs: list, shas: list | None) -> tuple[ImageResult | None, bool]:
    """(cached result or None, entry damaged?). Without shas: the stat fast path (not for racy entries)."""
    if entry is None:
        return None, False
    try:
        if shas is None:
            newest = max(sigs[1][1], sigs[2][1] if sigs[2] else 0)
            if entry["sigs"] != sigs or entry["checked_ns"] <= newest + _RACY_NS:
                return None, False
        elif entry["shas"] != shas or entry["sigs"][0] != sigs[0]:
            return None, False
        r = entry["result"]
        labels = np.asarray(r["labels"], np.float32).reshape(-1, 5)
        problems = [Problem(str(p[0]), p[1], str(p[2]), str(p[3])) for p in r["problems"]]
        return ImageResult(image, labels, problems, bool(r["has_label"])), False
    except (KeyError, TypeError, IndexError, ValueError):
        return None, True


def check_one(image: Path, n_classes: int | None, entry: dict | None = None, max_pixels: int = MAX_PIXELS
              ) -> tuple[ImageResult, dict | None, str]:
    """Check one image and its label (reusing `entry` when still valid).
    -> (result, cache entry to keep or None, "hit" | "miss" | "damaged")."""
    img_sig = _stat_sig(image)
    if img_sig is None or not image.is_file():
        reason = "image not found" if img_sig is None else "image is not a regular file (not read)"
        res = ImageResult(image, _no_rows(), [Problem(str(image), None, reason)], None, found=img_sig is not None)
        return res, None, "miss"
    if img_sig[0] > MAX_IMAGE_BYTES:
        reason = f"file of {img_sig[0]} bytes is larger than {MAX_IMAGE_BYTES} (not read)"
        return ImageResult(image, _no_rows(), [Problem(str(image), None, reason)], None), None, "miss"
    label = label_path_for(image)
    if label.exists() and not label.is_file():  # a folder, device or FIFO: never read (it could block)
        return _special_label(image, label, n_classes, max_pixels), None, "miss"
    label = label if label.is_file() else None
    sigs = [str(label) if label else None, img_sig, _stat_sig(label) if label else None]
    cached, damaged = _reuse(image, entry, sigs, None)
    if cached is not None:
        return cached, entry, "hit"
    checked_ns = time.time_ns()
    data, label_data = _read(image, "image", MAX_IMAGE_BYTES), _read(label, "label file", MAX_LABEL_BYTES)
    if not isinstance(data, bytes):
        return ImageResult(image, _no_rows(), [Problem(str(image), None, data)], None), None, "miss"
    shas = [_sha(data), _sha(label_data if isinstance(label_data, bytes) else None)]
    cached, damaged2 = _reuse(image, None if damaged else entry, sigs, shas)
    if cached is not None:
        return cached, {**entry, "sigs": sigs, "checked_ns": checked_ns}, "hit"
    res = _check_bytes(image, data, label, label_data, n_classes, max_pixels)
    entry = {"sigs": sigs, "shas": shas, "checked_ns": checked_ns,
             "result": {"labels": res.labels.tolist(), "has_label": res.has_label,
                        "problems": [[p.path, p.line, p.reason, p.severity] for p in res.problems]}}
    return res, entry, "damaged" if damaged or damaged2 else "miss"


def _special_label(image: Path, label: Path, n_classes: int | None, max_pixels: int) -> ImageResult:
    """The image checked as usual; its label file, a device or FIFO, is reported and not read."""
    data = _read(image, "image", MAX_IMAGE_BYTES)
    if not isinstance(data, bytes):
        return ImageResult(image, _no_rows(), [Problem(str(image), None, data)], None)
    res = _check_bytes(image, data, None, None, n_classes, max_pixels)
    res.problems.append(Problem(str(label), None, "label file is not a regular file (not read; the image is used "
                                                  "without labels)", "warning"))
    res.has_label = True
    return res


# ------------------------------------------------------------------------------------------ many images


def check_images(images: list[Path], n_classes: int | None, *, source: str, split: str | None = None,
                 cache_key: str | None = None, workers: int | None = None, progress: bool = True,
                 max_pixels: int = MAX_PIXELS) -> CheckReport:
    """Check every image (in threads: decoding releases the GIL) and build the report.
    cache_key None: no cache. Images listed twice are checked once (warning)."""
    from tqdm import tqdm

    report = CheckReport(source, split, n_classes)
    unique: list[Path] = []
    seen: set[str] = set()
    for img in images:
        if str(img) in seen:
            report.problems.append(Problem(str(img), None, "listed twice (checked once)", "warning"))
            continue
        seen.add(str(img))
        unique.append(Path(img))
    path = cache_path(cache_key) if cache_key is not None else None
    entries, report.n_cache_rebuilt = _load_cache(path) if path else ({}, 0)
    new_entries: dict = {}

    def work(img: Path):
        return check_one(img, n_classes, entries.get(str(img)), max_pixels)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(work, unique)
        for img, (res, entry, status) in tqdm(zip(unique, results), total=len(unique), desc="check",
                                               unit="img", file=sys.stderr, disable=not progress, leave=False):
            _add_result(report, res)
            report.n_cache_hits += status == "hit"
            report.n_cache_rebuilt += status == "damaged"
            if entry is not None:
                new_entries[str(img)] = entry
    if path is not None:
        _save_cache(path, new_entries)
    return report


def _add_result(report: CheckReport, res: ImageResult) -> None:
    report.n_images += 1
    report.problems += res.problems
    if not res.found:
        report.n_missing_images += 1
        report.missing_images.append(res.image)
    elif res.has_label is False:
        report.n_missing_labels += 1
        report.unlabelled_images.append(res.image)
    if res.usable:
        report.good.append((res.image, res.labels))
        report.n_boxes += len(res.labels)
    else:
        report.n_skipped_images += 1


def _strict(report: CheckReport, path: Path) -> None:
    if report.problems:
        shown = "\n  ".join(str(p) for p in report.problems[:20])
        more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise DarktuneError(f"{plural(len(report.problems), 'problem')} (strict mode):\n  {shown}{more}",
                            path=str(path))


def check_dataset(obj_data_path: str | Path, split: str = "train", strict: bool = False, cache: bool = True,
                  *, workers: int | None = None, progress: bool = True, max_pixels: int = MAX_PIXELS) -> CheckReport:
    """Check one split ("train" or "valid") of an obj.data. Bad images are skipped and counted; strict: any
    problem (warnings included) raises DarktuneError listing them."""
    if split not in ("train", "valid"):
        raise DarktuneError(f"split must be 'train' or 'valid', got {split!r}")
    od = read_obj_data(obj_data_path)
    images = od.train if split == "train" else od.valid
    key = f"v{CACHE_VERSION}|obj.data|{od.path.resolve()}|{split}|{od.n_classes}|{max_pixels}" if cache else None
    report = check_images(images, od.n_classes, source=str(od.path), split=split, cache_key=key,
                          workers=workers, progress=progress, max_pixels=max_pixels)
    if strict:
        _strict(report, od.path)
    return report


def split_overlap(obj_data_path: str | Path) -> list[Problem]:
    """Images listed in both train and valid (a leak that inflates validation figures): one warning each."""
    od = read_obj_data(obj_data_path)
    valid = {str(p.resolve()) for p in od.valid}
    return [Problem(str(p), None, "listed in both train and valid", "warning")
            for p in dict.fromkeys(od.train) if str(p.resolve()) in valid]


def _folder_classes(folder: Path) -> int | None:
    for name in ("obj.names", "classes.txt"):
        if (folder / name).is_file():
            return len(read_names(folder / name))
    return None


def _folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image candidates, .txt files): image extensions, plus any other file whose content sniffs as image."""
    images, texts = [], []
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        ext = p.suffix.lower()
        if ext == ".txt":
            if p.name not in _LIST_FILES:
                texts.append(p)
        elif ext in IMAGE_EXTENSIONS:
            images.append(p)
        elif p.name not in _LIST_FILES:
            try:
                with open(p, "rb") as f:
                    if sniff_format(f.read(32)):
                        images.append(p)
            except OSError:
                pass
    return images, texts


def scan_folder(folder: str | Path, n_classes: int | None = None, strict: bool = False, cache: bool = True, *,
                workers: int | None = None, progress: bool = True, max_pixels: int = MAX_PIXELS) -> CheckReport:
    """Check every image under `folder` (recursive; image extensions, or image content under another name)
    with its darknet label. n_classes from the argument, else obj.names / classes.txt in the folder, else
    unchecked. Label files without an image are warnings."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DarktuneError("not a folder", path=str(folder))
    n_classes = n_classes if n_classes is not None else _folder_classes(folder)
    images, texts = _folder_files(folder)
    key = f"v{CACHE_VERSION}|folder|{folder.resolve()}|{n_classes}|{max_pixels}" if cache else None
    report = check_images(images, n_classes, source=str(folder), cache_key=key, workers=workers,
                          progress=progress, max_pixels=max_pixels)
    used = {str(label_path_for(p)) for p in images}
    report.problems += [Problem(str(t), None, "label file without an image", "warning")
                        for t in texts if str(t) not in used]
    if strict:
        _strict(report, folder)
    return report
