"""RUN/chart.png: loss and mAP over iterations (darknet's chart.png, with loss parts, lr and the target).

The loss is drawn raw (faint) and as a trailing moving average over `smoothing_window` logged iterations, which
scales with the run (a twentieth of its logged iterations, at least 1); the legend says how many. Each mAP point
carries its value, set above its marker with a gap (`LABEL_OFFSET_PT`) on a light background, so neither the
marker nor the line hides it. The loss axis is logarithmic when the first iterations' loss dwarfs the rest
(`log_axis`), so the curve after burn-in is not a flat line at the bottom; else linear from 0."""

from __future__ import annotations

import io

import json
from pathlib import Path

from darktune.files import atomic_write_bytes

LABEL_OFFSET_PT = 7  # mAP value labels: their bottom this far above the point (the marker's radius is 3 pt)
LOG_SPAN = 10  # the loss axis is logarithmic when the first loss is over this many times the later ones


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training lines, evaluation lines) of a metrics.jsonl; unreadable lines are skipped."""
    train, evals = [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return train, evals
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "iteration" not in rec:
            continue
        (evals if "map" in rec else train).append(rec)
    return train, evals


def _smooth(values: list[float], k: int) -> list[float]:
    out, acc, window = [], 0.0, []
    for v in values:
        window.append(v)
        acc += v
        if len(window) > k:
            acc -= window.pop(0)
        out.append(acc / len(window))
    return out


def smoothing_window(n_points: int) -> int:
    """Moving-average window for `n_points` logged losses: a twentieth of the run (5 for 100), at least 1."""
    return max(1, n_points // 20)


def log_axis(loss: list[float]) -> bool:
    """A log loss axis when the loss spans more than `LOG_SPAN` times (a fresh head's first iterations' loss is
    often a hundred times its loss after burn-in) and stays positive."""
    return bool(loss) and min(loss) > 0 and max(loss) > LOG_SPAN * min(loss[len(loss) // 10:] or loss)


def plot_loss(ax, train: list[dict]) -> None:
    """Loss on `ax`: raw (faint, unlabelled) and averaged over `smoothing_window` points, and its parts."""
    rows = [r for r in train if r.get("loss") is not None]
    its, loss = [r["iteration"] for r in rows], [r["loss"] for r in rows]
    k = smoothing_window(len(loss))
    if loss:
        ax.plot(its, loss, color="#1f77b4", alpha=0.25, lw=0.8)
        label = "loss (not averaged: a short run)" if k == 1 else f"loss (avg of {k} logged iterations)"
        ax.plot(its, _smooth(loss, k), color="#1f77b4", lw=1.6, label=label)
        for part, color in (("box", "#2ca02c"), ("obj", "#9467bd"), ("cls", "#8c564b")):
            vals = [r.get(part) for r in rows]
            if all(v is not None for v in vals):
                ax.plot(its, _smooth(vals, k), color=color, lw=0.9, ls="--", label=part)
        if log_axis(loss):  # the first iterations' loss would flatten the rest of the curve on a linear axis
            ax.set_yscale("log")
            parts = [r.get(k) for r in rows for k in ("box", "obj", "cls")]
            floor = min([v for v in parts if isinstance(v, (int, float)) and v > 0] + loss)
            ax.set_ylim(floor / 1.25, max(loss) * 1.25)  # the parts, below the total, stay in view
        else:
            ax.set_ylim(0, max(loss) * 1.05)
    ax.set_xlabel("iteration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("loss (log scale)" if ax.get_yscale() == "log" else "loss")
    ax.grid(alpha=0.3)


def plot_map(ax2, evals: list[dict], target_map: float | None) -> None:
    """mAP % on `ax2` (the right axis), each point labelled with its value above its marker; the target line."""
    ex = [r["iteration"] for r in evals]
    ey = [100 * r["map"] for r in evals]
    ax2.plot(ex, ey, color="#d62728", marker="o", lw=1.6, label=f"mAP % ({evals[-1].get('protocol', '')})")
    for x, y in zip(ex, ey):
        ax2.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, LABEL_OFFSET_PT), ha="center",
                     va="bottom", fontsize=7, color="#d62728", zorder=4,
                     bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    if target_map is not None:
        ax2.axhline(100 * target_map, color="#d62728", ls=":", lw=1, label=f"target {100 * target_map:g}%")
    ax2.set_ylim(0, 110)  # room for the label of a point near 100
    ax2.set_ylabel("mAP %")


def write_chart(metrics_path: str | Path, out_path: str | Path, title: str = "", target_map: float | None = None
                ) -> Path | None:
    """Draw the chart from metrics.jsonl; returns the PNG path (None when there is nothing to draw)."""
    train, evals = read_metrics(metrics_path)
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    plot_loss(ax, train)
    handles, labels = ax.get_legend_handles_labels()
    if evals:
        ax2 = ax.twinx()
        plot_map(ax2, evals, target_map)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or "training", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.92, top=0.92, bottom=0.1)  # fixed margins: tight_layout is slow
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(out_path, buf.getvalue())
