"""Tests of darktune.data.batch_augment: exact agreement with the CPU module's warp, boxes and colour for the
same parameters, statistical agreement of the random draws, geometric correctness on drawn rectangles,
properties (hypothesis), determinism, and the sync-free fixed-shape target mode."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darktune.data import augment as cpu
from darktune.data.augment import AugmentConfig
from darktune.data.batch_augment import (
    BatchParams,
    apply_params,
    augment_batch,
    distort_colour,
    hflip,
    sample_params,
)

FULL = AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True)


def _params(pads, flip=False, out_wh=(96, 64), hue=0.0, sat=1.0, exp=1.0) -> BatchParams:
    return BatchParams(src=torch.zeros(1, 1, dtype=torch.long), tiles=torch.tensor([[[0.0, 0.0, *out_wh]]]),
                       pads=torch.tensor([[pads]], dtype=torch.float32), flip=torch.tensor([flip]),
                       hue=torch.tensor([hue]), sat=torch.tensor([sat]), exp=torch.tensor([exp]))


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    noise = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2)


def _cpu_affine(src_wh, pads, out_wh, letterbox, flip):
    """The CPU module's (ax, bx, ay, by) for given crop fractions (its _geometry with fixed offsets)."""
    sw, sh = src_wh
    pl, pt, pr, pb = pads[0] * sw, pads[1] * sh, pads[2] * sw, pads[3] * sh
    cw, ch = sw - pl - pr, sh - pt - pb
    ow, oh = out_wh
    if letterbox:
        sx = sy = min(ow / cw, oh / ch)
        ox, oy = (ow - cw * sx) / 2, (oh - ch * sy) / 2
    else:
        sx, sy, ox, oy = ow / cw, oh / ch, 0.0, 0.0
    ax, bx, ay, by = sx, ox - pl * sx, sy, oy - pt * sy
    return (-ax, ow - bx, ay, by) if flip else (ax, bx, ay, by)


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("pads", [(0.2, -0.1, -0.25, 0.15), (-0.3, 0.25, 0.1, -0.2)])
def test_geometry_equals_cpu_warp(letterbox, flip, pads):
    """Same crop/flip parameters: pixels equal cv2.warpAffine's to rounding, boxes equal map_boxes'."""
    slot, ext = 80, (80, 50) if letterbox else (80, 80)
    base = np.full((slot, slot, 3), cpu.GREY, np.uint8)  # keep-aspect slot: grey outside the image
    base[:ext[1], :ext[0]] = _smooth_image(ext[1], ext[0])
    out_wh = (96, 64)
    t = torch.tensor([[0, 3, 0.5, 0.5, 0.4, 0.3], [0, 1, 0.1, 0.9, 0.15, 0.15]])
    mine, mine_boxes = apply_params(torch.from_numpy(base).permute(2, 0, 1)[None].contiguous(), t,
                                    _params(pads, flip, out_wh), out_wh, letterbox,
                                    torch.tensor([[float(ext[0]), float(ext[1])]]), with_hue=False)
    affine = _cpu_affine(ext, pads, out_wh, letterbox, flip)
    ref = cpu.warp_image(np.ascontiguousarray(base[:ext[1], :ext[0]]), affine, out_wh)
    diff = np.abs(mine[0].permute(1, 2, 0).numpy() * 255 - ref)
    assert diff.max() <= 1.0 and diff.mean() < 0.3
    ref_boxes = cpu.map_boxes(t[:, 1:].numpy(), ext, affine, (0, 0, *out_wh), out_wh)
    np.testing.assert_allclose(mine_boxes[:, 1:].numpy(), ref_boxes, atol=1e-5)


class _FixedRng:
    """Stands in for np.random.Generator in the CPU module's distort_colour: returns queued values."""

    def __init__(self, uniforms, randoms):
        self.uniforms, self.randoms = list(uniforms), list(randoms)

    def uniform(self, lo, hi):
        return self.uniforms.pop(0)

    def random(self):
        return self.randoms.pop(0)


@pytest.mark.parametrize("dhue,sat,exp", [(0.1, 1.5, 1.0 / 1.3), (-0.2, 1 / 1.8, 1.4), (0.0, 1.7, 1.3),
                                          (0.45, 1 / 3.0, 1 / 4.0)])
def test_colour_equals_cpu_opencv_path(dhue, sat, exp):
    """Same draws: our float HSV equals the CPU module's 8-bit OpenCV HSV to its quantisation."""
    img = (np.random.default_rng(1).random((48, 48, 3)) * 255).astype(np.uint8)
    s_up, e_up = sat >= 1, exp >= 1
    rng = _FixedRng([dhue, sat if s_up else 1 / sat, exp if e_up else 1 / exp],
                    [0.0 if s_up else 0.9, 0.0 if e_up else 0.9])
    cfg = AugmentConfig(hue=0.5, saturation=10.0, exposure=10.0)
    ref = cpu.distort_colour(img, rng, cfg).astype(np.float64)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    shift = round(dhue * 180) / 180
    mine = distort_colour(x, torch.tensor([shift]), torch.tensor([sat]), torch.tensor([exp]))
    diff = np.abs(mine[0].permute(1, 2, 0).numpy() * 255 - ref)
    assert diff.mean() < 1.0 and diff.max() <= 6.0  # OpenCV's 8-bit HSV round trip alone differs by <= 4


def test_fast_colour_path_equals_full_path():
    x = torch.rand(3, 3, 20, 20)
    x[0, :, :5] = 0.0  # black
    x[1, :, :5] = 0.4  # grey
    zero, sat, exp = torch.zeros(3), torch.tensor([1.7, 0.6, 1.0]), torch.tensor([0.5, 1.8, 3.0])
    full = distort_colour(x.clone(), zero, sat, exp, with_hue=True)
    fast = distort_colour(x.clone(), zero, sat, exp, with_hue=False)
    assert torch.allclose(full, fast, atol=1e-5)


def test_identity_when_nothing_is_on():
    img = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    t = torch.tensor([[0, 0, 0.5, 0.5, 0.2, 0.2], [2, 1, 0.3, 0.6, 0.1, 0.4]])
    out, boxes = augment_batch(img, t, 40, AugmentConfig(), torch.Generator().manual_seed(0))
    assert (out * 255 - img.float()).abs().max() < 0.01
    assert torch.allclose(boxes, t, atol=1e-6)


def _white_rects(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Black images with one white rectangle each, and its box."""
    rng = np.random.default_rng(seed)
    images = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    rows = []
    for i in range(n):
        x0, y0 = rng.integers(2, size // 2, 2)
        x1, y1 = x0 + rng.integers(size // 8, size // 2), y0 + rng.integers(size // 8, size // 2)
        images[i, :, y0:y1, x0:x1] = 255
        rows.append([i, 0, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size])
    return images, torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("cfg", [AugmentConfig(jitter=0.3, flip=True),
                                 AugmentConfig(jitter=0.3, flip=True, letterbox=True),
                                 AugmentConfig(jitter=0.2, flip=True, mosaic=True)],
                         ids=["plain", "letterbox", "mosaic"])
def test_white_rectangle_lands_inside_its_box(cfg):
    """The transformed box covers the white pixels to 1.5 px, and its interior (less 1.5 px) is white."""
    images, t = _white_rects(12, 96, seed=3)
    out, boxes = augment_batch(images, t, 128, cfg, torch.Generator().manual_seed(7))
    white = out.min(1).values > 0.75  # (B, H, W); grey fill is 0.5, black 0
    ys, xs = torch.meshgrid(torch.arange(128) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    assert len(boxes) >= 10
    for i in range(len(images)):
        mine = boxes[boxes[:, 0] == i]
        inside_any = torch.zeros(128, 128, dtype=torch.bool)
        for _, _, cx, cy, w, h in (mine * torch.tensor([1, 1, 128, 128, 128, 128])).tolist():
            near = (xs > cx - w / 2 - 1.5) & (xs < cx + w / 2 + 1.5) & (ys > cy - h / 2 - 1.5) & (ys < cy + h / 2 + 1.5)
            core = (xs > cx - w / 2 + 1.5) & (xs < cx + w / 2 - 1.5) & (ys > cy - h / 2 + 1.5) & (ys < cy + h / 2 - 1.5)
            inside_any |= near
            assert white[i][core].all(), f"image {i}: box interior not white"
        assert not (white[i] & ~inside_any).any(), f"image {i}: white pixels outside every box"


def _cpu_box_draws(cfg: AugmentConfig, n: int, box, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(11)
    img = np.zeros((size, size, 3), np.uint8)
    out = []
    for _ in range(n):
        _, b = cpu.augment_sample(img, np.array([box], np.float32), size, cfg, rng)
        out.append(b[0] if len(b) else [np.nan] * 5)
    return np.array(out)


def test_box_statistics_match_cpu_path():
    """Same cfg: the distribution of the transformed box (centre, size, flip rate) matches the CPU path."""
    cfg = AugmentConfig(jitter=0.3, flip=True)
    box = [0, 0.3, 0.5, 0.2, 0.2]
    n = 1500
    ref = _cpu_box_draws(cfg, n, box)
    images = torch.zeros((n, 3, 32, 32), dtype=torch.uint8)
    t = torch.tensor([[i, *box] for i in range(n)], dtype=torch.float32)
    _, mine = augment_batch(images, t, 32, cfg, torch.Generator().manual_seed(5), compact=False)
    mine = mine[:, 1:].numpy()
    for col in (1, 2, 3, 4):  # cx, cy, w, h
        a, b = ref[:, col], mine[:, col]
        se = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * se, (col, a.mean(), b.mean())
        assert abs(np.std(a) - np.std(b)) < 0.1 * np.std(a) + 1e-4
    flipped = np.mean(mine[:, 1] > 0.5)
    assert abs(flipped - 0.5) < 0.06 and abs(flipped - np.mean(ref[:, 1] > 0.5)) < 0.08


def test_colour_factor_ranges_match_cpu_path():
    """Exposure factors lie in [1/e, e], log-symmetric, with the CPU path's distribution; same for hue."""
    cfg = AugmentConfig(hue=0.1, exposure=1.5)
    n = 800
    p = sample_params(n, cfg, 8, torch.Generator().manual_seed(2))
    assert float(p.exp.min()) >= 1 / 1.5 - 1e-6 and float(p.exp.max()) <= 1.5 + 1e-6
    assert float(p.hue.abs().max()) <= 0.1 + 1e-6
    assert (p.hue * 180 - torch.round(p.hue * 180)).abs().max() < 1e-4  # OpenCV's 2-degree hue steps
    rng = np.random.default_rng(3)
    ref = np.array([cpu.rand_scale(rng, 1.5) for _ in range(n)])
    mine = p.exp.numpy()
    assert abs(np.mean(np.log(mine))) < 0.03 and abs(np.mean(np.log(ref))) < 0.03
    assert abs(np.mean(mine > 1) - 0.5) < 0.06
    assert abs(np.quantile(mine, 0.75) - np.quantile(ref, 0.75)) < 0.05
    # the images: a mid-grey image's brightness moves by exactly the drawn factor
    images = torch.full((n, 3, 8, 8), 100, dtype=torch.uint8)
    out, _ = apply_params(images, torch.zeros((0, 6)), p, 8, with_hue=True)
    ratio = out.mean((1, 2, 3)) / (100 / 255)
    assert torch.allclose(ratio, p.exp, atol=1e-4)


def test_mosaic_uses_every_image_once_per_tile():
    cfg = AugmentConfig(mosaic=True)
    p = sample_params(300, cfg, 64, torch.Generator().manual_seed(0))
    assert p.src.shape == (300, 4) and (p.src[:, 0] == torch.arange(300)).all()
    for k in range(4):
        assert sorted(p.src[:, k].tolist()) == list(range(300))
    x0, y0, x1, y1 = p.tiles.unbind(-1)
    assert ((x1 - x0) * (y1 - y0)).sum(1).eq(64 * 64).all()  # 4 tiles cover the output exactly
    cx = p.tiles[:, 0, 2]  # darknet's cut: integers int(0.2*64) = 12 .. int(0.8*64) = 51, inclusive
    assert cx.min() == 12 and cx.max() == 51


def test_determinism_and_seed_sensitivity():
    images, t = _white_rects(6, 64, seed=1)
    cfg = AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True, mosaic=True)
    a = augment_batch(images, t, 64, cfg, torch.Generator().manual_seed(42))
    b = augment_batch(images, t, 64, cfg, torch.Generator().manual_seed(42))
    c = augment_batch(images, t, 64, cfg, torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_compact_false_keeps_shape_and_zeroes_dropped_rows():
    images, t = _white_rects(8, 64, seed=2)
    t = torch.cat([t, torch.tensor([[0, 0, 0.5, 0.5, 1e-4, 0.3]])])  # too thin: dropped
    cfg = AugmentConfig(jitter=0.3, flip=True, mosaic=True)
    _, kept = augment_batch(images, t, 64, cfg, torch.Generator().manual_seed(9), compact=True)
    _, fixed = augment_batch(images, t, 64, cfg, torch.Generator().manual_seed(9), compact=False)
    assert fixed.shape == (4 * len(t), 6)
    live = fixed[:, 4] > 0
    assert torch.equal(fixed[live], kept)
    assert (fixed[~live, 2:] == 0).all()


boxes_strategy = st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0),
                                    st.floats(0.0, 1.0)), min_size=0, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boxes=boxes_strategy, jitter=st.floats(0.0, 0.45), mosaic=st.booleans(), letterbox=st.booleans(),
       seed=st.integers(0, 2**31 - 1), out=st.sampled_from([32, 48, 64]))
def test_properties(boxes, jitter, mosaic, letterbox, seed, out):
    """Any boxes, any jitter: outputs finite, boxes inside [0, 1], none under 1 px, images in [0, 1]."""
    rows = [[i % 3, 0, (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0), abs(y1 - y0)] for i, (x0, y0, x1, y1) in
            enumerate(boxes)]
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cfg = AugmentConfig(jitter=jitter, hue=0.2, saturation=2.0, exposure=2.0, flip=True, mosaic=mosaic,
                        letterbox=letterbox)
    img, b = augment_batch(images, t, out, cfg, torch.Generator().manual_seed(seed))
    assert img.shape == (3, 3, out, out) and torch.isfinite(img).all()
    assert img.min() >= 0 and img.max() <= 1
    assert torch.isfinite(b).all()
    x0, x1 = b[:, 2] - b[:, 4] / 2, b[:, 2] + b[:, 4] / 2
    y0, y1 = b[:, 3] - b[:, 5] / 2, b[:, 3] + b[:, 5] / 2
    assert (x0 >= -1e-5).all() and (x1 <= 1 + 1e-5).all() and (y0 >= -1e-5).all() and (y1 <= 1 + 1e-5).all()
    assert (b[:, 4] * out >= 1 - 1e-4).all() and (b[:, 5] * out >= 1 - 1e-4).all()
    assert ((b[:, 0] >= 0) & (b[:, 0] < 3)).all()
    assert len(b) <= (4 if mosaic else 1) * len(t)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 5))
def test_flip_twice_is_identity(seed, n):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=g)
    t = torch.cat([torch.randint(0, 2, (n, 1)).float(), torch.rand((n, 5), generator=g)], 1)
    again = hflip(*hflip(images, t))
    assert torch.equal(again[0], images) and torch.allclose(again[1], t, atol=1e-6)
    # and through the sampler: flip-only parameters applied twice give the image back
    p = BatchParams(torch.arange(2)[:, None], torch.tensor([[[0.0, 0.0, 24.0, 24.0]]]).repeat(2, 1, 1),
                    torch.zeros(2, 1, 4), torch.ones(2, dtype=torch.bool), torch.zeros(2), torch.ones(2),
                    torch.ones(2))
    once, _ = apply_params(images, t[:0], p, 24, with_hue=False)
    assert torch.equal((once * 255).round().to(torch.uint8), images.flip(-1))
    twice, _ = apply_params((once * 255).round().to(torch.uint8), t[:0], p, 24, with_hue=False)
    assert torch.equal((twice * 255).round().to(torch.uint8), images)


def test_degenerate_boxes_are_dropped():
    images = torch.zeros((2, 3, 64, 64), dtype=torch.uint8)
    t = torch.tensor([[0, 0, 0.5, 0.5, 0.001, 0.3],  # under 1 px wide
                      [0, 1, 0.5, 0.5, 0.3, 0.3],  # fine
                      [1, 0, 0.5, 0.5, 0.0, 0.0],  # padding row
                      [1, 2, 1.2, 0.5, 0.2, 0.2]])  # wholly outside the image
    _, out = augment_batch(images, t, 64, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out[:, 1].tolist() == [1.0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.zeros((1, 3, 8, 8)), torch.zeros((0, 6)), 8, FULL)
    with pytest.raises(ValueError, match="targets"):
        augment_batch(torch.zeros((1, 3, 8, 8), dtype=torch.uint8), torch.zeros((0, 5)), 8, FULL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu_for_same_params():
    images, t = _white_rects(8, 96, seed=4)
    cfg = AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True, mosaic=True)
    p = sample_params(8, cfg, 96, torch.Generator().manual_seed(0))
    a_img, a_t = apply_params(images, t, p, 96)
    b_img, b_t = apply_params(images.cuda(), t.cuda(), p, 96)
    assert (a_img - b_img.cpu()).abs().max() < 2e-3
    assert torch.allclose(a_t, b_t.cpu(), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_has_no_host_sync():
    """compact=False on CUDA with a CUDA generator: no synchronising call at all (set_sync_debug_mode)."""
    from dataclasses import replace

    images, t = _white_rects(8, 96, seed=4)
    images, t = images.cuda(), t.cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    cfg = AugmentConfig(jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5, flip=True, mosaic=True)
    augment_batch(images, t, 96, cfg, g, compact=False)  # warm-up: lazy initialisation may synchronise
    augment_batch(images, t, 96, replace(cfg, mosaic=False, hue=0.0), g, compact=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment_batch(images, t, 128, cfg, g, compact=False)
        augment_batch(images, t, 96, replace(cfg, mosaic=False, hue=0.0), g, compact=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
