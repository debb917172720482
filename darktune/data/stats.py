"""Dataset statistics: class counts, box size and aspect distributions, and k-means anchors.

`kmeans_anchors` follows darknet's `calc_anchors`: k-means on box (w, h) with distance 1 - IoU, where the IoU
of two shapes puts both boxes at the same corner; the quality figure is the mean over boxes of the best IoU
with any anchor. Initialisation is k-means++ (seeded) with a few restarts, keeping the best mean IoU.
Plots are drawn with matplotlib's Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from darktune.data.dataset import Dataset
from darktune.data.tile_advice import tiling_advice
from darktune.errors import DarktuneError
from darktune.plural import plural

MISSING_SHOWN = 20  # missing images named in the text report (all of them in to_dict)


def wh_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (n, m) of box shapes a (n, 2) and b (m, 2) placed at a common corner."""
    a = np.asarray(a, np.float64).reshape(-1, 2)
    b = np.asarray(b, np.float64).reshape(-1, 2)
    inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    union = (a[:, 0] * a[:, 1])[:, None] + (b[:, 0] * b[:, 1])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _kmeanspp(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = 1.0 - wh_iou(wh, np.array(centres)).max(1)
        d2 = d * d
        total = d2.sum()
        idx = rng.choice(len(wh), p=d2 / total) if total > 0 else rng.integers(len(wh))
        centres.append(wh[idx])
    return np.array(centres)


def _lloyd(wh: np.ndarray, centres: np.ndarray, max_iter: int) -> np.ndarray:
    assign = None
    for _ in range(max_iter):
        iou = wh_iou(wh, centres)
        new_assign = iou.argmax(1)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(len(centres)):
            members = wh[assign == j]
            if len(members):
                centres[j] = members.mean(0)
            else:  # empty cluster: move it to the worst-served box
                centres[j] = wh[iou.max(1).argmin()]
    return centres


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, *, n_init: int = 3,
                   max_iter: int = 300) -> tuple[np.ndarray, float]:
    """Anchors (k, 2) sorted by area, and the mean best IoU of the boxes with them (darknet calc_anchors).
    `wh` (n, 2) positive box sizes in any unit; the anchors come in the same unit."""
    wh = np.asarray(wh, np.float64)
    if wh.ndim != 2 or wh.shape[1] != 2 or not np.all(np.isfinite(wh)) or np.any(wh <= 0):
        raise DarktuneError("box sizes must be an (n, 2) array of positive finite numbers")
    if k < 1:
        raise DarktuneError(f"k must be >= 1, got {k}")
    n_distinct = len(np.unique(wh, axis=0))
    if n_distinct < k:
        raise DarktuneError(f"cannot make {plural(k, 'anchor')} from {plural(n_distinct, 'distinct box shape')} "
                            f"(needs at least {k})")
    rng = np.random.default_rng(seed)
    best, best_iou = None, -1.0
    for _ in range(max(1, n_init)):
        centres = _lloyd(wh, _kmeanspp(wh, k, rng), max_iter)
        mean_iou = float(wh_iou(wh, centres).max(1).mean())
        if mean_iou > best_iou:
            best, best_iou = centres, mean_iou
    order = np.argsort(best[:, 0] * best[:, 1], kind="stable")
    return best[order], best_iou


@dataclass
class DatasetStats:
    """Figures of a dataset. Sizes are normalised; anchors are in pixels at the network size. Images that are
    not on disk are left out of every figure and counted (`missing_images`); `skipped` holds the records the
    readers skipped. `anchors_not_computed` says why there are no anchors when some were asked for."""

    n_images: int
    n_empty_images: int
    n_boxes: int
    class_counts: dict[str, int]
    boxes_per_image: dict[str, float]
    width: dict[str, float]
    height: dict[str, float]
    area: dict[str, float]
    aspect: dict[str, float]
    size: tuple[int, int] = (416, 416)
    anchors: list[list[float]] = field(default_factory=list)
    anchors_mean_iou: float | None = None
    anchors_not_computed: str | None = None
    n_missing_images: int = 0
    missing_images: list[str] = field(default_factory=list)
    n_skipped_records: int = 0
    skipped: list[dict] = field(default_factory=list)
    source: str | None = None
    tiling: dict | None = None  # darktune.data.tile_advice: whether to tile, which tile size and overlap

    def to_dict(self) -> dict:
        return asdict(self)

    def anchors_cfg(self) -> str:
        """The `anchors = ...` line for a darknet cfg (rounded, as calc_anchors prints them)."""
        return ", ".join(f"{round(w)},{round(h)}" for w, h in self.anchors)


def _summary(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    q = np.percentile(x, [0, 5, 25, 50, 75, 95, 100])
    return dict(zip(("min", "p5", "p25", "median", "p75", "p95", "max"), (float(v) for v in q))) | {
        "mean": float(np.mean(x))}


def box_shapes(dataset: Dataset) -> np.ndarray:
    """(n, 2) normalised (w, h) of every box."""
    return np.array([(b.w, b.h) for rec in dataset.images for b in rec.boxes], np.float64).reshape(-1, 2)


def images_on_disk(dataset: Dataset) -> tuple[Dataset, list[Path]]:
    """(the dataset without the images that are not files on disk, the paths of those images)."""
    present, missing = [], []
    for rec in dataset.images:
        (present if Path(rec.path).is_file() else missing).append(rec)
    return Dataset(list(dataset.classes), present, list(dataset.skipped)), [Path(r.path) for r in missing]


def dataset_stats(dataset: Dataset, anchors_k: int | None = 6, size: tuple[int, int] = (416, 416),
                  seed: int = 0, *, check_files: bool = True, source: str | None = None) -> DatasetStats:
    """Counts and distributions; anchors_k anchors (None or 0: none) at network `size` (w, h) in pixels.
    check_files: images that are not files on disk are counted as missing and left out (off for a dataset
    that lives only in memory). Fewer distinct box shapes than anchors_k: no anchors, and the reason in
    `anchors_not_computed` (the figures are still made)."""
    missing: list[Path] = []
    if check_files:
        dataset, missing = images_on_disk(dataset)
    wh = box_shapes(dataset)
    per_image = np.array([len(r.boxes) for r in dataset.images], np.float64)
    stats = DatasetStats(
        n_images=len(dataset.images), n_empty_images=int((per_image == 0).sum()), n_boxes=len(wh),
        class_counts=dataset.class_counts(), boxes_per_image=_summary(per_image), width=_summary(wh[:, 0]),
        height=_summary(wh[:, 1]), area=_summary(wh[:, 0] * wh[:, 1]), aspect=_summary(wh[:, 0] / wh[:, 1]),
        size=(int(size[0]), int(size[1])), n_missing_images=len(missing), missing_images=[str(p) for p in missing],
        n_skipped_records=len(dataset.dropped),
        skipped=[p.to_dict() for p in dataset.skipped], source=source, tiling=tiling_advice(dataset, size))
    if anchors_k:
        n_distinct = len(np.unique(wh, axis=0))
        if n_distinct < anchors_k:
            why = f"ask for {n_distinct} or fewer" if n_distinct else "no boxes"
            stats.anchors_not_computed = (f"cannot make {plural(anchors_k, 'anchor')} from "
                                          f"{plural(n_distinct, 'distinct box shape')} ({why})")
        else:
            anchors, mean_iou = kmeans_anchors(wh * np.asarray(size, np.float64), anchors_k, seed)
            stats.anchors, stats.anchors_mean_iou = anchors.tolist(), mean_iou
    return stats


def format_stats(stats: DatasetStats) -> str:
    head = f"{plural(stats.n_images, 'image')} ({stats.n_empty_images} without boxes), {plural(stats.n_boxes, 'box')}"
    if stats.n_missing_images:
        head += f"; {plural(stats.n_missing_images, 'image')} not found on disk (left out of these figures)"
    if stats.n_skipped_records:
        head += f"; {plural(stats.n_skipped_records, 'record')} skipped (see the 'skipped:' lines)"
    lines = [head]
    lines += [f"  not found: {p}" for p in stats.missing_images[:MISSING_SHOWN]]
    if stats.n_missing_images > MISSING_SHOWN:
        lines.append(f"  not found: ... and {stats.n_missing_images - MISSING_SHOWN} more (all in --json)")
    lines += [f"  {name:<24} {count:>8}" for name, count in stats.class_counts.items()]
    for label, d in (("boxes/image", stats.boxes_per_image), ("width", stats.width), ("height", stats.height),
                     ("area", stats.area), ("aspect w/h", stats.aspect)):
        if d:
            lines.append(f"{label:<12} min {d['min']:.4g}  p5 {d['p5']:.4g}  median {d['median']:.4g}  "
                         f"p95 {d['p95']:.4g}  max {d['max']:.4g}")
    if stats.anchors:
        lines.append(f"anchors at {stats.size[0]}x{stats.size[1]} (mean IoU {stats.anchors_mean_iou:.4f}): "
                     f"{stats.anchors_cfg()}")
    elif stats.anchors_not_computed:
        where = f" for {stats.source}" if stats.source else ""
        lines.append(f"anchors not computed{where}: {stats.anchors_not_computed}")
    if stats.tiling:
        lines.append(stats.tiling["advice"])
    return "\n".join(lines)


def plot_stats(dataset: Dataset, stats: DatasetStats, out_png: str | Path) -> Path:
    """PNG with class counts, box (w, h) with anchors, area and aspect histograms (of the images `stats`
    counted: those it found missing are left out here too)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    missing = set(stats.missing_images)
    wh = box_shapes(Dataset(list(dataset.classes), [r for r in dataset.images if str(r.path) not in missing]))
    fig = Figure(figsize=(11, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2)
    ax[0, 0].bar(range(len(stats.class_counts)), list(stats.class_counts.values()))
    ax[0, 0].set_xticks(range(len(stats.class_counts)), list(stats.class_counts), rotation=45, ha="right")
    ax[0, 0].set_title("boxes per class")
    ax[0, 1].scatter(wh[:, 0], wh[:, 1], s=3, alpha=0.3, label="boxes")
    if stats.anchors:
        a = np.asarray(stats.anchors) / np.asarray(stats.size, np.float64)
        ax[0, 1].scatter(a[:, 0], a[:, 1], marker="x", s=60, c="red", label="anchors")
    ax[0, 1].set(xlabel="w (fraction of image)", ylabel="h (fraction of image)", title="box sizes")
    ax[0, 1].legend()
    if len(wh):
        ax[1, 0].hist(np.log10(wh[:, 0] * wh[:, 1]), bins=40)
        ax[1, 1].hist(np.log2(wh[:, 0] / wh[:, 1]), bins=40)
    ax[1, 0].set(xlabel="log10 area (fraction of image)", title="box area")
    ax[1, 1].set(xlabel="log2 aspect (w/h)", title="box aspect")
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out)
    return out
