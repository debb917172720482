"""Which images of a dataset go to train and which to valid (`data import --split-by`).

- `random`: a seeded shuffle, `val_fraction` of the images to valid (at least one each side).
- `lists`: the user's lists: `valid_list` (and optionally `train_list`), one image a line, as a path (absolute,
  or relative to the list's folder) or a bare file name that names one image. The images a valid list leaves
  out are train; with both lists, an image in neither is left out of the output and counted. An entry that
  names no image, or an image in both lists, is an error naming the list and line.
- `folders`: a folder per split: the nearest folder of the image's path named train/training goes to train,
  val/valid/validation to valid; an image under neither is an error naming it.
- `sequence`: whole sequences (the folder an image is in; a MOT sequence's img1/) to one side: sequences in a
  seeded order go to valid until it holds `val_fraction` of the images (at least one sequence each side), so
  neighbouring video frames are never on both sides.
- `last`: the last frames of each sequence (by file name, numbers compared as numbers) to valid: `val_count`
  frames, or `val_fraction` of the sequence (at least one, never the whole sequence). Each sequence has one
  boundary, between its last train frame and its first valid one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darktune.data.dataset import Dataset, image_identity
from darktune.data.formats.yolo import split_indices
from darktune.errors import DarktuneError
from darktune.files import MAX_TEXT_BYTES, read_regular
from darktune.plural import plural

SPLIT_MODES = ("random", "lists", "folders", "sequence", "last")
TRAIN_FOLDERS = ("train", "training")
VALID_FOLDERS = ("val", "valid", "validation")


@dataclass(frozen=True)
class SplitRule:
    mode: str = "random"
    val_fraction: float = 0.1
    seed: int = 0
    valid_list: str | None = None
    train_list: str | None = None
    val_count: int | None = None

    def __post_init__(self):
        if self.mode not in SPLIT_MODES:
            raise DarktuneError(f"--split-by must be one of {', '.join(SPLIT_MODES)}, got {self.mode!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DarktuneError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if (self.valid_list or self.train_list) and self.mode != "lists":
            raise DarktuneError("--valid-list and --train-list go with --split-by lists")
        if self.mode == "lists" and not self.valid_list:
            raise DarktuneError("--split-by lists needs --valid-list FILE (and optionally --train-list FILE)")
        if self.val_count is not None and (self.mode != "last" or self.val_count < 1):
            raise DarktuneError("--val-count N (N >= 1) goes with --split-by last")


@dataclass
class Split:
    """Indices into the dataset's images: train, valid and those left out (in neither list); a line saying how."""

    train: list[int]
    valid: list[int]
    left_out: list[int]
    description: str


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def sequences(dataset: Dataset) -> dict[str, list[int]]:
    """Image indices per sequence (the image's folder), sequences in order of first appearance, frames in
    natural file-name order."""
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(dataset.images):
        groups.setdefault(str(Path(rec.path).parent), []).append(i)
    return {k: sorted(v, key=lambda i: _natural(Path(dataset.images[i].path).name)) for k, v in groups.items()}


def _by_sequence(dataset: Dataset, rule: SplitRule) -> Split:
    groups = sequences(dataset)
    if len(groups) < 2:
        raise DarktuneError("--split-by sequence needs two sequences (image folders) or more; this data has "
                            "one: use --split-by last")
    names = list(groups)
    order = np.random.default_rng(rule.seed).permutation(len(names))
    target = max(1, round(rule.val_fraction * len(dataset.images)))
    valid_names: list[str] = []
    for k in order:
        if sum(len(groups[n]) for n in valid_names) >= target or len(valid_names) == len(names) - 1:
            break
        valid_names.append(names[int(k)])
    valid = sorted(i for n in valid_names for i in groups[n])
    train = sorted(i for n in names if n not in valid_names for i in groups[n])
    shown = ", ".join(Path(n).name if Path(n).name != "img1" else Path(n).parent.name for n in valid_names)
    return Split(train, valid, [], f"by sequence: {plural(len(valid_names), 'sequence')} of {len(names)} to valid "
                                    f"({shown})")


def _by_last(dataset: Dataset, rule: SplitRule) -> Split:
    train, valid = [], []
    for frames in sequences(dataset).values():
        k = rule.val_count if rule.val_count is not None else max(1, round(rule.val_fraction * len(frames)))
        k = min(k, len(frames) - 1)
        train += frames[:len(frames) - k]
        valid += frames[len(frames) - k:] if k > 0 else []
    what = f"the last {rule.val_count}" if rule.val_count is not None else f"the last {rule.val_fraction:g}"
    return Split(sorted(train), sorted(valid), [], f"by the last frames: {what} of each of "
                                                   f"{plural(len(sequences(dataset)), 'sequence')} to valid")


def _by_folders(dataset: Dataset) -> Split:
    train, valid = [], []
    for i, rec in enumerate(dataset.images):
        side = None
        for part in reversed(Path(rec.path).parent.parts):
            if part.lower() in TRAIN_FOLDERS or part.lower() in VALID_FOLDERS:
                side = "valid" if part.lower() in VALID_FOLDERS else "train"
                break
        if side is None:
            raise DarktuneError(f"not under a folder named {'/'.join(TRAIN_FOLDERS)} or {'/'.join(VALID_FOLDERS)} "
                                "(--split-by folders)", path=str(rec.path))
        (valid if side == "valid" else train).append(i)
    return Split(train, valid, [], "by folder: train/ and valid/ as given")


def _read_list(path: str, dataset: Dataset, by_identity: dict, by_name: dict) -> list[int]:
    """Image indices a list file names (see module docstring); an entry naming no image is an error."""
    text = read_regular(Path(path), "image list", MAX_TEXT_BYTES).decode("utf-8", errors="replace")
    out: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        candidates = [Path(entry)] if Path(entry).is_absolute() else [Path(path).parent / entry, Path(entry)]
        found = next((by_identity[image_identity(c)] for c in candidates
                      if c.is_file() and image_identity(c) in by_identity), None)
        if found is None:
            named = by_name.get(Path(entry).name, [])
            if len(named) > 1:
                raise DarktuneError(f"{entry!r} names {len(named)} images (same file name in several folders); "
                                    "give its path", path=path, line=lineno)
            if not named:
                raise DarktuneError(f"{entry!r} is not an image of this data set", path=path, line=lineno)
            found = named[0]
        out.append(found)
    return out


def _by_lists(dataset: Dataset, rule: SplitRule) -> Split:
    by_identity = {image_identity(rec.path): i for i, rec in enumerate(dataset.images)}
    by_name: dict[str, list[int]] = {}
    for i, rec in enumerate(dataset.images):
        by_name.setdefault(Path(rec.path).name, []).append(i)
    valid = set(_read_list(rule.valid_list, dataset, by_identity, by_name))
    if rule.train_list is None:
        return Split(sorted(set(range(len(dataset.images))) - valid), sorted(valid), [], "by list: valid as listed")
    train = set(_read_list(rule.train_list, dataset, by_identity, by_name))
    both = sorted(train & valid)
    if both:
        raise DarktuneError(f"{plural(len(both), 'image')} in both lists, e.g. {dataset.images[both[0]].path}",
                            path=rule.train_list)
    left = sorted(set(range(len(dataset.images))) - train - valid)
    return Split(sorted(train), sorted(valid), left, "by list: train and valid as listed")


def split_dataset(dataset: Dataset, rule: SplitRule) -> Split:
    """The train/valid split of `dataset` under `rule` (see module docstring)."""
    if rule.mode == "random":
        train, valid = split_indices(len(dataset.images), rule.val_fraction, rule.seed)
        return Split(train, valid, [], f"at random: {rule.val_fraction:g} to valid (seed {rule.seed})")
    if rule.mode == "lists":
        return _by_lists(dataset, rule)
    if rule.mode == "folders":
        return _by_folders(dataset)
    if rule.mode == "sequence":
        return _by_sequence(dataset, rule)
    return _by_last(dataset, rule)
