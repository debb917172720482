"""The published numbers of the study we reproduce ("Easily Trainable Neural Network Using Transfer Learning":
Tiny YOLOv3, one window design, Jetson TX2), kept as data so a report can print them beside our own.

Only the cells quoted in /shared/DESIGN.md ("What the study did") are here; a cell we do not have is absent,
never guessed. A value with `qualifier` "~" was reported as approximate, "<" as an upper bound.
The study's mAP is darknet's `detector map` figure (all-point AP at IoU 0.5), in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

STUDY_TITLE = "Easily Trainable Neural Network Using Transfer Learning"
STUDY_PROTOCOL = "darknet"  # darknet `detector map`: all-point AP, IoU 0.5
HEADLINE_DECREASE = 0.83  # "transfer through the domain set cut the time to the required mAP by 83%"
FREEZE_LEVELS = (0, 13, 20)


@dataclass(frozen=True)
class StudyCell:
    """One published mAP (percent) for (frozen layers, iteration)."""

    freeze: int
    iteration: int
    map_percent: float
    qualifier: str = "="  # "=": as printed; "~": approximate; "<": an upper bound

    def text(self) -> str:
        prefix = {"=": "", "~": "~", "<": "<"}[self.qualifier]
        return f"{prefix}{self.map_percent:g}"


@dataclass(frozen=True)
class StudyTable:
    """One of the study's tables: a starting point trained with N frozen layers, mAP at fixed iterations."""

    name: str
    start: str  # our name of the starting point
    description: str
    iterations: tuple[int, ...]
    cells: tuple[StudyCell, ...]

    def cell(self, freeze: int, iteration: int) -> StudyCell | None:
        for c in self.cells:
            if c.freeze == freeze and c.iteration == iteration:
                return c
        return None


TABLES: tuple[StudyTable, ...] = (
    StudyTable(
        name="Table I",
        start="backbone",
        description="ImageNet backbone conv weights only, head random",
        iterations=(1000, 1500, 1800, 2000),
        cells=(StudyCell(0, 1800, 92.0), StudyCell(13, 1800, 3.0, "~"), StudyCell(20, 1800, 1.0, "<")),
    ),
    StudyTable(
        name="Table II",
        start="coco15",
        description="COCO weights, first 15 layers (yolov3-tiny.conv.15)",
        iterations=(1000, 1500, 1800, 2000),
        cells=(StudyCell(0, 2000, 98.0), StudyCell(13, 2000, 80.0), StudyCell(20, 2000, 27.0)),
    ),
    StudyTable(
        name="Table III",
        start="domain",
        description="COCO -> domain set (Open Images 'Window', filtered) -> target",
        iterations=(100, 200, 300, 400),
        cells=(StudyCell(0, 200, 98.1), StudyCell(13, 300, 96.8), StudyCell(20, 400, 72.8)),
    ),
)


def table_for(start: str) -> StudyTable | None:
    """The study's table for one of our starting-point names, or None (the study has no such table)."""
    for table in TABLES:
        if table.start == start:
            return table
    return None


def study_iteration(table: StudyTable, our_iterations: list[int] | tuple[int, ...], ours: int) -> int | None:
    """The study iteration that sits where `ours` sits in our evaluation schedule, or None where layouts differ.

    Layouts match when we evaluate at as many points as the study, in the same proportions of the last point
    (e.g. 50/75/90/100 against 1000/1500/1800/2000): then our i-th point faces the study's i-th point.
    """
    ours_sorted = sorted(our_iterations)
    if len(ours_sorted) != len(table.iterations) or ours not in ours_sorted or ours_sorted[-1] <= 0:
        return None
    last = table.iterations[-1]
    for a, b in zip(ours_sorted, table.iterations):
        if abs(a / ours_sorted[-1] - b / last) > 0.02:
            return None
    return table.iterations[ours_sorted.index(ours)]
