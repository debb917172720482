"""A darknet cfg with new anchors (e.g. a dataset's k-means anchors, `darktune.data.stats.kmeans_anchors`).

Darknet lists every anchor in each [yolo] layer (``anchors``, ``num``) and gives each head its own by index
(``mask``). `head_masks` keeps each head's anchor count and hands the anchors out by size in darknet's
order: the smallest to the head with the finest grid (26x26 in yolov3-tiny: ``mask = 0,1,2``), the largest to
the coarsest (13x13: ``3,4,5``). `cfg_with_anchors` rewrites only those three lines of each [yolo] section of
the cfg's text: comments, the order of keys and every other line stay as the user wrote them. The weights'
shapes do not depend on anchors, so COCO weights still load into the new cfg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from darktune.darknet.cfg import ALIASES, NetworkSpec, parse_cfg_text
from darktune.darknet.shapes import infer_shapes
from darktune.errors import DarktuneError
from darktune.files import atomic_write_bytes


def head_masks(spec: NetworkSpec) -> dict[int, tuple[int, ...]]:
    """[yolo] layer index -> its mask over anchors sorted by area: each head keeps its anchor count, the
    finest grid gets the smallest anchors."""
    shapes = infer_shapes(spec)
    heads = list(spec.yolo_indices)
    finest_first = sorted(heads, key=lambda i: (-shapes[i].output[1] * shapes[i].output[2], heads.index(i)))
    masks, start = {}, 0
    for i in finest_first:
        n = len(spec.layers[i].mask)
        masks[i] = tuple(range(start, start + n))
        start += n
    return masks


def anchor_count(spec: NetworkSpec) -> int:
    """Anchors the cfg's heads use together (the k of the k-means)."""
    return sum(len(spec.layers[i].mask) for i in spec.yolo_indices)


def anchors_text(anchors: np.ndarray) -> str:
    """`w,h, w,h, ...` rounded to whole pixels as darknet's calc_anchors prints them (at least 1)."""
    return ", ".join(f"{max(1, round(float(w)))},{max(1, round(float(h)))}" for w, h in anchors)


def _is_yolo(header: str) -> bool:
    name = header.strip()[1:-1].strip().lower()
    return ALIASES.get(name, name) == "yolo"


def cfg_with_anchors(text: str, anchors: np.ndarray, path: str = "<cfg>") -> tuple[str, dict]:
    """(the cfg's text with `anchors` (k, 2, in pixels at the network size, sorted by area) in every [yolo]
    section and each head's mask from `head_masks`, a report of the old and new values per head). The new text
    is parsed back before it is returned."""
    spec = parse_cfg_text(text, path)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    k = anchor_count(spec)
    if len(anchors) != k:
        raise DarktuneError(f"the cfg's [yolo] heads use {k} anchors together, not {len(anchors)}", path=path)
    masks = head_masks(spec)
    values = {"anchors": anchors_text(anchors[np.argsort(anchors[:, 0] * anchors[:, 1], kind="stable")]),
              "num": str(k)}
    heads = list(spec.yolo_indices)
    out, head, yolos, seen, report = [], -1, 0, set(), []
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):  # a key appended to the last section needs its own line
        lines[-1] += "\n"
    for line in lines:
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("["):
            out += _missing(seen, head, heads, masks, values)
            head, seen = (yolos, set()) if _is_yolo(stripped) else (-1, set())
            yolos += head >= 0
        key = stripped.split("=", 1)[0].strip() if "=" in stripped else ""
        if 0 <= head < len(heads) and key in ("anchors", "num", "mask"):
            seen.add(key)
            new = ",".join(map(str, masks[heads[head]])) if key == "mask" else values[key]
            ending = "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""
            before, after = line.split("=", 1)
            line = f"{before}={' ' if after[:1] == ' ' else ''}{new}{ending}"  # the user's spacing around '='
        out.append(line)
    out += _missing(seen, head, heads, masks, values)
    new_text = "".join(out)
    new_spec = parse_cfg_text(new_text, path)
    for i in heads:
        old, new = spec.layers[i], new_spec.layers[i]
        report.append({"layer": i, "mask_before": list(old.mask), "mask": list(new.mask),
                       "anchors_before": [list(p) for p in zip(old.anchors[::2], old.anchors[1::2])]})
    return new_text, {"anchors": values["anchors"], "heads": report}


def _missing(seen: set, head: int, heads: list[int], masks: dict, values: dict) -> list[str]:
    """Lines for the keys a [yolo] section lacked, appended at its end."""
    if not 0 <= head < len(heads):
        return []
    lines = []
    for key in ("mask", "anchors", "num"):
        if key not in seen:
            lines.append(f"{key}={','.join(map(str, masks[heads[head]])) if key == 'mask' else values[key]}\n")
    return lines


def write_cfg_with_anchors(cfg: str | Path, anchors: np.ndarray, out: str | Path, overwrite: bool = False) -> dict:
    """Write `cfg` with `anchors` to `out` (never `cfg` itself; an existing `out` only with `overwrite`)."""
    cfg, out = Path(cfg), Path(out)
    if out.exists() and out.resolve() == cfg.resolve():
        raise DarktuneError("--out is the input cfg: the input is never modified; give another file", path=str(out))
    if out.exists() and not overwrite:
        raise DarktuneError("exists (pass --overwrite to replace it)", path=str(out))
    try:
        text = cfg.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DarktuneError(f"cannot read the cfg: {exc}", path=str(cfg)) from None
    new_text, report = cfg_with_anchors(text, anchors, str(cfg))
    atomic_write_bytes(out, new_text.encode("utf-8"))
    return report
