"""One synthetic facade scene: sky and street, one or two buildings with textured walls and rows of windows,
occluders, a mild perspective warp, lighting and sensor noise. Returns the image and an honest record of every
window (box after the warp, truncation, occlusion, whether it is the target design, its row and column).

The scene is drawn on a canvas larger than the output by MARGIN on each side; the perspective warp maps a
jittered quadrilateral inside the canvas onto the output, so the output never shows anything undrawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from darktune.data.synth.draw import (
    WALL_KINDS,
    draw_occluders,
    draw_window,
    sky_and_ground,
    wall_texture,
)
from darktune.data.synth.style import (
    TARGET_STYLE,
    WindowStyle,
    distractor_style,
    is_target_design,
    random_style,
)

MARGIN = 0.12  # canvas margin per side, as a fraction of the output size
MAX_WINDOWS = 40  # per building, so tiny windows do not swamp an image
MIN_VISIBLE = 0.35  # a window less than this fraction inside the image is left unlabelled
MAX_OCCLUDED = 0.7  # a window more hidden than this is left unlabelled
OCCLUDED_AT = 0.1  # IsOccluded when at least this fraction of the window is covered
WINDOW_SCALE = (0.07, 0.32)  # default range of a building's window width, as a fraction of the shorter side
NEAR_MISS = 0.5  # default chance that a target scene's distractor is a near miss of the target design


@dataclass(frozen=True)
class WindowRecord:
    """One visible window of a scene, in output pixels (x0, y0, x1, y1), clipped to the image."""

    box: tuple[float, float, float, float]
    truncated: bool
    occluded: bool
    target: bool
    building: int
    row: int
    col: int
    style: WindowStyle | None = None  # the window's design (frame, glass, panes...), for error analysis


@dataclass(frozen=True)
class _Placed:
    x: int
    y: int
    w: int
    h: int
    style: WindowStyle
    building: int
    row: int
    col: int


def _building_styles(rng: np.random.Generator, kind: str, has_target: bool,
                     near_miss: float) -> tuple[WindowStyle, float]:
    """(main style, chance that a row uses another style) for one building."""
    if kind == "domain":
        return random_style(rng), 0.2
    if has_target:
        return TARGET_STYLE, 0.35
    return distractor_style(rng, near_miss), 0.25


def _row_style(rng: np.random.Generator, kind: str, main: WindowStyle, near_miss: float) -> WindowStyle:
    if kind == "domain":
        return random_style(rng)
    if is_target_design(main):
        return distractor_style(rng, near_miss)
    return TARGET_STYLE if rng.random() < 0.3 else distractor_style(rng, near_miss)


def _layout(rng: np.random.Generator, kind: str, bidx: int, span: tuple[int, int, int, int], ww: float,
            has_target: bool, near_miss: float) -> list[_Placed]:
    """Windows of one building occupying span = (x0, y0, x1, y1) of the canvas, laid out in rows/columns."""
    xa, ya, xb, yb = span
    main, mix = _building_styles(rng, kind, has_target, near_miss)
    ww = min(ww, (yb - ya) / (main.aspect * 1.1))  # a close-up window must still fit the storey
    px = ww * rng.uniform(1.5, 2.8) * (1.9 if main.shutters else 1.0)
    wh_main = ww * main.aspect
    py = wh_main * rng.uniform(1.35, 1.9)
    ncols = max(1, int((xb - xa) / px))
    nrows = max(1, int((yb - ya) / py))
    while ncols * nrows > MAX_WINDOWS:
        nrows = max(1, nrows - 1) if nrows > ncols else nrows
        ncols = ncols - 1 if ncols >= nrows else ncols
    x_start = xa + ((xb - xa) - ncols * px) / 2 + (px - ww) / 2
    y_start = ya + ((yb - ya) - nrows * py) / 2 + (py - wh_main) / 3
    placed = []
    for r in range(nrows):
        style = _row_style(rng, kind, main, near_miss) if rng.random() < mix else main
        w = max(4, round(ww * (1.0 if style is main else rng.uniform(0.8, 1.4))))
        h = max(4, round(w * style.aspect))
        y = round(y_start + r * py + (wh_main - h) / 2)
        for c in range(ncols):
            if ncols * nrows > 3 and rng.random() < 0.06:  # blank bay
                continue
            placed.append(_Placed(round(x_start + c * px + (ww - w) / 2), y, w, h, style, bidx, r, c))
    return placed


def _draw_buildings(rng: np.random.Generator, canvas: np.ndarray, kind: str, ground_y: int,
                    ww: float, near_miss: float) -> list[_Placed]:
    ch, cw = canvas.shape[:2]
    two = rng.random() < (0.55 if kind == "target" else 0.4)
    cuts = [0, int(cw * rng.uniform(0.3, 0.7)), cw] if two else [0, cw]
    target_building = int(rng.integers(len(cuts) - 1)) if (kind == "target" and rng.random() < 0.9) else -1
    placed = []
    for b in range(len(cuts) - 1):
        xa, xb = cuts[b], cuts[b + 1]
        top = int(ch * rng.uniform(-0.3, 0.3)) if rng.random() < 0.45 else -1
        top = max(0, top)
        wall = wall_texture(rng, WALL_KINDS[int(rng.integers(len(WALL_KINDS)))], ground_y - top, xb - xa,
                            unit=max(2.0, ww * rng.uniform(0.08, 0.16)))
        canvas[top:ground_y, xa:xb] = wall
        if top > 0:  # cornice
            cv2.rectangle(canvas, (xa, top), (xb - 1, top + max(1, int(ww * 0.25))),
                          (wall.mean(axis=(0, 1)) * 0.75).tolist(), -1)
        margin = int(ww * 0.4)
        span = (xa + margin, top + int(ww * 0.6), xb - margin, ground_y - int(ww * 0.3))
        if span[2] - span[0] >= ww and span[3] - span[1] >= ww:
            placed += _layout(rng, kind, b, span, ww, has_target=(b == target_building), near_miss=near_miss)
    return placed


def _warp(rng: np.random.Generator, canvas: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Mild perspective: a jittered quadrilateral of the canvas onto the output. Returns (image, 3x3 H)."""
    mx, my = (canvas.shape[1] - width) / 2, (canvas.shape[0] - height) / 2
    inner = np.float32([[mx, my], [mx + width, my], [mx + width, my + height], [mx, my + height]])
    strength = 0.0 if rng.random() < 0.2 else rng.uniform(0.2, 0.9)
    src = inner + rng.uniform(-1, 1, (4, 2)).astype(np.float32) * np.float32([mx, my]) * strength
    dst = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    hmat = cv2.getPerspectiveTransform(src, dst)
    out = cv2.warpPerspective(canvas, hmat, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    return out, hmat


def _light(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Lighting gradient, an optional cast shadow, colour temperature, blur and sensor noise."""
    h, w = img.shape[:2]
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    gain = rng.uniform(0.7, 1.15) + rng.uniform(-0.35, 0.35) * xs + rng.uniform(-0.35, 0.35) * ys
    if rng.random() < 0.3:
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3)
        dist = np.cos(angle) * xs + np.sin(angle) * ys - offset
        gain = gain * (1 - (1 - rng.uniform(0.5, 0.8)) * np.clip(dist / 0.03 + 0.5, 0, 1))
    t = rng.uniform(-1, 1)
    temp = np.float32([1 - 0.1 * t, 1.0, 1 + 0.1 * t])
    out = img.astype(np.float32) * (gain[..., None] * temp)
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (3, 3), rng.uniform(0.4, 1.0))
    out += rng.standard_normal(out.shape, dtype=np.float32) * rng.uniform(1.5, 5.0)
    return np.clip(out, 0, 255).astype(np.uint8)


def _records(placed: list[_Placed], mask: np.ndarray, hmat: np.ndarray, width: int,
             height: int) -> list[WindowRecord]:
    """Boxes of placed windows after the warp, clipped, with truncation/occlusion flags; hidden ones dropped."""
    if not placed:
        return []
    corners = np.float32([[[p.x, p.y], [p.x + p.w, p.y], [p.x + p.w, p.y + p.h], [p.x, p.y + p.h]]
                          for p in placed]).reshape(-1, 1, 2)
    warped = cv2.perspectiveTransform(corners, hmat).reshape(-1, 4, 2)
    lo, hi = warped.min(axis=1), warped.max(axis=1)
    full = np.prod(hi - lo, axis=1)
    clo = np.clip(lo, 0, [width, height])
    chi = np.clip(hi, 0, [width, height])
    inside = np.prod(np.maximum(chi - clo, 0), axis=1)
    out = []
    for i, p in enumerate(placed):
        roi = mask[max(0, p.y):max(0, p.y + p.h), max(0, p.x):max(0, p.x + p.w)]
        occ = float(roi.mean()) if roi.size else 0.0
        visible = inside[i] / max(full[i], 1e-6)
        bw, bh = chi[i] - clo[i]
        if visible < MIN_VISIBLE or occ > MAX_OCCLUDED or bw < 2 or bh < 2:
            continue
        box = (float(clo[i, 0]), float(clo[i, 1]), float(chi[i, 0]), float(chi[i, 1]))
        out.append(WindowRecord(box, bool(visible < 0.99), bool(occ >= OCCLUDED_AT),
                                is_target_design(p.style), p.building, p.row, p.col, p.style))
    return out


def _cap_distractors(placed: list[_Placed], limit: int, rng: np.random.Generator) -> list[_Placed]:
    """Keep at most `limit` distractor windows (a seeded choice); the others are not drawn (a blank bay)."""
    distractors = [i for i, p in enumerate(placed) if not is_target_design(p.style)]
    if len(distractors) <= limit:
        return placed
    dropped = set(rng.choice(distractors, size=len(distractors) - limit, replace=False).tolist())
    return [p for i, p in enumerate(placed) if i not in dropped]


def render_scene(rng: np.random.Generator, width: int, height: int, kind: str, max_distractors: int | None = None,
                 choice_rng: np.random.Generator | None = None, window_scale: tuple[float, float] = WINDOW_SCALE,
                 near_miss: float = NEAR_MISS) -> tuple[np.ndarray, list[WindowRecord]]:
    """Draw one scene of `kind` ("domain": windows of many styles; "target": the target design among
    distractors). Returns (BGR uint8 image (height, width, 3), window records).

    `max_distractors` (target scenes): at most this many distractor windows, the ones kept chosen with
    `choice_rng`; the others are not drawn (blank wall). The layout is drawn as without the cap, the details
    drawn after it (window details, occluders, lighting) differ.

    `window_scale` (lo, hi): a building's window width is drawn log-uniformly in [lo, hi] x the image's shorter
    side (larger values: closer views, fewer and bigger windows). `near_miss` (target scenes): the chance that a
    distractor is a near miss of the target design rather than any other design."""
    mx, my = round(MARGIN * width), round(MARGIN * height)
    cw, ch = width + 2 * mx, height + 2 * my
    ground_y = int(ch * rng.uniform(0.85, 1.05)) if rng.random() < 0.6 else ch
    ground_y = min(ground_y, ch)
    canvas = sky_and_ground(rng, ch, cw, ground_y)
    ww = min(width, height) * float(np.exp(rng.uniform(np.log(window_scale[0]), np.log(window_scale[1]))))
    placed = _draw_buildings(rng, canvas, kind, ground_y, ww, near_miss)
    if max_distractors is not None:
        placed = _cap_distractors(placed, max_distractors, choice_rng or np.random.default_rng(0))
    for p in placed:
        draw_window(canvas, p.x, p.y, p.w, p.h, p.style, rng)
    mask = np.zeros((ch, cw), np.uint8)
    draw_occluders(canvas, mask, rng, ground_y, ww)
    img, hmat = _warp(rng, canvas, width, height)
    return _light(rng, img), _records(placed, mask, hmat, width, height)


def crop_close_up(img: np.ndarray, recs: list[WindowRecord], rng: np.random.Generator, size: tuple[int, int],
                  fill: tuple[float, float]) -> tuple[np.ndarray, list[WindowRecord]]:
    """A close-up of a scene: a crop around one fully visible window (a random one) in which that window spans a
    fraction of the crop's width drawn uniformly in `fill` = (lo, hi), resized to `size` = (width, height).
    The other windows keep a record when at least MIN_VISIBLE of them is inside the crop (truncated otherwise
    flagged as in render_scene). A scene without a fully visible window gives a random crop of half its side."""
    width, height = size
    h, w = img.shape[:2]
    whole = [r for r in recs if not r.truncated]
    aspect = height / width
    if whole:
        pick = whole[int(rng.integers(len(whole)))]
        x0, y0, x1, y1 = pick.box
        cw = min((x1 - x0) / rng.uniform(*fill), w, h / aspect)
        cx = (x0 + x1) / 2 + rng.uniform(-0.25, 0.25) * max(cw - (x1 - x0), 0)
        cy = (y0 + y1) / 2 + rng.uniform(-0.25, 0.25) * max(cw * aspect - (y1 - y0), 0)
    else:
        cw = min(w, h / aspect) / 2
        cx, cy = rng.uniform(cw / 2, w - cw / 2), rng.uniform(cw * aspect / 2, h - cw * aspect / 2)
    cw = max(2, min(round(cw), w))
    ch = max(2, min(round(cw * aspect), h))
    left = int(np.clip(round(cx - cw / 2), 0, w - cw))
    top = int(np.clip(round(cy - ch / 2), 0, h - ch))
    sx, sy = width / cw, height / ch
    out = cv2.resize(img[top:top + ch, left:left + cw], (width, height), interpolation=cv2.INTER_AREA)
    kept = []
    for r in recs:
        x0, y0, x1, y1 = r.box
        area = max((x1 - x0) * (y1 - y0), 1e-6)
        ix0, iy0 = max(x0, left), max(y0, top)
        ix1, iy1 = min(x1, left + cw), min(y1, top + ch)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        inside = (ix1 - ix0) * (iy1 - iy0) / area
        box = ((ix0 - left) * sx, (iy0 - top) * sy, (ix1 - left) * sx, (iy1 - top) * sy)
        if inside < MIN_VISIBLE or box[2] - box[0] < 2 or box[3] - box[1] < 2:
            continue
        kept.append(WindowRecord(box, r.truncated or inside < 0.99, r.occluded, r.target, r.building, r.row, r.col,
                                 r.style))
    return out, kept
