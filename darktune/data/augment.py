"""Per-image data augmentation for detection training, with darknet's semantics, on the CPU (numpy + OpenCV).

Owns: AugmentConfig (the darknet keys jitter, hue, saturation, exposure, flip, mosaic, letterbox), the
geometric transform (jitter crop/pad + resize or letterbox + horizontal flip, done as ONE cv2.warpAffine),
the colour transform (hue shift, saturation and exposure scaling in HSV, done with one cv2.LUT), 4-image
mosaic (darknet's: about half the samples, cut in [0.2, 0.8], each tile a window of a full-size augmented
image with its own flip and colour), multi-scale network sizes, and the matching box transforms.

Semantics (darknet data.c load_data_detection): with dw = jitter*orig_w and dh = jitter*orig_h, the crop
offsets pleft, pright, ptop, pbot are uniform in [-dw, dw] / [-dh, dh] (negative = pad); the crop
(orig_w - pleft - pright) x (orig_h - ptop - pbot) is resized to the network size. Hue is shifted by
uniform(-hue, hue) of the full circle; saturation and exposure are scaled by darknet's rand_scale(s):
uniform(1, s), inverted with probability 1/2. Flip is horizontal with p = 0.5 when enabled. Padding is grey
(darknet fills with the image's mean colour). ``resize`` ([yolo] resize, yolov4-tiny: 1.5) adds darknet's
correlated scale to the offsets (`resize_offsets`): both axes zoom together, objects x 1/resize .. x resize.
Offsets are floats (darknet truncates them to whole pixels).

Images are RGB uint8 (H, W, 3). Boxes everywhere: float32 (n, 5) [cls, cx, cy, w, h], normalised to the image.
Boxes are clipped to the image (to the tile in a mosaic); boxes under MIN_BOX_PX pixels or MIN_BOX_NORM of
the image in width or height are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from darktune.errors import DarktuneError

GREY = 127  # padding value (darknet pads with 0.5)
MIN_BOX_PX = 1.0
MIN_BOX_NORM = 1e-3


@dataclass(frozen=True)
class AugmentConfig:
    """Darknet augmentation settings. saturation/exposure are rand_scale ranges (1 = off)."""

    jitter: float = 0.0
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = False
    mosaic: bool = False
    letterbox: bool = False
    resize: float = 1.0  # [yolo] resize: darknet's correlated crop scale (1 = off)

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter < 0.5:
            raise DarktuneError(f"jitter must be in [0, 0.5), got {self.jitter}")
        if not (math.isfinite(self.resize) and 0.1 <= self.resize <= 10.0):
            raise DarktuneError(f"resize must be in [0.1, 10], got {self.resize}")
        if not 0.0 <= self.hue <= 0.5:
            raise DarktuneError(f"hue must be in [0, 0.5], got {self.hue}")
        for name in ("saturation", "exposure"):
            if not 1.0 <= getattr(self, name) <= 10.0:
                raise DarktuneError(f"{name} must be in [1, 10] (a rand_scale range), got {getattr(self, name)}")

    @classmethod
    def from_net_params(cls, params: Mapping[str, object], jitter: float = 0.0) -> AugmentConfig:
        """From darknet [net] keys (strings as in a .cfg, or numbers). jitter lives on the [yolo] layers in
        darknet, so it is passed separately. Darknet defaults: hue 0, saturation 1, exposure 1, flip 1."""
        def number(key: str, default: float) -> float:
            value = params.get(key, default)
            try:
                out = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DarktuneError(f"[net] {key} must be a number, got {value!r}") from None
            if not math.isfinite(out):
                raise DarktuneError(f"[net] {key} must be finite, got {value!r}")
            return out

        return cls(jitter=float(jitter), hue=number("hue", 0.0), saturation=number("saturation", 1.0),
                   exposure=number("exposure", 1.0), flip=number("flip", 1) != 0,
                   mosaic=number("mosaic", 0) != 0, letterbox=number("letter_box", number("letterbox", 0)) != 0)


def rand_scale(rng: np.random.Generator, s: float) -> float:
    """darknet rand_scale: uniform(1, s), or its inverse with probability 1/2; in [1/s, s]."""
    scale = float(rng.uniform(1.0, s)) if s > 1.0 else 1.0
    return scale if rng.random() < 0.5 else 1.0 / scale


def darknet_size(r: float, base: int, step: int = 32) -> int:
    """darknet's multi-scale size for scale r (`detector.c`): roundl(r*base/step + 1)*step, never above `base`
    when r < 1 (small networks), never below `step`."""
    dim = math.floor(r * base / step + 1 + 0.5) * step  # roundl: half away from zero (the argument is > 0)
    if r < 1 and dim > base:
        dim = base
    return int(max(step, dim))


def random_network_size(rng: np.random.Generator, base: int, coef: float = 1.4, step: int = 32) -> int:
    """darknet's random=1 draw: darknet_size(rand_scale(coef), base) (coef = the [yolo] random value when it is
    not 1, else 1.4). At 160: 160 (p 1/2), 192, 224, 256; mean 192."""
    return darknet_size(rand_scale(rng, coef), int(base), step)


def _size_wh(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes of the horizontally flipped image."""
    out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 5)
    out[:, 1] = 1.0 - out[:, 1]
    return out


def map_boxes(boxes: np.ndarray, src_wh: tuple[int, int], affine: tuple[float, float, float, float],
              region: tuple[float, float, float, float], out_wh: tuple[int, int]) -> np.ndarray:
    """Boxes through the axis-aligned map x' = ax*x + bx, y' = ay*y + by (source pixels -> output pixels),
    clipped to region (x0, y0, x1, y1) of the output, degenerate ones dropped, normalised to out_wh."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    ax, bx, ay, by = affine
    sw, sh = src_wh
    xa = (b[:, 1] - b[:, 3] / 2) * sw * ax + bx
    xb = (b[:, 1] + b[:, 3] / 2) * sw * ax + bx
    ya = (b[:, 2] - b[:, 4] / 2) * sh * ay + by
    yb = (b[:, 2] + b[:, 4] / 2) * sh * ay + by
    x0 = np.clip(np.minimum(xa, xb), region[0], region[2])
    x1 = np.clip(np.maximum(xa, xb), region[0], region[2])
    y0 = np.clip(np.minimum(ya, yb), region[1], region[3])
    y1 = np.clip(np.maximum(ya, yb), region[1], region[3])
    ow, oh = out_wh
    w, h = x1 - x0, y1 - y0
    keep = (w >= MIN_BOX_PX) & (h >= MIN_BOX_PX) & (w >= MIN_BOX_NORM * ow) & (h >= MIN_BOX_NORM * oh)
    out = np.stack([b[:, 0], (x0 + x1) / 2 / ow, (y0 + y1) / 2 / oh, w / ow, h / oh], axis=1)[keep]
    return out.astype(np.float32)


def resize_range(resize: float) -> tuple[float, float]:
    """(lo, hi) of darknet's resize offset as a fraction of the source side (data.c): with down = resize or
    1/resize (whichever is <= 1) and up its inverse, lo = (1 - 1/down)/2 <= 0, hi = (1 - 1/up)/2 >= 0, hi = 0
    when resize < 1. resize 1.5: (-0.25, 1/6): a 640 px side gets offsets in [-160, 106.7] per edge."""
    down = resize if resize <= 1 else 1 / resize
    up = resize if resize >= 1 else 1 / resize
    return (1 - 1 / down) / 2, ((1 - 1 / up) / 2 if resize >= 1 else 0.0)


def resize_offsets(r1: float, r2: float, resize: float, sw: float, sh: float) -> tuple[float, ...]:
    """darknet's resize part of (pleft, pright, ptop, pbot): left and top share r1, right and bottom r2."""
    lo, hi = resize_range(resize)
    a, b = lo + r1 * (hi - lo), lo + r2 * (hi - lo)
    return a * sw, b * sw, a * sh, b * sh


def _geometry(rng: np.random.Generator | None, src_wh: tuple[int, int], out_wh: tuple[int, int],
              jitter: float, letterbox: bool, flip: bool, resize: float = 1.0) -> tuple[float, float, float, float]:
    """(ax, bx, ay, by) mapping source pixel edges to output pixel edges: jitter (+ resize) crop, resize, flip."""
    sw, sh = src_wh
    ow, oh = out_wh
    pleft = pright = ptop = pbot = 0.0
    if jitter > 0 and rng is not None:
        pleft, pright = rng.uniform(-jitter * sw, jitter * sw, 2)
        ptop, pbot = rng.uniform(-jitter * sh, jitter * sh, 2)
    if resize != 1.0 and rng is not None:  # drawn only when set: resize=1 keeps the earlier random stream
        rl, rr, rt, rb = resize_offsets(*rng.random(2), resize, sw, sh)
        pleft, pright, ptop, pbot = pleft + rl, pright + rr, ptop + rt, pbot + rb
    cw, ch = sw - pleft - pright, sh - ptop - pbot
    if letterbox:
        sx = sy = min(ow / cw, oh / ch)
        ox, oy = (ow - cw * sx) / 2, (oh - ch * sy) / 2
    else:
        sx, sy, ox, oy = ow / cw, oh / ch, 0.0, 0.0
    ax, bx, ay, by = sx, ox - pleft * sx, sy, oy - ptop * sy
    if flip:
        ax, bx = -ax, ow - bx
    return float(ax), float(bx), float(ay), float(by)


def warp_image(img: np.ndarray, affine: tuple[float, float, float, float], out_wh: tuple[int, int]) -> np.ndarray:
    """Apply the edge-coordinate map of _geometry with one cv2.warpAffine (a cheap INTER_AREA pre-shrink
    first when the source is over twice too large, to avoid aliasing)."""
    ax, bx, ay, by = affine
    h, w = img.shape[:2]
    k = int(1.0 / (2.0 * max(abs(ax), abs(ay))))
    if k >= 2:
        small = cv2.resize(img, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
        ax, ay = ax * w / small.shape[1], ay * h / small.shape[0]
        img = small
    # pixel centres: x_dst + 0.5 = ax * (x_src + 0.5) + bx
    m = np.array([[ax, 0.0, bx + 0.5 * ax - 0.5], [0.0, ay, by + 0.5 * ay - 0.5]], dtype=np.float64)
    return cv2.warpAffine(img, m, out_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(GREY, GREY, GREY))


def distort_colour(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """darknet random_distort_image: hue shift, saturation and exposure scaling, in HSV via one LUT."""
    dhue = float(rng.uniform(-cfg.hue, cfg.hue)) if cfg.hue > 0 else 0.0
    dsat = rand_scale(rng, cfg.saturation)
    dexp = rand_scale(rng, cfg.exposure)
    shift = round(dhue * 180)  # OpenCV 8-bit hue is 0..179 for the full circle
    if shift == 0 and dsat == 1.0 and dexp == 1.0:
        return img
    ramp = np.arange(256, dtype=np.float64)
    lut = np.stack([(ramp + shift) % 180, np.clip(ramp * dsat + 0.5, 0, 255), np.clip(ramp * dexp + 0.5, 0, 255)],
                   axis=-1).astype(np.uint8)[None]  # (1, 256, 3): one table per channel
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2RGB)


def _check(img: np.ndarray, boxes: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    if np.asarray(boxes).reshape(-1, 5).shape[1] != 5:
        raise ValueError("boxes must be (n, 5) [cls, cx, cy, w, h]")


def resize_sample(img: np.ndarray, boxes: np.ndarray, size: int | tuple[int, int],
                  letterbox: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """No augmentation: plain resize (or letterbox) to the network size, as for evaluation."""
    _check(img, boxes)
    out_wh = _size_wh(size)
    src_wh = (img.shape[1], img.shape[0])
    affine = _geometry(None, src_wh, out_wh, 0.0, letterbox, False)
    if not letterbox and src_wh == out_wh:
        return img, map_boxes(boxes, src_wh, affine, (0, 0, *out_wh), out_wh)
    return warp_image(img, affine, out_wh), map_boxes(boxes, src_wh, affine, (0, 0, *out_wh), out_wh)


def augment_sample(img: np.ndarray, boxes: np.ndarray, size: int | tuple[int, int], cfg: AugmentConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: jitter crop + resize/letterbox + flip (one warp), then colour distortion."""
    _check(img, boxes)
    out_wh = _size_wh(size)
    src_wh = (img.shape[1], img.shape[0])
    flip = cfg.flip and rng.random() < 0.5
    affine = _geometry(rng, src_wh, out_wh, cfg.jitter, cfg.letterbox, flip, cfg.resize)
    out = warp_image(img, affine, out_wh)
    return distort_colour(out, rng, cfg), map_boxes(boxes, src_wh, affine, (0, 0, *out_wh), out_wh)


MOSAIC_PROB = 0.5  # darknet mosaics about half the samples (it decides per loader chunk; we per sample)
MOSAIC_MIN_OFFSET = 0.2  # darknet's cut: rand_int(int(0.2*w), int(0.8*w)), inclusive


def mosaic_cut(rng: np.random.Generator, ow: int, oh: int) -> tuple[int, int]:
    """darknet's mosaic centre: integers uniform in [int(0.2*w), int(0.8*w)] and likewise for h."""
    lo_x, hi_x = int(MOSAIC_MIN_OFFSET * ow), int((1 - MOSAIC_MIN_OFFSET) * ow)
    lo_y, hi_y = int(MOSAIC_MIN_OFFSET * oh), int((1 - MOSAIC_MIN_OFFSET) * oh)
    return int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))


def mosaic_windows(cut: tuple[int, int], out_wh: tuple[int, int], pads: Sequence[tuple[int, int, int, int]]
                   ) -> list[tuple[tuple[int, int, int, int], tuple[int, int]]]:
    """Per tile k (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right): its output rectangle (x0, y0, x1, y1)
    and the top-left (sx, sy) of the window copied from source k's full-size augmented image (darknet data.c,
    blend_truth_mosaic): tiles on the left take the window ending at the source's right edge less its right
    padding, tiles on the right the window starting after its left padding (same for top/bottom); pads are
    (left, top, right, bottom) padded margins in output pixels, capped so the window stays inside."""
    cx, cy = cut
    ow, oh = out_wh
    out = []
    for k, (pl, pt, pr, pb) in enumerate(pads):
        left, top = k in (0, 2), k in (0, 1)
        rect = (0 if left else cx, 0 if top else cy, cx if left else ow, cy if top else oh)
        sx = ow - cx - min(pr, ow - cx) if left else min(pl, cx)
        sy = oh - cy - min(pb, oh - cy) if top else min(pt, cy)
        out.append((rect, (sx, sy)))
    return out


def augment_mosaic(samples: Sequence[tuple[np.ndarray, np.ndarray]], size: int | tuple[int, int],
                   cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """darknet's 4-image mosaic: a cut (`mosaic_cut`) splits the output into 4 tiles; each source is augmented
    IN FULL at the output size with its own jitter/resize crop, flip and colour, and tile k is a window of
    source k (`mosaic_windows`; no second resize: objects keep their full-image scale and aspect). Only the
    window is warped and coloured (the same pixels as slicing the full-size sample)."""
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(samples)}")
    ow, oh = _size_wh(size)
    cut = mosaic_cut(rng, ow, oh)
    affines, pads = [], []
    for img, boxes in samples:
        _check(img, boxes)
        src_wh = (img.shape[1], img.shape[0])
        flip = cfg.flip and rng.random() < 0.5
        ax, bx, ay, by = _geometry(rng, src_wh, (ow, oh), cfg.jitter, cfg.letterbox, flip, cfg.resize)
        x_lo, x_hi = sorted((bx, ax * src_wh[0] + bx))
        y_lo, y_hi = sorted((by, ay * src_wh[1] + by))
        affines.append((ax, bx, ay, by))
        pads.append(tuple(max(0, int(v)) for v in (x_lo, y_lo, ow - x_hi, oh - y_hi)))
    canvas = np.empty((oh, ow, 3), np.uint8)
    parts = []
    for (img, boxes), (ax, bx, ay, by), ((x0, y0, x1, y1), (sx, sy)) in zip(
            samples, affines, mosaic_windows(cut, (ow, oh), pads)):
        src_wh = (img.shape[1], img.shape[0])
        tile_affine = (ax, bx - sx, ay, by - sy)  # full-size map, then the window's origin
        tile = warp_image(img, tile_affine, (x1 - x0, y1 - y0))
        canvas[y0:y1, x0:x1] = distort_colour(tile, rng, cfg)
        parts.append(map_boxes(boxes, src_wh, (ax, bx - sx + x0, ay, by - sy + y0), (x0, y0, x1, y1), (ow, oh)))
    return canvas, np.concatenate(parts, axis=0)
