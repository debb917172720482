"""Figures of the experiment report, as PNG bytes: every run's mAP against iterations on one figure (the
study's Fig. 4) and mAP against the number of training images. Matplotlib with the Agg backend, no display.
"""

from __future__ import annotations

import io

from darktune.report.data import ExperimentData, main_images, mean_or_none

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")  # one per frozen count, so legend entries differ where a marker hides the dash


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve_groups(data: ExperimentData) -> dict[tuple, list]:
    """Grid runs grouped by (start, frozen layers, images): the seeds of one grid point."""
    groups: dict[tuple, list] = {}
    for r in data.grid:
        groups.setdefault((r.start_label, r.freeze, r.images), []).append(r)
    return groups


def _mean_curve(runs: list) -> tuple[list[int], list[float], list[float], list[float]]:
    """(iterations, mean, min, max) of mAP (%) over the runs at every iteration any of them evaluated; an
    evaluation at iteration 0 (the start weights) is a point like any other."""
    by_it: dict[int, list[float]] = {}
    for r in runs:
        for it, m in {e.iteration: e.map for e in r.evals}.items():  # the last line of an iteration wins
            by_it.setdefault(it, []).append(100 * m)
    its = sorted(by_it)
    return (its, [sum(by_it[i]) / len(by_it[i]) for i in its], [min(by_it[i]) for i in its],
            [max(by_it[i]) for i in its])


def _legend_or_note(ax) -> None:
    """The legend beside the axes; on a figure without any line (every run failed or has not been evaluated)
    a note in its place, and no matplotlib warning about an empty legend."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no run has an evaluation to draw (see the runs table)", ha="center", va="center",
                transform=ax.transAxes, color="grey")


def curves_figure(data: ExperimentData) -> bytes:
    """mAP (%) against iterations of every grid point: colour = starting point, line style = frozen layers;
    with several seeds the line is their mean and the band their range (min..max)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(data.starts())}
    styles = {f: LINESTYLES[i % len(LINESTYLES)] for i, f in enumerate(data.freezes())}
    main = main_images(data)
    for (start, freeze, images), runs in _curve_groups(data).items():
        its, mid, low, high = _mean_curve(runs)
        if not its:
            continue
        faint = images != main
        seeds = len({r.seed for r in runs})
        label = f"{start} N={freeze}" + (f" {images} img" if faint else "") + \
            (f" (mean of {seeds} seeds)" if seeds > 1 else "")
        ax.plot(its, mid, styles[freeze], color=colours[start], marker=".", markersize=4,
                linewidth=0.8 if faint else 1.6, alpha=0.45 if faint else 1.0, label=label)
        if seeds > 1:
            ax.fill_between(its, low, high, color=colours[start], alpha=0.08 if faint else 0.15, linewidth=0)
    if data.target_map is not None:
        ax.axhline(100 * data.target_map, color="grey", linewidth=0.8, linestyle="--", label="target")
    ax.set_xlabel("iteration (0: the start weights, when evaluated)")
    ax.set_ylabel(f"mAP % ({'/'.join(data.protocols()) or 'darknet'})")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend_or_note(ax)
    several = any(len(runs) > 1 for runs in _curve_groups(data).values())
    ax.set_title("mAP against iterations" + (": mean over seeds, band = min..max" if several else ", every run"))
    try:
        return png_bytes(fig)
    finally:
        plt.close(fig)


def images_figure(data: ExperimentData) -> bytes:
    """Final mAP (%) against the number of training images, one line per (start, frozen layers)."""
    plt = _pyplot()
    counts = sorted({r.images for r in data.grid if r.images is not None})
    all_x = (max(counts) * 2 if counts else 1)  # where "all" is drawn when its count is unknown
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ticks: set[float] = set()
    for i, start in enumerate(data.starts()):
        for j, freeze in enumerate(data.freezes()):
            xs, ys = [], []
            for n in counts + [None]:
                runs = data.select(start, freeze, n)
                value = mean_or_none([r.final_map() for r in runs])
                if value is None:
                    continue
                n_all = next((r.summary.get("train_images") for r in runs if r.summary.get("train_images")), None)
                xs.append(n if n is not None else (n_all or all_x))
                ys.append(100 * value)
            if xs:
                ax.plot(xs, ys, LINESTYLES[j % len(LINESTYLES)], marker=MARKERS[j % len(MARKERS)], markersize=5,
                        color=plt.cm.tab10(i % 10), label=f"{start} N={freeze}")
                ticks.update(xs)
    ax.set_xscale("log")
    if ticks:  # the image counts themselves as ticks, written plainly (not 2x10^1)
        ax.set_xticks(sorted(ticks), [str(int(t)) for t in sorted(ticks)])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("training images ('all' drawn at the set's size)")
    ax.set_ylabel("final mAP %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend_or_note(ax)
    try:
        return png_bytes(fig)
    finally:
        plt.close(fig)


def png_bytes(fig) -> bytes:
    """A figure as PNG bytes, without the Software tag, so the same figure gives the same bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def models_figure(curves: dict[tuple[str, str], list[tuple[int, float, float]]], models: list[str],
                  target: float | None) -> bytes:
    """Two models side by side: mAP (%) against iterations (left) and against training seconds (right).
    `curves`: (model, starting point) -> [(iteration, seconds, mAP %)]; colour = starting point, line style =
    model, so the eye compares a start's two lines and sees on the right which model gets to the target first."""
    plt = _pyplot()
    fig, (by_it, by_s) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    starts = list(dict.fromkeys(start for _, start in curves))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(starts)}
    styles = {m: LINESTYLES[i % len(LINESTYLES)] for i, m in enumerate(models)}
    for (model, start), points in curves.items():
        if not points:
            continue
        its, secs, maps = zip(*points)
        for ax, xs in ((by_it, its), (by_s, secs)):
            ax.plot(xs, maps, styles[model], color=colours[start], marker=MARKERS[models.index(model) % 4],
                    markersize=3, linewidth=1.5, label=f"{start}, {model}")
    for ax, label in ((by_it, "iteration"), (by_s, "training seconds (evaluation excluded)")):
        if target is not None:
            ax.axhline(100 * target, color="grey", linewidth=0.8, linestyle="--", label="target")
        ax.set_xlabel(label)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    by_it.set_ylabel("mAP % (darknet)")
    by_it.set_title("mAP against iterations")
    by_s.set_title("mAP against wall-clock training time")
    _legend_or_note(by_s)
    try:
        return png_bytes(fig)
    finally:
        plt.close(fig)
