"""Device-side batch augmentation: darknet's augmentations applied to a whole uint8 batch with tensor ops.

Owns `augment_batch` (= `sample_params` + `apply_params` = `apply_images` + `apply_targets`), `BatchParams`,
`distort_colour` and `hflip`. Same parameters and semantics as the per-image CPU module
`darktune.data.augment` (its `AugmentConfig` is the config here); tests check pixels and boxes against it:

* jitter crop/pad: pleft, pright ~ U(-jitter, jitter) * w, ptop, pbot ~ U(-jitter, jitter) * h of the source;
  the crop is resized to the output (or letterboxed into it when cfg.letterbox); outside the source is grey
  127 (the CPU border value). One `F.grid_sample` (bilinear) for the whole batch. Its grid is exactly
  `F.affine_grid` of each image's axis-aligned theta, built separably (a column and a row vector per image,
  ~3x cheaper than affine_grid's per-pixel matmul on the CPU). It follows the CPU's pixel-centre convention
  x_dst + 0.5 = ax * (x_src + 0.5) + bx; the grey fill comes from sampling (img - 127) with zero padding
  and adding 127 back, so edges blend with grey as cv2.warpAffine(BORDER_CONSTANT) does.
* resize (cfg.resize != 1, [yolo] resize): darknet's correlated scale added to the pads (`augment.resize_range`;
  left/top share one uniform, right/bottom another), as the CPU path.
* flip: horizontal with p = 0.5 when cfg.flip (folded into the same grid: no extra pass).
* colour, per output image (darknet random_distort_image; the CPU path does it in OpenCV 8-bit HSV): hue
  shifted by round(U(-hue, hue) * 180) / 180 of the circle (wrapping), saturation and exposure multiplied by
  darknet's rand_scale (U(1, s), inverted with p = 1/2) and clipped at 1 in HSV. Exact float rgb->hsv->rgb;
  with hue = 0 a closed form in RGB that is algebraically identical (c' = e * (v - d * (v - c)), where
  e = min(exposure, 1/v) and d = min(saturation, v/(v - min))). Differences from the CPU path come only
  from its 8-bit quantisation: measured mean < 1 level of 255, max <= 6 (OpenCV's own 8-bit HSV round trip
  moves pixels by up to 4 levels).
* mosaic (cfg.mosaic): darknet's cut (an integer in [int(0.2*size), int(0.8*size)] per axis) splits the
  output into 4 tiles. NOT the CPU path's (darknet's) tiles: here every image is a mosaic (CPU and darknet:
  about half), each tile is its image jittered and resized INTO the tile (CPU and darknet: a window of the
  full-size augmented image, objects at full scale) with one flip and colour per canvas (CPU and darknet: per
  tile); listed in docs/darknet_training.md; tile k of output b shows batch image perm_k[b] (perm_0 = identity, the
  others random permutations of the batch, so every image is used once per tile and the target count stays 4N;
  the CPU path draws its 3 partners from the whole data set), jittered and resized into the tile; then flip
  and colour of the whole canvas, as in the CPU path. Cost: 4 full-size samples per image (selected per
  pixel by tile), i.e. ~4x the geometric cost.
* boxes go through the same maps, are clipped to the output (to the tile in a mosaic) and dropped below
  1 px or 1e-3 of the output in width or height (the CPU module's MIN_BOX_PX / MIN_BOX_NORM).
* multi-scale: `out_size` may change from call to call (pick it on the host, e.g. with
  `augment.random_network_size` every 10 iterations); build the cache at the largest size.

No host sync and no Python loop over images or boxes (no .item(), no torch.tensor(list, device=...)):
every random draw is one batched tensor call on the generator's device (use a generator on the images'
device: a CPU generator with CUDA images costs a small host->device copy per call). `compact=True` removes
dropped boxes with a boolean index (one device sync on CUDA, a dynamic shape); `compact=False` keeps a fixed
shape (N or 4N rows) with dropped rows zeroed (cx = cy = w = h = 0), which `loss.YoloLoss` already ignores:
use it in a sync-free or compiled loop. `apply_images` has fixed shapes: `torch.compile(apply_images)` fuses
the colour arithmetic (measured ~7x faster than eager on the CPU). On the CPU only, the colour stage runs
in bands of output rows so its temporaries stay in cache (fresh large CPU buffers cost page faults); on an
accelerator it is one pass.

Inputs: images uint8 (B, 3, H, W) RGB on any device (e.g. from `uint8_cache.Uint8Cache.batch`), targets
(N, 6) [image index in batch, cls, cx, cy, w, h] normalised to each image's valid region, `extents` (B, 2)
the valid (w, h) pixels of each slot (a keep-aspect cache; default the whole H x W).
Output: images float32 (B, 3, out_h, out_w) in [0, 1], targets (M, 6) in the same layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from darktune.data.augment import GREY, MIN_BOX_NORM, MIN_BOX_PX, AugmentConfig, resize_range

_FILL = GREY / 255.0
CPU_BAND_ELEMS = 1 << 19  # values per band on the CPU (~2 MB of float32)


@dataclass
class BatchParams:
    """Per-image random choices (tensors on one device). K = 1 tile, or 4 with mosaic."""

    src: torch.Tensor  # (B, K) long: batch index of the image shown in each tile
    tiles: torch.Tensor  # (B, K, 4) tile x0, y0, x1, y1 in output pixels (before the flip)
    pads: torch.Tensor  # (B, K, 4) pleft, ptop, pright, pbot as fractions of the source's w, h
    flip: torch.Tensor  # (B,) bool
    hue: torch.Tensor  # (B,) shift, fraction of the colour circle
    sat: torch.Tensor  # (B,) saturation factor
    exp: torch.Tensor  # (B,) exposure factor


def _size_wh(out_size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(out_size), int(out_size)) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))


def _const_rows(n: int, values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(n, len(values)) float32 filled on the device by scalar fills: torch.tensor(list, device=cuda) would
    be a synchronous host->device copy."""
    out = torch.empty((n, len(values)), device=device, dtype=torch.float32)
    for j, v in enumerate(values):
        out[:, j] = float(v)
    return out


def _rand_scale(u_value: torch.Tensor, u_invert: torch.Tensor, s: float) -> torch.Tensor:
    """darknet rand_scale from two uniforms: U(1, s), inverted with p = 1/2."""
    scale = 1.0 + u_value * (s - 1.0)
    return torch.where(u_invert < 0.5, scale, 1.0 / scale)


def sample_params(batch: int, cfg: AugmentConfig, out_size: int | tuple[int, int],
                  generator: torch.Generator | None = None, device: str | torch.device | None = None
                  ) -> BatchParams:
    """Draw every random choice of a batch in a few batched calls (deterministic for a seeded generator)."""
    ow, oh = _size_wh(out_size)
    dev = generator.device if generator is not None else torch.device(device or "cpu")
    k = 4 if cfg.mosaic else 1
    u = torch.rand((batch, 4 * k + 8), generator=generator, device=dev)
    pads = (u[:, :4 * k].view(batch, k, 4) * 2 - 1) * cfg.jitter
    if cfg.mosaic:
        # darknet's cut: an integer uniform in [int(0.2*w), int(0.8*w)] (augment.mosaic_cut)
        lo_x, lo_y = int(0.2 * ow), int(0.2 * oh)
        xc = lo_x + torch.floor(u[:, -8] * (int(0.8 * ow) - lo_x + 1)).clamp(max=int(0.8 * ow) - lo_x)
        yc = lo_y + torch.floor(u[:, -7] * (int(0.8 * oh) - lo_y + 1)).clamp(max=int(0.8 * oh) - lo_y)
        zero, w_, h_ = torch.zeros_like(xc), torch.full_like(xc, ow), torch.full_like(yc, oh)
        tiles = torch.stack([torch.stack(r, 1) for r in ((zero, zero, xc, yc), (xc, zero, w_, yc),
                                                           (zero, yc, xc, h_), (xc, yc, w_, h_))], 1)
        perms = torch.argsort(torch.rand((3, batch), generator=generator, device=dev), dim=1)
        src = torch.cat([torch.arange(batch, device=dev)[None], perms], 0).T.contiguous()
    else:
        tiles = _const_rows(batch, (0.0, 0.0, ow, oh), dev).view(batch, 1, 4)
        src = torch.arange(batch, device=dev)[:, None]
    if cfg.resize != 1.0:  # darknet's resize: left/top share r1, right/bottom r2 (drawn only when set)
        lo, hi = resize_range(cfg.resize)
        r = lo + torch.rand((batch, k, 2), generator=generator, device=dev) * (hi - lo)
        pads = pads + torch.stack((r[..., 0], r[..., 0], r[..., 1], r[..., 1]), -1)  # pleft, ptop, pright, pbot
    flip = (u[:, -6] < 0.5) if cfg.flip else torch.zeros(batch, dtype=torch.bool, device=dev)
    hue = torch.round((u[:, -5] * 2 - 1) * cfg.hue * 180) / 180
    sat = _rand_scale(u[:, -4], u[:, -3], cfg.saturation)
    exp = _rand_scale(u[:, -2], u[:, -1], cfg.exposure)
    return BatchParams(src, tiles, pads, flip, hue, sat, exp)


def _params_to(p: BatchParams, device: torch.device) -> BatchParams:
    if p.src.device == device:
        return p
    return BatchParams(*(getattr(p, f).to(device, non_blocking=True)
                         for f in ("src", "tiles", "pads", "flip", "hue", "sat", "exp")))


def _edge_maps(p: BatchParams, extents: torch.Tensor, letterbox: bool) -> tuple[torch.Tensor, ...]:
    """Per tile (B, K): source pixel edges -> output pixel edges (before flip), x' = a * x + b per axis."""
    ws, hs = extents[p.src, 0], extents[p.src, 1]  # (B, K) valid source size in slot pixels
    pl, pt, pr, pb = (p.pads[..., i] for i in range(4))
    pl, pr, pt, pb = pl * ws, pr * ws, pt * hs, pb * hs
    cw, ch = ws - pl - pr, hs - pt - pb
    tw, th = p.tiles[..., 2] - p.tiles[..., 0], p.tiles[..., 3] - p.tiles[..., 1]
    if letterbox:
        ax = ay = torch.minimum(tw / cw, th / ch)
        ox, oy = (tw - cw * ax) / 2, (th - ch * ay) / 2
    else:
        ax, ay, ox, oy = tw / cw, th / ch, 0.0, 0.0
    return ax, p.tiles[..., 0] + ox - pl * ax, ay, p.tiles[..., 1] + oy - pt * ay


def _grid_lines(p: BatchParams, maps, in_hw: tuple[int, int], out_wh: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid coordinates of every output column (B*K, ow) and row (B*K, oh): the grid F.affine_grid
    (align_corners=False) gives for each tile's axis-aligned theta, built separably (no per-pixel matmul)."""
    h, w = in_hw
    ow, oh = out_wh
    ax, bx, ay, by = maps
    # output grid coordinate g_o = (2i + 1) / ow - 1 is the pixel (g_o + 1) * ow / 2 (ow minus that: flip);
    # source pixel x = (pixel - bx) / ax, grid coordinate 2 x / w - 1: affine in g_o, x' = A g_o + C
    sign = torch.where(p.flip, -1.0, 1.0)[:, None]
    a_x, c_x = sign * ow / (w * ax), 2 * (ow / 2 - bx) / (ax * w) - 1
    a_y, c_y = oh / (h * ay), 2 * (oh / 2 - by) / (ay * h) - 1
    base_x = (torch.arange(ow, device=ax.device, dtype=torch.float32) * 2 + 1) / ow - 1
    base_y = (torch.arange(oh, device=ax.device, dtype=torch.float32) * 2 + 1) / oh - 1
    return a_x.reshape(-1, 1) * base_x + c_x.reshape(-1, 1), a_y.reshape(-1, 1) * base_y + c_y.reshape(-1, 1)


def _band_grid(cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(N, ow) x (N, r) -> (N, r, ow, 2) grid."""
    grid = torch.empty((cols.shape[0], rows.shape[1], cols.shape[1], 2), device=cols.device, dtype=cols.dtype)
    grid[..., 0] = cols[:, None, :]
    grid[..., 1] = rows[:, :, None]
    return grid


def _compose(tiles: torch.Tensor, p: BatchParams, r0: int) -> torch.Tensor:
    """(B, K, 3, r, ow) tiles of output rows r0.. -> (B, 3, r, ow): each pixel from the tile that holds it
    (tile rectangles are before the flip)."""
    b, k, _, nr, ow = tiles.shape
    if k == 1:
        return tiles[:, 0]
    col = torch.arange(ow, device=tiles.device, dtype=torch.float32)
    col = torch.where(p.flip[:, None], ow - 1 - col, col) + 0.5  # (B, ow) pixel centre before the flip
    row = torch.arange(r0, r0 + nr, device=tiles.device, dtype=torch.float32) + 0.5
    right = (col >= p.tiles[:, 1, 0, None]).long()[:, None, :]  # (B, 1, ow)
    lower = (row[None] >= p.tiles[:, 2, 1, None]).long()[:, :, None]  # (B, r, 1)
    which = (right + 2 * lower)[:, None, None].expand(b, 1, 3, nr, ow)
    return torch.gather(tiles, 1, which)[:, 0]


def distort_colour(x: torch.Tensor, hue: torch.Tensor, sat: torch.Tensor, exp: torch.Tensor,
                   with_hue: bool = True) -> torch.Tensor:
    """HSV jitter of (B, 3, H, W) RGB in [0, 1], IN PLACE (x is overwritten and returned): h + hue
    (wrapping), s * sat and v * exp clipped at 1. with_hue=False skips the hue path (exact when every hue is
    0). Written with in-place ops on full-size tensors: fresh CPU buffers cost more than the arithmetic."""
    hue, sat, exp = (t.to(x.dtype).view(-1, 1, 1, 1) for t in (hue, sat, exp))
    v = x.amax(1, keepdim=True)  # (B, 1, H, W)
    m = x.amin(1, keepdim=True)
    chroma = v - m
    # new v' = e v with e = min(exp, 1 / v); new s' = d s with d = min(sat, v / chroma)  (both clipped at 1)
    e = torch.minimum(exp, v.clamp(min=1e-12).reciprocal())
    d = torch.minimum(sat, v / chroma.clamp(min=1e-12))
    if not with_hue:
        # c' = v' (1 - s' g_c) with c = v (1 - s g_c)  =>  c' = e (v - d (v - c)) = (e d) c + e v (1 - d)
        return x.mul_(e * d).add_(e * v * (1 - d)).clamp_(0.0, 1.0)
    inv = chroma.clamp(min=1e-12).reciprocal_()
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    h6 = torch.where(v == g, (b - r).mul_(inv).add_(2), (r - g).mul_(inv).add_(4))
    h6 = torch.where(v == r, (g - b).mul_(inv), h6)
    h6.masked_fill_(chroma <= 0, 0.0).add_(hue * 6)  # hue in sixths of the circle, shifted
    s_new = d * chroma / v.clamp(min=1e-12)  # s'
    top = v.mul_(e)  # v'
    depth = top * s_new  # v' s'
    # hsv -> rgb: c_n = v' - v' s' f((n + h6) mod 6), f(k) = clamp(2 - |k - 2|, 0, 1), n = 5, 3, 1 for r, g, b
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1
    torch.add(h6, n, out=x)
    x.remainder_(6.0).sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
    return x.mul_(depth.neg_()).add_(top).clamp_(0.0, 1.0)


def _map_targets(targets: torch.Tensor, p: BatchParams, maps, extents: torch.Tensor,
                 out_wh: tuple[int, int], compact: bool) -> torch.Tensor:
    """(N, 6) -> (K*N or fewer, 6): each truth through the map of every tile that shows its image."""
    t = targets.to(device=p.src.device, dtype=torch.float32)
    b, k = p.src.shape
    ow, oh = out_wh
    img = t[:, 0].long()
    inverse = torch.argsort(p.src, dim=0)  # inverse[i, k]: output whose tile k shows image i
    out_img = inverse[img].T.reshape(-1)  # (K*N,) tile-major
    tile = torch.arange(k, device=t.device).repeat_interleave(len(t))
    sel = out_img * k + tile
    ax, bx, ay, by = (m.reshape(-1)[sel] for m in maps)
    ext = extents.to(t.device)[img].repeat(k, 1)
    rep = t.repeat(k, 1)
    x0 = ((rep[:, 2] - rep[:, 4] / 2) * ext[:, 0]) * ax + bx
    x1 = ((rep[:, 2] + rep[:, 4] / 2) * ext[:, 0]) * ax + bx
    y0 = ((rep[:, 3] - rep[:, 5] / 2) * ext[:, 1]) * ay + by
    y1 = ((rep[:, 3] + rep[:, 5] / 2) * ext[:, 1]) * ay + by
    region = p.tiles.reshape(-1, 4)[sel]
    x0, x1 = x0.clamp(region[:, 0], region[:, 2]), x1.clamp(region[:, 0], region[:, 2])
    y0, y1 = y0.clamp(region[:, 1], region[:, 3]), y1.clamp(region[:, 1], region[:, 3])
    flip = p.flip[out_img]
    x0, x1 = torch.where(flip, ow - x1, x0), torch.where(flip, ow - x0, x1)
    w, h = x1 - x0, y1 - y0
    keep = (w >= MIN_BOX_PX) & (h >= MIN_BOX_PX) & (w >= MIN_BOX_NORM * ow) & (h >= MIN_BOX_NORM * oh)
    out = torch.stack([out_img.to(t.dtype), rep[:, 1], (x0 + x1) / (2 * ow), (y0 + y1) / (2 * oh),
                       w / ow, h / oh], 1)
    if compact:
        return out[keep]
    return torch.cat([out[:, :2], out[:, 2:] * keep[:, None]], 1)


def _compiling() -> bool:
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(check()) if check is not None else False


def _band_rows(device: torch.device, n_images: int, out_wh: tuple[int, int]) -> int:
    """Output rows per colour pass: all on an accelerator; on the CPU bands of ~CPU_BAND_ELEMS values, so
    the temporaries stay in cache and below malloc's mmap threshold (fresh large CPU buffers cost page
    faults, measured slower than the arithmetic itself). grid_sample stays one call: its CPU cost per call
    grows with the input, so banding it was slower."""
    if device.type != "cpu" or _compiling():
        return out_wh[1]
    return max(1, CPU_BAND_ELEMS // (n_images * 3 * out_wh[0]))


def _check_inputs(images: torch.Tensor, targets: torch.Tensor | None = None) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if targets is not None and (targets.dim() != 2 or targets.shape[1] != 6):
        raise ValueError(f"targets must be (N, 6) [img, cls, cx, cy, w, h], got {tuple(targets.shape)}")


def _full_extents(images: torch.Tensor, extents: torch.Tensor | None) -> torch.Tensor:
    b, _, h, w = images.shape
    if extents is None:
        return _const_rows(b, (w, h), images.device)
    return extents.to(device=images.device, dtype=torch.float32)


def apply_images(images: torch.Tensor, params: BatchParams, out_size: int | tuple[int, int],
                 letterbox: bool = False, extents: torch.Tensor | None = None,
                 with_hue: bool = True) -> torch.Tensor:
    """The image half of `apply_params`: uint8 (B, 3, H, W) -> float32 (B, 3, out_h, out_w) in [0, 1].
    Fixed shapes, no data-dependent control flow: `torch.compile(apply_images)` fuses it (one pass)."""
    _check_inputs(images)
    ow, oh = out_wh = _size_wh(out_size)
    p = _params_to(params, images.device)
    b, _, h, w = images.shape
    k = p.src.shape[1]
    maps = _edge_maps(p, _full_extents(images, extents), letterbox)
    x = images.to(torch.float32).sub_(float(GREY))  # sampled with zero padding: the fill comes back below
    if k > 1:
        x = x.index_select(0, p.src.reshape(-1))
    cols, rows = _grid_lines(p, maps, (h, w), out_wh)
    tiles = F.grid_sample(x, _band_grid(cols, rows), mode="bilinear", padding_mode="zeros",
                          align_corners=False).view(b, k, 3, oh, ow)
    out = tiles[:, 0] if k == 1 else torch.empty((b, 3, oh, ow), device=images.device, dtype=torch.float32)
    step = _band_rows(images.device, b, out_wh)
    for r0 in range(0, oh, step):  # one pass on accelerators; cache-sized bands on the CPU
        r1 = min(oh, r0 + step)
        band = _compose(tiles[:, :, :, r0:r1], p, r0).mul_(1.0 / 255.0).add_(_FILL)
        band = distort_colour(band, p.hue, p.sat, p.exp, with_hue=with_hue)
        if k > 1:  # with one tile the band already is a view of `out`
            out[:, :, r0:r1] = band
    return out


def apply_targets(targets: torch.Tensor, params: BatchParams, in_hw: tuple[int, int],
                  out_size: int | tuple[int, int], letterbox: bool = False, extents: torch.Tensor | None = None,
                  compact: bool = True) -> torch.Tensor:
    """The box half of `apply_params`: (N, 6) -> (M, 6) through the same maps (in_hw: the uint8 slot size)."""
    if targets.dim() != 2 or targets.shape[1] != 6:
        raise ValueError(f"targets must be (N, 6) [img, cls, cx, cy, w, h], got {tuple(targets.shape)}")
    dev = params.src.device
    b = params.src.shape[0]
    if extents is None:
        extents = _const_rows(b, (in_hw[1], in_hw[0]), dev)
    extents = extents.to(device=dev, dtype=torch.float32)
    maps = _edge_maps(params, extents, letterbox)
    return _map_targets(targets, params, maps, extents, _size_wh(out_size), compact)


def apply_params(images: torch.Tensor, targets: torch.Tensor, params: BatchParams,
                 out_size: int | tuple[int, int], letterbox: bool = False, extents: torch.Tensor | None = None,
                 compact: bool = True, with_hue: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply drawn parameters: geometry (+ flip, + mosaic) by one grid_sample, then colour; boxes alike."""
    _check_inputs(images, targets)
    p = _params_to(params, images.device)
    out = apply_images(images, p, out_size, letterbox, extents, with_hue)
    return out, apply_targets(targets, p, tuple(images.shape[2:]), out_size, letterbox, extents, compact)


def augment_batch(images_uint8: torch.Tensor, targets: torch.Tensor, out_size: int | tuple[int, int],
                  cfg: AugmentConfig, generator: torch.Generator | None = None,
                  extents: torch.Tensor | None = None, compact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a whole uint8 batch on its device -> (float images (B, 3, out, out) in [0, 1], targets (M, 6)
    [img, cls, cx, cy, w, h] transformed, clipped, degenerate boxes dropped (compact) or zeroed)."""
    params = sample_params(images_uint8.shape[0], cfg, out_size, generator, images_uint8.device)
    return apply_params(images_uint8, targets, params, out_size, cfg.letterbox, extents, compact,
                        with_hue=cfg.hue > 0)


def hflip(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip of a whole batch and its (N, 6) targets (any dtype)."""
    out = targets.clone()
    out[:, 2] = 1.0 - out[:, 2]
    return images.flip(-1), out
