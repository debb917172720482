"""Figures of the experiment report, as PNG bytes: every run's mAP against iterations on one figure (the
study's Fig. 4) and mAP against the number of training images. Matplotlib with the Agg backend, no display.
"""

from __future__ import annotations

from darktune.report_data import ExperimentData, main_images, mean_or_none

LINESTYLES = ("-", "--", ":", "-.")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(data: ExperimentData) -> bytes:
    """mAP (%) against iterations of every grid run: colour = starting point, line style = frozen layers."""
    from darktune.report import png_bytes

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(data.starts())}
    styles = {f: LINESTYLES[i % len(LINESTYLES)] for i, f in enumerate(data.freezes())}
    main = main_images(data)
    several_seeds = len({r.seed for r in data.grid}) > 1
    for r in data.grid:
        points = sorted({e.iteration: e.map for e in r.evals}.items())
        if not points:
            continue
        xs, ys = zip(*points)
        faint = r.images != main
        label = f"{r.start_label} N={r.freeze}" + (f" {r.images} img" if faint else "") + \
            (f" seed {r.seed}" if several_seeds else "")
        ax.plot(xs, [100 * y for y in ys], styles[r.freeze], color=colours[r.start_label], marker=".",
                markersize=4, linewidth=0.8 if faint else 1.6, alpha=0.45 if faint else 1.0, label=label)
    if data.target_map is not None:
        ax.axhline(100 * data.target_map, color="grey", linewidth=0.8, linestyle="--", label="target")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"mAP % ({'/'.join(data.protocols()) or 'darknet'})")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("mAP against iterations, every run")
    try:
        return png_bytes(fig)
    finally:
        plt.close(fig)


def images_figure(data: ExperimentData) -> bytes:
    """Final mAP (%) against the number of training images, one line per (start, frozen layers)."""
    from darktune.report import png_bytes

    plt = _pyplot()
    counts = sorted({r.images for r in data.grid if r.images is not None})
    all_x = (max(counts) * 2 if counts else 1)  # where "all" is drawn when its count is unknown
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
                ax.plot(xs, ys, LINESTYLES[j % len(LINESTYLES)], marker="o", color=plt.cm.tab10(i % 10),
                        label=f"{start} N={freeze}")
    ax.set_xscale("log")
    ax.set_xlabel("training images ('all' drawn at the set's size)")
    ax.set_ylabel("final mAP %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    try:
        return png_bytes(fig)
    finally:
        plt.close(fig)
