"""Drawing primitives of the synthetic windows benchmark: wall textures, sky and ground, one window of a given
style, and occluders (trees, poles, signs, cables). Everything draws in place on BGR uint8 canvases with
numpy and OpenCV, from an explicit numpy Generator (no global random state).
"""

from __future__ import annotations

import cv2
import numpy as np

from darktune.data.synth.style import WindowStyle

WALL_KINDS = ("brick", "plaster", "concrete", "glass", "siding", "stone")
WALL_COLOURS = {
    "brick": ((40, 60, 150), (50, 80, 170), (60, 90, 130), (70, 100, 160), (45, 55, 110)),
    "plaster": ((200, 215, 225), (170, 200, 220), (150, 180, 200), (210, 210, 205), (140, 170, 210)),
    "concrete": ((150, 150, 148), (130, 135, 140), (175, 175, 170), (110, 112, 115)),
    "glass": ((110, 95, 70), (90, 90, 85), (120, 110, 95)),
    "siding": ((190, 190, 180), (150, 170, 120), (200, 200, 210), (110, 140, 170)),
    "stone": ((150, 165, 175), (120, 135, 150), (175, 185, 190)),
}


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], (h, w) float32: a coarse random grid upsampled bicubically."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) * 0.5


def _tile_pattern(h: int, w: int, bh: float, bw: float, offset: float, joint: int) -> tuple[np.ndarray, ...]:
    """Running-bond tiles: (row index, column index, joint mask) for tiles bh x bw shifted by offset per row."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    row = np.floor(ys / bh)
    xs_shift = xs + (row % 2) * offset
    col = np.floor(xs_shift / bw)
    joint_mask = ((ys - row * bh) < joint) | ((xs_shift - col * bw) < joint)
    return row.astype(np.int32), col.astype(np.int32), joint_mask


def wall_texture(rng: np.random.Generator, kind: str, h: int, w: int, unit: float) -> np.ndarray:
    """A wall of the given kind, (h, w, 3) uint8; `unit` is the brick height in pixels (scales with windows)."""
    colours = WALL_COLOURS[kind]
    base = (np.array(colours[int(rng.integers(len(colours)))]) * rng.uniform(0.85, 1.15, 3)).astype(np.float32)
    shade = 1.0 + 0.12 * smooth_noise(rng, h, w, max(8.0, unit * 8))
    if kind in ("brick", "stone", "concrete", "glass"):
        bh = max(2.0, unit * {"brick": 1.0, "stone": 2.2, "concrete": 6.0, "glass": 7.0}[kind])
        bw = bh * {"brick": 2.8, "stone": 1.8, "concrete": 2.0, "glass": 1.3}[kind]
        joint = 1 if bh < 6 else 2
        row, col, joints = _tile_pattern(h, w, bh, bw, bw / 2 if kind in ("brick", "stone") else 0.0, joint)
        spread = {"brick": 0.14, "stone": 0.10, "concrete": 0.04, "glass": 0.10}[kind]
        table = 1.0 + spread * rng.standard_normal((64, 64)).astype(np.float32)
        shade = shade * table[row % 64, col % 64]
        joint_level = {"brick": 1.45, "stone": 0.75, "concrete": 0.8, "glass": 0.35}[kind]
        shade = np.where(joints, np.float32(joint_level), shade)
    elif kind == "siding":
        period = max(3.0, unit * 1.5)
        ys = np.arange(h, dtype=np.float32)[:, None] % period
        shade = shade * np.where(ys < max(1.0, period / 5), np.float32(0.75), np.float32(1.0))
    img = shade[..., None] * base
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(6.0)  # grain
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def sky_and_ground(rng: np.random.Generator, h: int, w: int, ground_y: int) -> np.ndarray:
    """Background: a sky gradient with soft clouds above ground_y, a street below it. (h, w, 3) uint8."""
    top = np.array([rng.uniform(150, 220), rng.uniform(110, 170), rng.uniform(60, 110)], np.float32)
    bottom = (rng.uniform(200, 245) * np.array([0.95, 0.97, 1.0])).astype(np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = top * (1 - t) + bottom * t  # (h, 1, 3)
    clouds = np.clip(smooth_noise(rng, h, w, max(8.0, w / 5)) * np.float32(1.6), 0, 1)[..., None]
    img = sky + clouds * (np.float32(0.6) * (np.float32(245) - sky))
    if ground_y < h:
        road = (rng.uniform(60, 110) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
        img[ground_y:] = road * (1 + np.float32(0.08) * smooth_noise(rng, h - ground_y, w, 6.0))[..., None]
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _jitter(rng: np.random.Generator, bgr: tuple[int, int, int], amount: float) -> np.ndarray:
    return np.clip(np.asarray(bgr, np.float32) * rng.uniform(1 - amount, 1 + amount, 3), 0, 255)


def _glass(rng: np.random.Generator, gh: int, gw: int, style: WindowStyle) -> np.ndarray:
    """Glass of a whole window (gh, gw, 3) float32: tint, sky-reflection gradient, per-pane shade, streak."""
    cols, rows = style.panes
    tint = _jitter(rng, style.glass_bgr, 0.10)
    ys = np.linspace(0, 1, gh, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, gw, dtype=np.float32)[None, :]
    pane = 1.0 + 0.12 * rng.standard_normal((rows, cols)).astype(np.float32)
    shade = (1.18 - 0.36 * ys) * pane[np.minimum((ys * rows).astype(int), rows - 1),
                                       np.minimum((xs * cols).astype(int), cols - 1)]
    img = shade[..., None] * tint
    r = rng.random()
    if r < 0.25:  # curtains at both sides, seen through the tint
        c = rng.uniform(0.12, 0.3)
        curtain = (xs < c) | (xs > 1 - c)
        colour = np.asarray([rng.uniform(150, 240)] * 3, np.float32) * rng.uniform(0.85, 1.0, 3)
        img = np.where(curtain[..., None], 0.55 * img + 0.45 * colour * tint / 160.0, img)
    elif r < 0.4:  # blinds half down
        down = rng.uniform(0.2, 0.7)
        stripes = (np.arange(gh)[:, None] % 3 == 0) & (ys < down)
        img = np.where((ys < down)[..., None], 0.5 * img + 0.5 * 170 * tint / 120.0, img)
        img = np.where(stripes[..., None], img * 0.8, img)
    slope, pos, width = rng.uniform(0.5, 2.0), rng.uniform(-0.5, 1.5), rng.uniform(0.05, 0.2)
    streak = np.abs(xs + slope * ys - pos) < width
    img = img + streak[..., None] * rng.uniform(15, 55)
    return np.clip(img, 0, 255)


def draw_window(img: np.ndarray, x0: int, y0: int, w: int, h: int, style: WindowStyle,
                rng: np.random.Generator) -> None:
    """Draw one window whose outer frame is [x0, x0+w) x [y0, y0+h) (the labelled box), in place.

    Sill and shutters are drawn outside that box, as an annotator would leave them out.
    """
    x1, y1 = x0 + w, y0 + h
    frame = _jitter(rng, style.frame_bgr, 0.06)
    if style.sill:
        sill = _jitter(rng, (196, 204, 210), 0.08)
        sh = max(1, round(h * 0.06))
        ext = max(1, round(w * 0.07))
        cv2.rectangle(img, (x0 - ext, y1), (x1 + ext - 1, y1 + sh - 1), sill.tolist(), -1)
        cv2.line(img, (x0 - ext, y1 + sh), (x1 + ext - 1, y1 + sh), (sill * 0.5).tolist(), 1)
    if style.shutters:
        col = _jitter(rng, style.shutter_bgr, 0.08)
        sw = max(1, w // 2)
        for xa in (x0 - sw, x1):
            cv2.rectangle(img, (xa, y0), (xa + sw - 1, y1 - 1), col.tolist(), -1)
            step = max(2, h // 14)
            for yy in range(y0 + 1, y1 - 1, step):
                cv2.line(img, (xa, yy), (xa + sw - 1, yy), (col * 0.7).tolist(), 1)
    # reveal shadow: the wall opening is darker at the top and left where the frame sits back
    s = max(1, round(min(w, h) * 0.06))
    roi = img[max(0, y0 - s):max(0, y1), max(0, x0 - s):max(0, x1)]
    roi[:] = (roi * 0.55).astype(np.uint8)
    r = w // 2
    body_y0 = y0 + r if style.arch else y0
    cv2.rectangle(img, (x0, body_y0), (x1 - 1, y1 - 1), frame.tolist(), -1)
    t = max(1, round(style.frame_frac * min(w, h)))
    if style.arch:
        cv2.ellipse(img, (x0 + r, body_y0), (r, r), 0, 180, 360, frame.tolist(), -1)
        inner = max(1, r - t)
        fan = _jitter(rng, style.glass_bgr, 0.1)
        cv2.ellipse(img, (x0 + r, body_y0), (inner, inner), 0, 180, 360, fan.tolist(), -1)
        cv2.rectangle(img, (x0, body_y0 - t // 2), (x1 - 1, body_y0 + t - t // 2), frame.tolist(), -1)
        body_y0 += t - t // 2
    gx0, gy0, gx1, gy1 = x0 + t, body_y0 + t, x1 - t, y1 - t
    if gx1 - gx0 < 2 or gy1 - gy0 < 2:
        return
    glass = _glass(rng, gy1 - gy0, gx1 - gx0, style)
    H, W = img.shape[:2]
    cx0, cy0, cx1, cy1 = max(gx0, 0), max(gy0, 0), min(gx1, W), min(gy1, H)
    if cx1 > cx0 and cy1 > cy0:  # paste the part of the glass that lies on the canvas
        img[cy0:cy1, cx0:cx1] = glass[cy0 - gy0:cy1 - gy0, cx0 - gx0:cx1 - gx0].astype(np.uint8)
    _draw_bars(img, gx0, gy0, gx1, gy1, style, frame)


def _draw_bars(img: np.ndarray, gx0: int, gy0: int, gx1: int, gy1: int, style: WindowStyle,
               frame: np.ndarray) -> None:
    """Glazing bars (mullions and transoms) splitting the glass into the style's pane grid."""
    cols, rows = style.panes
    gw, gh = gx1 - gx0, gy1 - gy0
    m = max(1, round(style.mullion_frac * min(gw, gh)))
    colour = frame.tolist()
    for i in range(1, cols):
        x = gx0 + round(i * gw / cols)
        cv2.rectangle(img, (x - m // 2, gy0), (x - m // 2 + m - 1, gy1 - 1), colour, -1)
    for j in range(1, rows):
        y = gy0 + round(j * gh / rows)
        cv2.rectangle(img, (gx0, y - m // 2), (gx1 - 1, y - m // 2 + m - 1), colour, -1)


def draw_occluders(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, ground_y: int,
                   unit: float) -> None:
    """Trees, poles, signs and cables in front of the facade; `mask` (uint8) gets 1 where they cover it.

    `unit` is a typical window width in pixels, so occluders scale with the scene.
    """
    h, w = img.shape[:2]
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            _tree(img, mask, rng, float(rng.uniform(0, w)), ground_y, unit)
    if rng.random() < 0.3:
        x = int(rng.uniform(0, w))
        pw = max(1, round(unit * rng.uniform(0.06, 0.15)))
        top = int(ground_y - rng.uniform(1.5, 5.0) * unit)
        colour = _jitter(rng, (60, 60, 62), 0.2).tolist()
        cv2.rectangle(img, (x, top), (x + pw, h - 1), colour, -1)
        cv2.rectangle(mask, (x, top), (x + pw, h - 1), 1, -1)
        if rng.random() < 0.6:  # a sign on the pole
            _sign(img, mask, rng, x + pw // 2, top + int(unit * 0.3), unit)
    if rng.random() < 0.25:
        _sign(img, mask, rng, int(rng.uniform(0, w)), int(rng.uniform(0.2, 0.9) * ground_y), unit)
    if rng.random() < 0.2:
        ya, yb = int(rng.uniform(0, h)), int(rng.uniform(0, h))
        cv2.line(img, (0, ya), (w - 1, yb), (30, 30, 30), 1, cv2.LINE_AA)


def _tree(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cx: float, ground_y: int,
          unit: float) -> None:
    radius = min(unit * rng.uniform(0.8, 2.2), 0.2 * min(img.shape[:2]))
    crown_y = ground_y - radius * rng.uniform(1.2, 2.5)
    trunk_w = max(1, round(radius * 0.15))
    bark = _jitter(rng, (40, 55, 75), 0.15).tolist()
    cv2.rectangle(img, (int(cx - trunk_w / 2), int(crown_y)), (int(cx + trunk_w / 2), ground_y + 2), bark, -1)
    cv2.rectangle(mask, (int(cx - trunk_w / 2), int(crown_y)), (int(cx + trunk_w / 2), ground_y + 2), 1, -1)
    h, w = img.shape[:2]
    x0, x1 = max(0, int(cx - 2 * radius)), min(w, int(cx + 2 * radius) + 1)
    y0, y1 = max(0, int(crown_y - 2 * radius)), min(h, int(crown_y + 2 * radius) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    blob = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for _ in range(int(rng.integers(5, 12))):
        bx = cx - x0 + rng.normal(0, radius * 0.5)
        by = crown_y - y0 + rng.normal(0, radius * 0.4)
        cv2.circle(blob, (int(bx), int(by)), max(1, int(radius * rng.uniform(0.35, 0.7))), 1, -1)
    leaf = np.asarray((40, 110, 60), np.float32) * rng.uniform(0.6, 1.2, 3)
    texture = 1.0 + 0.35 * smooth_noise(rng, y1 - y0, x1 - x0, max(2.0, radius / 6))
    colour = np.clip(texture[..., None] * leaf, 0, 255).astype(np.uint8)
    roi = img[y0:y1, x0:x1]
    np.copyto(roi, colour, where=blob[..., None].astype(bool))
    mask[y0:y1, x0:x1] |= blob


def _sign(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cx: int, cy: int, unit: float) -> None:
    sw, sh = max(2, int(unit * rng.uniform(0.4, 1.2))), max(2, int(unit * rng.uniform(0.25, 0.7)))
    p0, p1 = (cx - sw // 2, cy - sh // 2), (cx + sw // 2, cy + sh // 2)
    colour = np.asarray(((40, 40, 200), (160, 90, 20), (40, 140, 40), (30, 200, 230), (230, 230, 230))[
        int(rng.integers(5))], np.float32)
    cv2.rectangle(img, p0, p1, _jitter(rng, tuple(int(c) for c in colour), 0.1).tolist(), -1)
    cv2.rectangle(img, p0, p1, (240, 240, 240), 1)
    for k in range(1, 3):  # text-like stripes
        yy = p0[1] + k * sh // 3
        cv2.line(img, (p0[0] + sw // 6, yy), (p1[0] - sw // 6, yy), (250, 250, 250) if k % 2 else (20, 20, 20), 1)
    cv2.rectangle(mask, p0, p1, 1, -1)
