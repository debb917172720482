"""Window designs of the synthetic windows benchmark: the style dataclass, the one fixed target design, and
the samplers that draw generic windows (domain set) and near-miss distractors (target set).

Colours are BGR tuples (the synthetic images are drawn and written with OpenCV).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Palettes (BGR). Per-instance colour jitter is added at draw time, so styles compare exactly.
WHITE = (238, 240, 240)
FRAMES = {
    "white": WHITE,
    "cream": (196, 222, 236),
    "brown": (40, 62, 98),
    "dark_grey": (70, 70, 72),
    "black": (28, 28, 30),
    "green": (52, 88, 48),
    "red_brown": (40, 44, 120),
    "aluminium": (168, 166, 160),
    "blue_grey": (120, 96, 78),
}
DARK_BLUE = (105, 55, 25)
GLASSES = {
    "dark_blue": DARK_BLUE,
    "grey": (68, 66, 64),
    "black": (30, 30, 32),
    "green": (78, 98, 70),
    "sky": (196, 170, 140),
    "bronze": (48, 72, 104),
    "teal": (110, 100, 50),
    "light_grey": (150, 150, 146),
}
SHUTTERS = ((44, 92, 44), (120, 80, 40), (40, 60, 100), (150, 150, 150), (60, 110, 150), (30, 30, 110))


@dataclass(frozen=True)
class WindowStyle:
    """One window design. Geometry fractions are relative to min(window width, window height)."""

    frame_bgr: tuple[int, int, int]
    glass_bgr: tuple[int, int, int]
    panes: tuple[int, int] = (1, 1)  # (columns, rows) of the pane grid: 1..3 x 1..4
    frame_frac: float = 0.08  # outer frame width
    mullion_frac: float = 0.04  # glazing bar width
    aspect: float = 1.4  # height / width, arch included
    arch: bool = False  # semicircular top (a fanlight)
    shutters: bool = False  # two open shutters beside the window, outside its box
    shutter_bgr: tuple[int, int, int] = SHUTTERS[0]
    sill: bool = True  # stone sill under the window, outside its box

    def __post_init__(self) -> None:
        cols, rows = self.panes
        if not (1 <= cols <= 3 and 1 <= rows <= 4):
            raise ValueError(f"panes must be 1..3 x 1..4, got {self.panes}")
        if not 0.0 < self.frame_frac < 0.3 or not 0.0 < self.mullion_frac < 0.2:
            raise ValueError("frame_frac must be in (0, 0.3) and mullion_frac in (0, 0.2)")
        if not 0.3 <= self.aspect <= 3.0:
            raise ValueError(f"aspect (height/width) must be in [0.3, 3], got {self.aspect}")
        for colour in (self.frame_bgr, self.glass_bgr, self.shutter_bgr):
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise ValueError(f"colour must be three values in 0..255, got {colour}")


# The study's target is one specific window design; ours: a white frame, a 2x2 pane grid (a cross of glazing
# bars), dark-blue tinted glass, a sill, no arch, no shutters. Distractors share some of these details.
TARGET_STYLE = WindowStyle(
    frame_bgr=WHITE, glass_bgr=DARK_BLUE, panes=(2, 2), frame_frac=0.09, mullion_frac=0.05, aspect=1.35
)


def is_target_design(style: WindowStyle) -> bool:
    """True when a style shows the target's design details (what a labeller of the target would label)."""
    return (
        style.panes == TARGET_STYLE.panes
        and style.frame_bgr == TARGET_STYLE.frame_bgr
        and style.glass_bgr == TARGET_STYLE.glass_bgr
        and not style.arch
    )


def _pick(rng: np.random.Generator, options: dict | tuple) -> tuple[int, int, int]:
    values = list(options.values()) if isinstance(options, dict) else list(options)
    return values[int(rng.integers(len(values)))]


def random_style(rng: np.random.Generator) -> WindowStyle:
    """Any window design: the many styles of the domain set (the target design may come up, rarely)."""
    cols = int(rng.choice([1, 1, 2, 2, 2, 3]))
    rows = int(rng.choice([1, 1, 2, 2, 3, 4]))
    arch = bool(rng.random() < 0.15)
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(2.2))))
    if arch:
        aspect = max(aspect, 1.2)
    return WindowStyle(
        frame_bgr=_pick(rng, FRAMES),
        glass_bgr=_pick(rng, GLASSES),
        panes=(cols, rows),
        frame_frac=float(rng.uniform(0.03, 0.14)),
        mullion_frac=float(rng.uniform(0.02, 0.06)),
        aspect=aspect,
        arch=arch,
        shutters=bool(rng.random() < 0.15),
        shutter_bgr=_pick(rng, SHUTTERS),
        sill=bool(rng.random() < 0.6),
    )


def near_miss_style(rng: np.random.Generator) -> WindowStyle:
    """A distractor that shares most of the target's details and differs in one or two design details."""
    style = TARGET_STYLE
    changes = rng.permutation(["panes", "frame", "glass", "arch"])[: int(rng.integers(1, 3))]
    for change in changes:
        if change == "panes":
            grids = [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (3, 3), (2, 4), (3, 4)]
            style = replace(style, panes=grids[int(rng.integers(len(grids)))])
        elif change == "frame":
            frames = [v for k, v in FRAMES.items() if k not in ("white", "cream")]
            style = replace(style, frame_bgr=_pick(rng, tuple(frames)))
        elif change == "glass":
            glasses = [v for k, v in GLASSES.items() if k != "dark_blue"]
            style = replace(style, glass_bgr=_pick(rng, tuple(glasses)))
        else:
            style = replace(style, arch=True, aspect=1.6)
    if rng.random() < 0.3:
        style = replace(style, shutters=True, shutter_bgr=_pick(rng, SHUTTERS))
    return style


def distractor_style(rng: np.random.Generator, near_miss: float = 0.5) -> WindowStyle:
    """A window that is not the target: a near miss with chance `near_miss` (default half), else any other
    design."""
    for _ in range(20):
        style = near_miss_style(rng) if rng.random() < near_miss else random_style(rng)
        if not is_target_design(style):
            return style
    return replace(TARGET_STYLE, panes=(1, 1))
