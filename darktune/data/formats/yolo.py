"""The darknet / YOLO layout on disk: reading it into a `Dataset` (an obj.data with names and train/valid lists,
or a folder of images with a label .txt beside each, classes from obj.names or classes.txt), writing a
`Dataset` as one (`write_darknet`), and the plain readers the trainer uses: `read_obj_data`, `read_names`,
`label_path_for`, `read_label_file` / `parse_label_bytes` (files are read and written through
`darktune.files`: regular files only, a full disk named, nothing half-written).

Darknet layout written here (AlexeyAB darknet finds each label beside its image):
    out/obj.data  out/obj.names  out/train.txt  out/valid.txt  out/backup/
    out/images/<name>.jpg  out/images/<name>.txt   (`class cx cy w h`, normalised)
"""

from __future__ import annotations

import codecs
import errno
import math
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darktune.data.dataset import (BOX_TOLERANCE, MIN_BOX_SIZE, Box, Dataset, ImageRecord, Problem,
                                   class_name_problem, place_images)
from darktune.data.formats.image import IMAGE_EXTENSIONS
from darktune.data.formats.records import clip_to_image
from darktune.errors import DarktuneError
from darktune.files import MAX_TEXT_BYTES, output_folder, read_regular, write_text
from darktune.plural import plural

MAX_LABEL_BYTES = 16 * 1024 * 1024
MAX_CLASS_DIGITS = 9  # a class id is an index into obj.names; longer would only feed int() a huge string
MAX_NUMBER_CHARS = 100  # a coordinate token longer than this is not a coordinate
_INT = re.compile(r"\+?[0-9]+")
_NO_ROWS = np.zeros((0, 5), np.float32)
_YAML_KEY = re.compile(r"[A-Za-z_][\w.-]*\s*:(\s|$)|---\s*$")  # `train: ...`, `names:`, a document start
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _folder_images(folder: Path) -> tuple[list[str], list[Path]]:
    for name in ("obj.names", "classes.txt"):
        if (folder / name).is_file():
            names = read_names(folder / name)
            break
    else:
        raise DarktuneError("no obj.data, obj.names or classes.txt in this folder", path=str(folder))
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return names, images


def not_an_image_file(path: Path) -> str | None:
    """Why an entry named like an image cannot be taken as one (a dangling or looping link, a folder, a device
    or FIFO), or None for a regular file. Such an entry is a counted, named skip, never dropped unsaid."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "image is a symlink loop (not read)"
        if path.is_symlink():
            return "image is a dangling symlink: its target is missing"
        if exc.errno == errno.ENOENT:
            return None  # a listed image not on disk: counted later as such (data stats leaves it out)
        return f"image cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "image is a folder, not a file (not read)"
    if not stat.S_ISREG(mode):
        return "image is not a regular file: a device or FIFO (not read)"
    return None


def read_yolo(src: str | Path, *, skip_bad: bool = False) -> Dataset:
    """Read a darknet dataset: `src` is an obj.data file, a folder holding obj.data, or a folder of images
    with labels and obj.names/classes.txt. Images of train and valid lists are merged (listed once).
    A bad label line raises DarktuneError (file:line); skip_bad: the image is skipped and counted instead."""
    src = Path(src)
    if src.is_file() or (src / "obj.data").is_file():
        od = read_obj_data(src)
        names, images = od.names, list(dict.fromkeys(od.train + od.valid))
    elif src.is_dir():
        names, images = _folder_images(src)
    else:
        raise DarktuneError("not found (expected obj.data or a dataset folder)", path=str(src))
    records, skipped = [], []
    for img in images:
        reason = not_an_image_file(img)
        if reason:  # whatever its label says, it is not an image import can copy: skipped and named
            skipped.append(Problem(str(img), None, reason))
            continue
        boxes, problems = _boxes_for(img, names)
        if any(p.severity == "error" for p in problems):
            if not skip_bad:
                p = problems[0]
                raise DarktuneError(p.reason, path=p.path, line=p.line)
            skipped += problems
            continue
        skipped += problems  # boxes clipped at the image edge (notes)
        records.append(ImageRecord(img, None, None, boxes))
    return Dataset(list(names), records, skipped)


def _boxes_for(image: Path, names: list[str]) -> tuple[list[Box], list[Problem]]:
    """Boxes of one image from its label file (none when there is no label file) and its problems: errors, or
    notes of boxes clipped at the image edge."""
    label = label_path_for(image)
    if not label.is_file():
        if label.exists():  # a folder, device or FIFO: an image whose labels cannot be read is not a negative
            return [], [Problem(str(label), None, "label file is not a regular file (not read)")]
        return [], []
    rows, problems = read_label_file(label, len(names), dtype=np.float64, tol=math.inf)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        return [], errors
    boxes, notes = [], []
    for cls, cx, cy, w, h in rows.tolist():  # a centre inside the image: past the edge is clipped (records.py)
        box, clip = clip_to_image(names[int(cls)], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2,
                                  f"cx={cx:g} cy={cy:g} w={w:g} h={h:g}")
        if clip:
            notes.append(Problem(str(label), None, clip, "warning"))
        if box is not None:
            boxes.append(box)
    return boxes, notes


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of range(n) into (train, valid), each sorted. At least one of each when 0 < f and n >= 2."""
    if not 0.0 <= val_fraction < 1.0:
        raise DarktuneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def label_line(class_id: int, box: Box) -> str:
    return f"{class_id} {box.cx:.8f} {box.cy:.8f} {box.w:.8f} {box.h:.8f}"


SOURCES_FILE = "image_sources.tsv"  # written beside obj.data: each image written and the file it came from


def write_darknet(dataset: Dataset, out_dir: str | Path, val_fraction: float = 0.1, seed: int = 0, *,
                  link: bool = False, split: tuple[list[int], list[int]] | None = None) -> Path:
    """Write `dataset` in the darknet layout (see module docstring) and return the path of obj.data.

    `split`: (train, valid) indices into dataset.images, instead of a seeded random split by `val_fraction`.
    `image_sources.tsv` maps each written image (`images/<name>`) to its source file, so an image renamed
    (two sources with one file name: `000001.jpg`, `000001_1.jpg`) keeps its origin (`read_image_sources`).

    Paths in obj.data and the list files are absolute, so darknet runs from any folder. A failure (a full
    disk, an unreadable image) is a DarktuneError naming the file, and the output folder is left as it was
    found (see `output_folder`); obj.data is written last, so its presence means a complete dataset."""
    dataset.validate()
    if not dataset.images or not dataset.classes:
        raise DarktuneError(f"nothing to write: the dataset has {plural(len(dataset.images), 'image')} and "
                            f"{plural(len(dataset.classes), 'class')}", path=str(out_dir))
    split_indices(len(dataset.images), val_fraction, seed)  # a bad fraction fails before anything is written
    if split is not None and sorted(split[0] + split[1]) != list(range(len(dataset.images))):
        raise DarktuneError("the split must list every image once, in train or in valid", path=str(out_dir))
    with output_folder(out_dir) as folder:
        out = folder.resolve()
        placed = place_images(dataset.images, out / "images", link=link)
        index = {c: i for i, c in enumerate(dataset.classes)}
        for rec, dst in zip(dataset.images, placed):
            write_text(dst.with_suffix(".txt"), "".join(label_line(index[b.class_name], b) + "\n" for b in rec.boxes))
        train, valid = split if split is not None else split_indices(len(placed), val_fraction, seed)
        write_text(out / SOURCES_FILE, "image\tsource\n" + "".join(
            f"images/{dst.name}\t{_tsv_cell(Path(rec.path).absolute())}\n" for rec, dst in zip(dataset.images, placed)))
        write_text(out / "train.txt", "".join(f"{placed[i]}\n" for i in train))
        write_text(out / "valid.txt", "".join(f"{placed[i]}\n" for i in valid))
        write_text(out / "obj.names", "".join(c + "\n" for c in dataset.classes))
        (out / "backup").mkdir(exist_ok=True)
        obj_data = out / "obj.data"
        write_text(obj_data, f"classes={len(dataset.classes)}\ntrain={out / 'train.txt'}\n"
                             f"valid={out / 'valid.txt'}\nnames={out / 'obj.names'}\nbackup={out / 'backup'}\n")
    return obj_data


def _tsv_cell(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def read_image_sources(out_dir: str | Path) -> list[tuple[str, str]]:
    """(written image, source path) rows of the image_sources.tsv of a dataset `write_darknet` wrote."""
    rows = []
    text = read_regular(Path(out_dir) / SOURCES_FILE, "image sources", MAX_TEXT_BYTES).decode("utf-8")
    for line in text.splitlines()[1:]:
        image, _, source = line.partition("\t")
        rows.append((image, re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m[1], m[1]), source)))
    return rows


def renamed_images(out_dir: str | Path) -> list[tuple[str, str]]:
    """The rows of image_sources.tsv whose image was written under another name than its source's."""
    return [(image, source) for image, source in read_image_sources(out_dir)
            if Path(image).name.lower() != Path(source).name.lower()]


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class ObjData:
    """A parsed obj.data: class names and the image lists, paths resolved."""

    path: Path
    names: list[str]
    train: list[Path]
    valid: list[Path]
    backup: Path | None = None

    @property
    def n_classes(self) -> int:
        return len(self.names)


def _resolve(value: str, bases: list[Path]) -> Path:
    """An absolute path as is; a relative one against each base in turn (first that exists), else the first."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return base / p
    return bases[0] / p


def _read_text(path: Path, what: str) -> str:
    data = read_regular(path, what, MAX_TEXT_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DarktuneError(f"{what} is not UTF-8 text (byte {exc.start})", path=str(path)) from None


def read_names(path: Path) -> list[str]:
    """Class names, one a line; trailing blank lines ignored, blank or duplicate names are errors."""
    lines = [line.strip() for line in _read_text(path, "names file").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, name in enumerate(lines, 1):
        if not name:
            raise DarktuneError("blank class name", path=str(path), line=i)
        if name in lines[: i - 1]:
            raise DarktuneError(f"duplicate class name {name!r}", path=str(path), line=i)
        reason = class_name_problem(name)
        if reason:
            raise DarktuneError(reason, path=str(path), line=i)
    if not lines:
        raise DarktuneError("names file lists no classes", path=str(path))
    return lines


def read_image_list(path: Path, extra_bases: list[Path]) -> list[Path]:
    """Image paths of a darknet list file; relative entries resolve against the list's folder, then the
    given bases (obj.data folder, current folder)."""
    bases = [path.parent, *extra_bases]
    return [_resolve(line.strip(), bases) for line in _read_text(path, "image list").splitlines() if line.strip()]


def read_obj_data(path: str | Path) -> ObjData:
    """Parse obj.data (or a folder holding one). Relative paths resolve against obj.data's folder first, then
    the current folder (darknet's own rule). `classes=` must agree with the names file."""
    path = Path(path)
    if path.is_dir():
        path = path / "obj.data"
    values: dict[str, tuple[str, int]] = {}
    for i, raw in enumerate(_read_text(path, "obj.data").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            if _YAML_KEY.match(line):
                raise DarktuneError(f"{line[:40]!r} looks like an Ultralytics data.yaml, which is not supported: "
                                    "obj.data has 'key = value' lines. To convert the dataset, write its class "
                                    "names one a line to classes.txt in its folder and run 'darktune data import "
                                    "FOLDER --out DIR'", path=str(path), line=i)
            raise DarktuneError(f"expected 'key = value', got {line[:60]!r}", path=str(path), line=i)
        key, value = (s.strip() for s in line.split("=", 1))
        values[key.lower()] = (value, i)
    bases = [path.parent.resolve(), Path.cwd()]
    for key in ("names", "train"):
        if not values.get(key, ("",))[0]:
            raise DarktuneError(f"missing '{key} = ...'", path=str(path))
    names = read_names(_resolve(values["names"][0], bases))
    if "classes" in values:
        text, line = values["classes"]
        if not _INT.fullmatch(text) or int(text) != len(names):
            raise DarktuneError(f"classes={text} but the names file lists {plural(len(names), 'class')}",
                                path=str(path), line=line)
    train = read_image_list(_resolve(values["train"][0], bases), bases)
    valid = read_image_list(_resolve(values["valid"][0], bases), bases) if values.get("valid", ("",))[0] else []
    backup = _resolve(values["backup"][0], bases) if values.get("backup", ("",))[0] else None
    return ObjData(path, names, train, valid, backup)


def label_path_for(image_path: str | Path) -> Path:
    """Darknet's rule: an `images` or `JPEGImages` folder in the path replaced by `labels` when that label
    file exists, else the label beside the image; the extension becomes .txt either way."""
    p = Path(image_path)
    parts = p.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("images", "JPEGImages"):
            candidate = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
            if candidate.is_file():
                return candidate
    return p.with_suffix(".txt")


def parse_label_line(line: str, n_classes: int | None, tol: float = BOX_TOLERANCE) -> tuple[list[float] | None, str]:
    """One stripped, non-blank label line -> ([cls, cx, cy, w, h], "") or (None, reason)."""
    if "," in line:
        return None, "commas in label line (darknet expects 5 numbers separated by spaces)"
    tokens = line.split()
    if len(tokens) != 5:
        return None, f"expected 5 fields 'class cx cy w h', got {len(tokens)}"
    if not _INT.fullmatch(tokens[0]):
        return None, f"class {tokens[0][:20]!r} is not a non-negative integer"
    if len(tokens[0].lstrip("+0")) > MAX_CLASS_DIGITS:  # int() of a huge string is slow, or refused past 4300
        return None, f"class {tokens[0][:20]!r}... ({len(tokens[0])} digits) out of range"
    cls = int(tokens[0])
    if n_classes is not None and cls >= n_classes:
        return None, f"class {cls} out of range (dataset has {plural(n_classes, 'class')}: 0..{n_classes - 1})"
    values = []
    for name, tok in zip(("cx", "cy", "w", "h"), tokens[1:]):
        if len(tok) > MAX_NUMBER_CHARS:
            return None, f"{name} {tok[:20]!r}... is {len(tok)} characters long, not a coordinate"
        v = float(tok) if _FLOAT.fullmatch(tok) else math.nan
        if not math.isfinite(v):
            return None, f"{name} {tok[:20]!r} is not a finite number"
        values.append(v)
    cx, cy, w, h = values
    if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
        return None, f"centre ({cx}, {cy}) outside [0, 1]"
    if not (MIN_BOX_SIZE <= w <= 1.0 and MIN_BOX_SIZE <= h <= 1.0):
        return None, f"size ({w}, {h}) not in [{MIN_BOX_SIZE}, 1]"
    if cx - w / 2 < -tol or cx + w / 2 > 1 + tol or cy - h / 2 < -tol or cy + h / 2 > 1 + tol:
        return None, f"box (cx={cx}, cy={cy}, w={w}, h={h}) extends outside the image"
    return [float(cls), cx, cy, w, h], ""


def read_label_file(path: str | Path, n_classes: int | None, dtype=np.float32,
                    tol: float = BOX_TOLERANCE) -> tuple[np.ndarray, list[Problem]]:
    """Read a darknet label file -> (rows (n, 5) float32 [cls, cx, cy, w, h] of the valid lines, problems).

    Never raises for bad content: every bad line is an error Problem (file, line, reason); a UTF-8 BOM and
    exact duplicate lines are warnings (BOM ignored, duplicates dropped). Blank lines are fine."""
    path = Path(path)
    try:
        data = read_regular(path, "label file", MAX_LABEL_BYTES)
    except DarktuneError as exc:
        return _NO_ROWS.copy(), [Problem(str(path), None, str(exc).removeprefix(f"{path}: "))]
    return parse_label_bytes(data, path, n_classes, dtype, tol)



def parse_label_bytes(data: bytes, path: str | Path, n_classes: int | None,
                      dtype=np.float32, tol: float = BOX_TOLERANCE) -> tuple[np.ndarray, list[Problem]]:
    """`read_label_file` on bytes already read; `path` only names the file in problems; `tol`: how far past the
    image edge a box may reach (math.inf: any box whose centre is inside, to be clipped by the caller)."""
    problems: list[Problem] = []
    if len(data) > MAX_LABEL_BYTES:
        return _NO_ROWS.copy(), [Problem(str(path), None, f"label file larger than {MAX_LABEL_BYTES} bytes")]
    if data.startswith(codecs.BOM_UTF8):
        problems.append(Problem(str(path), 1, "UTF-8 byte-order mark at start (ignored; darknet would "
                                              "misread the first line)", "warning"))
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        reason = f"not UTF-8 text (bad byte at offset {exc.start})"
        return _NO_ROWS.copy(), problems + [Problem(str(path), line, reason)]
    rows: list[list[float]] = []
    seen: dict[tuple, int] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        row, reason = parse_label_line(line, n_classes, tol)
        if row is None:
            problems.append(Problem(str(path), lineno, reason))
            continue
        key = tuple(round(v, 6) for v in row)
        if key in seen:
            problems.append(Problem(str(path), lineno, f"duplicate of line {seen[key]} (dropped)", "warning"))
            continue
        seen[key] = lineno
        rows.append(row)
    return np.asarray(rows, dtype).reshape(-1, 5), problems
