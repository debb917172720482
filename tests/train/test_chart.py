"""RUN/chart.png (`darktune.train.chart`): the mAP labels clear their markers, the loss average scales with the run and
the legend says its window."""

import json

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from darktune.train.chart import plot_loss, plot_map, smoothing_window, write_chart


@pytest.fixture
def fig():
    figure, ax = plt.subplots(figsize=(9, 5.2), dpi=110)  # write_chart's size
    yield figure, ax
    plt.close(figure)


def test_map_labels_sit_clear_of_their_markers(fig):
    figure, ax = fig
    ax2 = ax.twinx()
    evals = [{"iteration": i, "map": m, "protocol": "darknet"} for i, m in ((0, 0.0), (5, 0.12), (10, 0.55),
                                                                            (20, 1.0))]
    plot_map(ax2, evals, 0.9)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    line = ax2.lines[0]
    px = figure.dpi / 72
    marker_top = (line.get_markersize() + line.get_markeredgewidth()) / 2 * px  # above the point, in pixels
    assert len(ax2.texts) == 4
    for text in ax2.texts:
        box = text.get_window_extent(renderer)
        _, y = ax2.transData.transform(text.xy)
        assert (box.y0 - y - marker_top) / px >= 2, text.get_text()  # at least 2 pt of gap above the marker
        assert box.y1 <= ax2.get_window_extent(renderer).y1, text.get_text()  # inside the axes, even at 100 %


@pytest.mark.parametrize("n, window", [(5, 1), (39, 1), (60, 3), (99, 4), (100, 5), (1000, 50)])
def test_smoothing_window_scales_with_the_run(n, window):
    assert smoothing_window(n) == window


def test_short_run_loss_is_averaged_and_the_legend_says_over_how_many(fig):
    _, ax = fig
    loss = [5.0 if i % 2 else 1.0 for i in range(60)]  # a zigzag: any average flattens it
    plot_loss(ax, [{"iteration": i + 1, "loss": v, "box": v, "obj": v, "cls": v} for i, v in enumerate(loss)])
    avg = [ln for ln in ax.lines if ln.get_label().startswith("loss")]
    assert [ln.get_label() for ln in avg] == ["loss (avg of 3 logged iterations)"]
    assert list(avg[0].get_ydata()[2:]) == pytest.approx([7 / 3 if i % 2 == 0 else 11 / 3 for i in range(2, 60)])
    _, ax_short = plt.subplots()
    plot_loss(ax_short, [{"iteration": i + 1, "loss": v} for i, v in enumerate(loss[:10])])
    assert [ln.get_label() for ln in ax_short.lines if ln.get_label().startswith("loss")] == [
        "loss (not averaged: a short run)"]


def test_write_chart_draws_a_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"iteration": i, "loss": 1 / i} for i in range(1, 30)] + [{"iteration": 29, "map": 0.5}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = write_chart(metrics, tmp_path / "chart.png", "t", 0.9)
    assert out is not None and out.read_bytes()[:4] == b"\x89PNG"


def test_a_loss_that_starts_high_gets_a_log_axis_so_the_rest_is_not_flat(fig):
    _, ax = fig
    loss = [800.0 / (i + 1) ** 2 + 2 + 0.5 * (i % 3) for i in range(200)]  # 802 at the start, 2..3 after
    plot_loss(ax, [{"iteration": i + 1, "loss": v} for i, v in enumerate(loss)])
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss (log scale)"
    low, high = ax.get_ylim()
    assert low < 2 and high > 802
    _, flat = plt.subplots()
    plot_loss(flat, [{"iteration": i + 1, "loss": 3.0 - i / 100} for i in range(200)])  # no early spike
    assert flat.get_yscale() == "linear" and flat.get_ylim()[0] == 0
