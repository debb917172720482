"""The rules the COCO, VOC and Open Images readers share for one annotated box.

What a bad box costs: the whole image (`BadBox`), because an image kept without one of its objects teaches
the detector that the object is background; the YOLO reader drops the image of a bad label line for the same
reason. The one exception is a box with no extent (`EmptyBox`: zero width or height, as given or once an
overshoot within the tolerance is clipped): it marks no pixels to learn from, so only that box goes. Either
is an error naming the file and record, or with skip_bad a counted skip. Exact duplicates are dropped by
each reader and counted as warnings (a training set would otherwise hold the object twice).

A box that reaches past the image edge (`clip_to_image`, as darknet and ultralytics do when they load labels)
is clipped to the image and counted in a note; it is dropped, and counted, when less than a quarter of its area
or under 2 pixels of width or height lie inside (an arm at the frame edge, not an object to learn). A box that
does not touch the image at all stays an error: such coordinates come from a wrong format or a wrong image size.
"""

from __future__ import annotations

import math

from darktune.data.dataset import BOX_TOLERANCE, Box, clipped_box

MIN_INSIDE_SHARE = 0.25  # a box with less of its area inside the image is dropped
MIN_INSIDE_PX = 2.0  # ... and one whose inside part is narrower or lower than this (pixels; 0.002 of the image
MIN_INSIDE_FRACTION = 0.002  # when the pixel size is unknown)
CLIPPED = "box past the image edge clipped to the image"
CLIPPED_AWAY = "box mostly outside the image dropped"


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


def clip_to_image(class_name: str, x1: float, y1: float, x2: float, y2: float, shown: str,
                  width: int | None = None, height: int | None = None, **flags: bool) -> tuple[Box | None, str]:
    """(Box, "") for a box inside the image (overshoot within BOX_TOLERANCE clipped silently); (clipped Box,
    note starting with CLIPPED) for one past the edge; (None, note starting with CLIPPED_AWAY) when less than
    MIN_INSIDE_SHARE of its area, or under MIN_INSIDE_PX (MIN_INSIDE_FRACTION without the pixel size) of width
    or height, lies inside. Swapped corners or no overlap with the image -> BadBox; zero size -> EmptyBox."""
    corners = (x1, y1, x2, y2)
    if not all(math.isfinite(c) for c in corners):
        raise BadBox(f"coordinates are not finite numbers ({shown})")
    if x2 < x1 or y2 < y1:
        raise BadBox(f"box has no area: corners swapped ({shown})")
    if all(-BOX_TOLERANCE <= c <= 1 + BOX_TOLERANCE for c in corners):
        return checked_box(class_name, x1, y1, x2, y2, shown, **flags), ""
    if x2 == x1 or y2 == y1:
        raise EmptyBox(f"box has no area: zero width or height ({shown})")
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
    if cx2 <= cx1 or cy2 <= cy1:
        raise BadBox(f"box lies outside the image, not only past its edge ({shown})")
    share = (cx2 - cx1) * (cy2 - cy1) / ((x2 - x1) * (y2 - y1))
    inside_w = (cx2 - cx1) * width if width else None
    inside_h = (cy2 - cy1) * height if height else None
    small = (inside_w < MIN_INSIDE_PX or inside_h < MIN_INSIDE_PX) if inside_w is not None and inside_h is not None \
        else min(cx2 - cx1, cy2 - cy1) < MIN_INSIDE_FRACTION
    if share < MIN_INSIDE_SHARE or small:
        why = (f"{share:.0%} of it inside" if share < MIN_INSIDE_SHARE
               else "under 2 px inside" if inside_w is not None else "under 0.002 of the image inside")
        return None, f"{CLIPPED_AWAY} ({why}; {shown})"
    return Box(class_name, cx1, cy1, cx2, cy2, **flags), f"{CLIPPED} ({share:.0%} of it inside; {shown})"


def is_clip_note(problem) -> bool:
    """True for a reader's note of a box clipped at the image edge or dropped as mostly outside."""
    return problem.severity != "error" and (CLIPPED in problem.reason or CLIPPED_AWAY in problem.reason)


def clip_counts(notes) -> dict[str, int]:
    """How many of `notes` (Problems) are boxes clipped at the image edge, and boxes dropped as mostly outside."""
    return {"n_boxes_clipped": sum(CLIPPED in p.reason for p in notes if p.severity != "error"),
            "n_boxes_dropped_at_edge": sum(CLIPPED_AWAY in p.reason for p in notes if p.severity != "error")}
