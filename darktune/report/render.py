"""The experiment report: DIR/report.md (figures as PNG files beside it) and DIR/report.html (self-contained,
figures embedded as base64). Both are rendered from one list of blocks, built from report_data and
report_findings, so the two files always say the same thing.

Owns: `write_report(out_dir) -> ReportPaths`, `build_blocks(data)`, the two renderers and the figures
(Fig. 4 style mAP vs iterations of every run; mAP vs number of training images).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from darktune.report import study
from darktune.plural import plural
from darktune.report.data import (
    ExperimentData,
    best_transfer_decrease,
    eval_iterations,
    its_text,
    load_experiment,
    main_images,
    start_map,
    table_levels,
    time_to_target,
)
from darktune.report.findings import (
    BEAT_MARGIN,
    CLEAR_MARGIN,
    NOTHING_LEARNED,
    findings,
)
from darktune.report.machine import machine_lines
from darktune.files import atomic_write_bytes
from darktune.report.plots import curves_figure, images_figure


@dataclass(frozen=True)
class Block:
    kind: str  # "h2" | "h3" | "p" | "list" | "table" | "image"
    text: str = ""
    items: tuple = ()  # list items, or table rows
    header: tuple = ()
    image: bytes = b""
    filename: str = ""


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    damaged: tuple[str, ...] = ()  # runs whose files were refused (one line each, naming the file)


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _seed_cell(values: list[float]) -> str:
    if not values:
        return "–"
    m = sum(values) / len(values)
    if len(values) == 1:
        return pct(m)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{pct(m)} ± {pct(sd)} ({len(values)} seeds)"


def _images_text(images: int | None) -> str:
    return "all" if images is None else str(images)


def start_table(data: ExperimentData, start: str, protocol: str) -> list[Block]:
    """One table per starting point in the study's layout: rows N x iteration, our mAP beside the study's."""
    images = main_images(data)
    its = eval_iterations(data, start)
    runs = data.select(start, None, images)
    plan_start = runs[0].start if runs else start
    table = study.table_for(plan_start)
    title = f"Starting point `{start}`"
    if table:
        title += f" (faces the study's {table.name}, whose start was: {table.description})"
    header = ("frozen N", "iteration", f"mAP % ours ({protocol})")
    if table:
        header += ("study iteration", f"study mAP % ({study.STUDY_PROTOCOL})")
    rows = []
    start_row = any(e.iteration == 0 for r in runs for e in r.evals)  # the start weights, evaluated
    for freeze in data.freezes():
        if not data.select(start, freeze, images):
            continue
        for it in ([0] if start_row else []) + its:
            values = [v for r in data.select(start, freeze, images) for v in [r.map_at(it)] if v is not None]
            row = (str(freeze), str(it), _seed_cell(values))
            if table:
                s_it = study.study_iteration(table, its, it) if it else None
                cell = table.cell(freeze, s_it) if s_it is not None else None
                where = "0 (start weights)" if it == 0 else (str(s_it) if s_it is not None else "layout differs")
                row += (where, cell.text() if cell else "–")
            rows.append(row)
    note = f"Training images: {_images_text(images)}."
    seeds = sorted({r.seed for r in runs})
    if len(seeds) > 1:
        note += (f" Each cell: mean ± standard deviation over the {len(seeds)} training seeds "
                 f"({', '.join(map(str, seeds))}).")
    if start_row:
        note += " Iteration 0 is the start weights, evaluated before any training."
    described = data.record.get("starts", {}).get(plan_start, {}).get("description", "")
    if "STAND-IN" in described:
        note += f" This start is a stand-in: {described}."
    if table:
        note += (" The study column faces our evaluation point at the same fraction of the run (the study's own "
                 "iteration is shown); '–' where the study's number is not in our notes (darktune/study.py).")
    return [Block("h3", title), Block("table", items=tuple(rows), header=header), Block("p", note)]


def time_table(data: ExperimentData) -> list[Block]:
    target = data.target_map
    if target is None:
        return [Block("p", "No target mAP in the spec (grid.target_map): no time-to-target table.")]
    images = main_images(data)
    rows = []
    for start in data.starts():
        for freeze in data.freezes():
            t = time_to_target(data, start, freeze, images)
            if t is None:
                continue
            if t.iterations is not None:
                its = its_text(t.iterations)
            elif t.unfinished:
                its = f"unknown: {t.unfinished} of {t.seeds} runs did not finish"
            else:
                its = f"not reached in {t.max_iterations}"
            secs = f"{t.seconds:.1f}" if t.seconds is not None else "–"
            rows.append((start, str(freeze), its, secs, f"{t.reached_seeds}/{t.seeds}"))
    blocks = [Block("p", f"First evaluation at which the mAP reaches the target {pct(target)}% (mean over seeds; "
                         "seconds are the run's training clock at that evaluation, evaluations and checkpoints "
                         f"excluded). Training images: {_images_label(data, images)}."),
              Block("table", items=tuple(rows), header=("start", "frozen N", "iterations to target",
                                                       "seconds to target", "seeds reaching it"))]
    lines = []
    for freeze in data.freezes():
        dec = best_transfer_decrease(data, freeze, images)
        if dec is None:
            continue
        base = (its_text(dec.partial_iterations) if dec.partial_iterations is not None
                else f"more than {dec.partial_max}")
        bound = "at least " if dec.lower_bound else ""
        secs = (f", {dec.seconds_fraction * 100:.0f}% fewer training seconds" if dec.seconds_fraction is not None
                else "")
        lines.append(f"N={freeze}: best transfer path `{dec.best}` needs {its_text(dec.best_iterations)} iterations, "
                     f"{data.partial} "
                     f"{base}: **{bound}{dec.fraction * 100:.0f}% fewer iterations**{secs} (the study: "
                     f"{study.HEADLINE_DECREASE * 100:.0f}% less time).")
    if lines:
        blocks.append(Block("list", items=tuple(lines)))
    blocks += sensitivity_blocks(data, images)
    if data.stages:
        cost = ", ".join(f"`{r.name}` {r.plan['iterations']} iterations"
                         + (f" ({plural(round(r.train_s), 'training second')})" if r.train_s is not None else "")
                         for r in data.stages)
        blocks.append(Block("p", f"These figures count the target runs only, not the pretraining stages they "
                                 f"start from ({cost}): a stage is paid once and reused by every run after it."))
    return blocks


def sensitivity_blocks(data: ExperimentData, images: int | None) -> list[Block]:
    """Time to target at the spec's target and at others from 50 mAP up (N=0): a decrease that holds only at a
    target the start weights already meet says little about training speed, and one that holds only at one
    target says little about the starts."""
    rows = []
    for level in table_levels(data):
        base = time_to_target(data, data.partial, 0, images, level)
        dec = best_transfer_decrease(data, 0, images, level)
        if base is None:
            break
        label = pct(level) + (" (target)" if abs(level - data.target_map) < 1e-9 else "")
        coco = its_text(base.iterations) if base.iterations is not None else f"not reached in {base.max_iterations}"
        if dec is None:
            if base.iterations is None:
                break
            rows.append((label, coco, "–", "–", "no transfer path reached it"))
            continue
        bound = "at least " if dec.lower_bound else ""
        rows.append((label, coco, f"`{dec.best}`", its_text(dec.best_iterations),
                     f"{bound}{dec.fraction * 100:.0f}%"))
    if len(rows) < 2:
        return []
    starts = [f"`{s}` {pct(m)}" for s in data.starts() for m in [start_map(data, s, 0, images)] if m is not None]
    text = ("The same with N=0 at other targets (mean iterations over seeds; a start counts only where every seed "
            "reached the target).")
    if starts:
        text += " mAP of the start weights (iteration 0): " + ", ".join(starts) + "."
    return [Block("p", text), Block("table", items=tuple(rows), header=(
        "target mAP %", f"{data.partial} iterations", "best transfer path", "its iterations", "fewer iterations"))]


def images_blocks(data: ExperimentData, protocol: str) -> list[Block]:
    counts = sorted({r.images for r in data.grid}, key=lambda v: float("inf") if v is None else v)
    if len(counts) < 2:
        return [Block("p", f"The grid trains every run on {_images_text(counts[0] if counts else None)} images; "
                           "list several counts in grid.images to see mAP against the number of images.")]

    rows = []
    for start in data.starts():
        for freeze in data.freezes():
            cells = []
            for n in counts:
                vals = [v for r in data.select(start, freeze, n) for v in [r.final_map()] if v is not None]
                cells.append(_seed_cell(vals))
            if any(c != "–" for c in cells):
                rows.append((start, str(freeze), *cells))
    header = ("start", "frozen N", *[f"{_images_label(data, n)} images" for n in counts])
    return [Block("p", f"mAP % ({protocol}) at each run's last iteration against the number of training images."),
            Block("table", items=tuple(rows), header=header),
            Block("image", "mAP against the number of training images", image=images_figure(data),
                  filename="map_vs_images.png")]


def build_blocks(data: ExperimentData) -> list[Block]:
    protocols = data.protocols()
    protocol = "/".join(protocols) or (data.record.get("protocol") or "darknet")
    blocks = [Block("p", _intro(data, protocol)), Block("h2", "Findings of the study, checked on our runs")]
    blocks.append(Block("list", items=tuple(
        f"**{f.verdict}** — {f.claim}. Study: {f.study}. Ours: {'; '.join(f.evidence) or 'no data'}."
        for f in findings(data))))
    blocks.append(Block("p", f"'Clearly worse' means at least {CLEAR_MARGIN * 100:.0f} mAP points lower; a start "
                             "whose unfrozen run stays below that margin cannot show it and is listed as inconclusive, "
                             f"as is a comparison where neither run reaches {NOTHING_LEARNED * 100:g} mAP points. "
                             f"'Beats' means a mean mAP at least {BEAT_MARGIN * 100:g} points higher. "
                             "Each verdict is computed from the runs' metrics files when this report is written."))
    blocks += [Block("h2", "Starting points"),
               Block("table", items=tuple((k, v["description"]) for k, v in data.record.get("starts", {}).items()),
                     header=("start", "weights"))]
    blocks.append(Block("h2", "mAP per starting point (the study's tables)"))
    for start in data.starts():
        blocks += start_table(data, start, protocol)
    blocks += [Block("h2", "mAP against iterations, every run (the study's Fig. 4)"),
               Block("image", "mAP against iterations", image=curves_figure(data),
                     filename="fig4_map_vs_iterations.png"),
               Block("h2", "Time to the target mAP")]
    blocks += time_table(data)
    blocks += [Block("h2", "mAP against the number of training images")] + images_blocks(data, protocol)
    blocks += [Block("h2", "Runs")] + runs_blocks(data)
    blocks += [Block("h2", "Machine and versions"), Block("list", items=tuple(machine_lines(data)))]
    return blocks


def _is_reproduction(data: ExperimentData) -> bool:
    """A `darktune reproduce` folder (it holds the profile marker), not a user's own grid."""
    return (data.out_dir / "profile.json").is_file()


def _images_label(data: ExperimentData, images: int | None) -> str:
    """An image count as the report names it: the number, or "all (N)" with the training set's size."""
    if images is not None:
        return str(images)
    n_all = next((r.summary["train_images"] for r in data.grid
                  if r.images is None and isinstance(r.summary.get("train_images"), int)), None)
    return f"all ({n_all})" if n_all else "all"


def _intro(data: ExperimentData, protocol: str) -> str:
    n_done = sum(r.complete for r in data.runs)
    what = (f"Reproduction of the study \"{study.STUDY_TITLE}\" with darktune" if _is_reproduction(data) else
            f"An experiment grid run with darktune, checked against the study \"{study.STUDY_TITLE}\"")
    target = f"{pct(data.target_map)}%" if data.target_map is not None else "none"
    text = (f"{what}. {plural(len(data.runs), 'training run')} ({n_done} finished). mAP protocol: {protocol}; "
            f"target mAP: {target}. "
            f"cfg: `{data.record.get('cfg')}`. Every number below is read from the runs' metrics files.")
    if data.record.get("notes"):
        text += " " + data.record["notes"]
    return text


def runs_blocks(data: ExperimentData) -> list[Block]:
    rows = []
    for r in data.runs:
        final = r.final_map()
        status = f"damaged, not measured ({r.problem})" if r.problem else r.status or "not finished"
        rows.append((r.plan["folder"], r.plan["group"], status, pct(final),
                     f"{r.train_s:.1f}" if r.train_s is not None else "–",
                     f"{r.images_per_s:.1f}" if r.images_per_s is not None else "–"))
    total = sum(r.train_s or 0.0 for r in data.runs)
    header = ("run", "kind", "status", "final mAP % (its valid set)", "train s", "images/s")
    return [Block("table", items=tuple(rows), header=header),
            Block("p", f"Training time of all runs together: {total:.1f} s.")]


def render_markdown(blocks: list[Block], title: str) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            out += [("## " if b.kind == "h2" else "### ") + b.text, ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "list":
            out += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table":
            out.append("| " + " | ".join(b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out += ["| " + " | ".join(row) + " |" for row in b.items] + [""]
        elif b.kind == "image":
            out += [f"![{b.text}](report_files/{b.filename})", ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in HTML, everything else escaped."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list[Block], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
           "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;"
           "text-align:right}th{background:#eee}img{max-width:100%}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if b.kind in ("h2", "h3"):
            out.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.items)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.kind == "image":
            data = base64.b64encode(b.image).decode()
            out.append(f"<figure><img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out_dir: str | Path, title: str | None = None) -> ReportPaths:
    """Read the experiment in `out_dir` and write report.md, report_files/*.png and report.html (atomically).
    Default title: the study reproduced (a `darktune reproduce` folder), else the experiment folder's name."""
    out_dir = Path(out_dir)
    data = load_experiment(out_dir)
    if title is None:
        title = ("darktune: the transfer-learning study, reproduced" if _is_reproduction(data)
                 else f"darktune experiment: {out_dir.resolve().name}")
    blocks = build_blocks(data)
    figures = []
    for b in blocks:
        if b.kind == "image":
            figures.append(atomic_write_bytes(out_dir / "report_files" / b.filename, b.image))
    md = atomic_write_bytes(out_dir / "report.md", render_markdown(blocks, title).encode())
    page = atomic_write_bytes(out_dir / "report.html", render_html(blocks, title).encode())
    return ReportPaths(md, page, tuple(figures), tuple(r.problem for r in data.runs if r.problem))
