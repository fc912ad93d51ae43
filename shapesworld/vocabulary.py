"""The closed vocabulary of ShapesWorld: every attribute word and what it means in pixels."""

from __future__ import annotations

#: Object colors and their canonical sRGB values. Chosen far apart in hue so that blur and
#: off-palette generated colors still have one clear nearest name.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 230, 40),
    "green": (40, 180, 50),
    "cyan": (40, 215, 225),
    "blue": (40, 70, 230),
    "purple": (150, 50, 210),
    "white": (245, 245, 245),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

#: Object extents in pixels at the reference resolution of 32 px (scaled with the image).
SIZES: dict[str, float] = {"small": 7.5, "large": 13.0}

#: Relation words and the axis/sign they describe ("left": first object has smaller x).
RELATIONS: dict[str, tuple[str, int]] = {
    "left": ("x", -1),
    "right": ("x", 1),
    "above": ("y", -1),
    "below": ("y", 1),
    "top": ("y", -1),
    "bottom": ("y", 1),
}

#: Pairs swapped to make a position foil.
OPPOSITE: dict[str, str] = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "top": "bottom",
    "bottom": "top",
}

#: Word kind of every content word (everything else is a function word).
WORD_KINDS: dict[str, str] = {
    **{c: "color" for c in COLORS},
    **{s: "shape" for s in SHAPES},
    **{s: "size" for s in SIZES},
    **{r: "position" for r in RELATIONS},
}

KINDS: tuple[str, ...] = ("color", "shape", "size", "position")

REFERENCE_RESOLUTION = 32
