"""What darktune knows about the published cfgs of the zoo's models.

Owns: a cfg's content (every section and `key=value` in order, comments, blank lines and spacing aside), so a
copy with one anchor changed is told apart from one with other line endings; the edits that make a published
cfg describe the weights it is published with; and the check that warns when a cfg still carries a known-bad
value with those weights.

The one such edit known today: the official COCO `yolov3-tiny.weights` were trained with `mask = 1,2,3` on
the 26x26 head (layer 23), while pjreddie's published `yolov3-tiny.cfg` says `mask = 0,1,2`. With the published
mask that head decodes every box with the next smaller anchor: person boxes come out about half their size
(COCO person AP50 on 12 MOT17 frames at 416 px: 0.5 with the published cfg, 27.9 with mask 1,2,3).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

COCO_V3_WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
COCO_V3_WEIGHTS_BYTES = 35_434_956
COCO_ANCHORS = (10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319)


@dataclass(frozen=True)
class CfgFix:
    """One `key` of layer `layer` (darknet's numbering: sections after [net] from 0) that the published cfg
    gives as `published` and the weights need as `fixed`."""

    layer: int
    key: str
    published: str
    fixed: str
    why: str


YOLOV3_TINY_MASK = CfgFix(23, "mask", "0,1,2", "1,2,3",
                          "the COCO yolov3-tiny.weights were trained with mask = 1,2,3 on the 26x26 head")


def cfg_content(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """(section name, ((key, value), ...)) of every section in order; names and keys lower-cased, spaces
    removed from values, comments (# and ;) and blank lines dropped. Two cfgs with the same content build the
    same network and train it the same way in darknet."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for raw in text.replace("\ufeff", "").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            sections.append((line.strip("[]").strip().lower(), []))
        elif sections:
            key, _, value = line.partition("=")
            sections[-1][1].append((key.strip().lower(), re.sub(r"\s+", "", value)))
        else:
            sections.append(("", [(line, "")]))  # text before any section: content all the same
    return [(name, tuple(options)) for name, options in sections]


def content_digest(text: str) -> str:
    """sha256 of `cfg_content(text)`: equal for copies that differ only in comments, spacing or line endings."""
    canonical = "\n".join(f"[{name}]" + "".join(f"\n{k}={v}" for k, v in options)
                          for name, options in cfg_content(text))
    return hashlib.sha256(canonical.encode()).hexdigest()


def apply_fixes(text: str, fixes: tuple[CfgFix, ...]) -> str:
    """`text` with each fix's line replaced (and a comment above it saying why); every other byte unchanged.
    ValueError when a fix's key is not found with its published value (not the published cfg)."""
    lines = text.splitlines(keepends=True)
    for fix in fixes:
        layer, at = -2, None  # [net] is section -1
        for i, raw in enumerate(lines):
            line = raw.split("#", 1)[0].strip()
            if line.startswith("["):
                layer += 1
            elif layer == fix.layer and line.partition("=")[0].strip().lower() == fix.key:
                if re.sub(r"\s+", "", line.partition("=")[2]) == fix.published:
                    at = i
                break
        if at is None:
            raise ValueError(f"layer {fix.layer} has no '{fix.key} = {fix.published}'")
        ending = lines[at][len(lines[at].rstrip("\r\n")):] or "\n"
        lines[at] = (f"# darktune: {fix.key} = {fix.fixed} ({fix.why}; the published cfg says {fix.published})"
                     f"{ending}{fix.key} = {fix.fixed}{ending}")
    return "".join(lines)


def _has_known_bad_mask(spec) -> bool:
    """True when `spec` (a NetworkSpec) is yolov3-tiny's network (any class count: --keep-classes re-heads it)
    with the COCO anchors and the published mask on layer 23."""
    layers = getattr(spec, "layers", ())
    if len(layers) != 24 or list(getattr(spec, "yolo_indices", ())) != [16, 23]:
        return False
    head = layers[YOLOV3_TINY_MASK.layer]
    return (tuple(head.mask) == (0, 1, 2)
            and tuple(float(a) for a in head.anchors) == tuple(map(float, COCO_ANCHORS)))


def known_bad_mask_warning(spec, weights: str | Path) -> str | None:
    """The warning for a cfg carrying yolov3-tiny's published mask 0,1,2 with the COCO weights it is wrong
    for, or None. The weights' sha256 is read only when the cfg has that mask and the file that size."""
    if not _has_known_bad_mask(spec):
        return None
    path = Path(weights)
    try:
        if path.stat().st_size != COCO_V3_WEIGHTS_BYTES:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    if digest.hexdigest() != COCO_V3_WEIGHTS_SHA256:
        return None
    return (f"{spec.path}: layer 23 [yolo] has mask = 0,1,2 (the published yolov3-tiny.cfg), but {path.name} "
            "(the COCO weights) was trained with mask = 1,2,3: that head's boxes come out about half their size. "
            "Use the yolov3-tiny.cfg that `darktune weights fetch yolov3-tiny` installs, or set mask = 1,2,3")
