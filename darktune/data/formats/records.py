"""The rules the COCO, VOC and Open Images readers share for one annotated box.

What a bad box costs: the whole image (`BadBox`), because an image kept without one of its objects teaches
the detector that the object is background; the YOLO reader drops the image of a bad label line for the same
reason. The one exception is a box with no extent (`EmptyBox`: zero width or height, as given or once an
overshoot within the tolerance is clipped): it marks no pixels to learn from, so only that box goes. Either
is an error naming the file and record, or with skip_bad a counted skip. Exact duplicates are dropped by
each reader and counted as warnings (a training set would otherwise hold the object twice).
"""

from __future__ import annotations

import math

from darktune.data.dataset import BOX_TOLERANCE, Box, clipped_box


class BadBox(ValueError):
    """A record that cannot become a box: the reader raises it as a DarktuneError, or with skip_bad skips the
    image it belongs to."""


class EmptyBox(BadBox):
    """A box with zero width or height: with skip_bad only the box is skipped."""


def checked_box(class_name: str, x1: float, y1: float, x2: float, y2: float, shown: str, **flags: bool) -> Box:
    """A Box from normalised corners, overshoot within BOX_TOLERANCE clipped. Swapped corners or a box
    outside the image -> BadBox; zero width or height -> EmptyBox. `shown` is the box as the file gives it
    (e.g. "xmin=4 ymin=3 xmax=4 ymax=18"), for the message."""
    corners = (x1, y1, x2, y2)
    if x2 < x1 or y2 < y1:
        raise BadBox(f"box has no area: corners swapped ({shown})")
    try:
        return clipped_box(class_name, x1, y1, x2, y2, **flags)
    except ValueError as exc:
        if all(math.isfinite(c) and -BOX_TOLERANCE <= c <= 1 + BOX_TOLERANCE for c in corners):
            raise EmptyBox(f"box has no area: zero width or height ({shown})") from None
        raise BadBox(f"{exc} ({shown})") from None
