"""Boxes and the geometry a prompt states, as pure functions (no model).

A box is `(x0, y0, x1, y1)` in pixels of the image, x to the right, y down, x1/y1 exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[float, float, float, float]


def centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (0 = disjoint, 1 = one inside the other): a
    phrase's region must not hold the other phrase's object, however their sizes differ."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min(area(a), area(b))
    return ix * iy / small if small > 0 else 0.0


def relative_margin(subject: Box, other: Box, axis: str, sign: int, size: tuple[int, int]) -> float:
    """How far `subject` lies on the stated side of `other`, as a fraction of the image's
    extent along `axis` (centre to centre): > 0 the relation holds, < 0 it is reversed.

    size: (height, width) of the image."""
    i = 0 if axis == "x" else 1
    extent = size[1] if axis == "x" else size[0]
    d = centre(other)[i] - centre(subject)[i]
    return (d if sign < 0 else -d) / extent


def absolute_margin(box: Box, axis: str, sign: int, size: tuple[int, int]) -> float:
    """How far the box's centre lies in the stated part of the image (left / right half, top
    / bottom half), as a fraction of the extent: > 0 holds, < 0 it is in the other part."""
    i = 0 if axis == "x" else 1
    extent = size[1] if axis == "x" else size[0]
    d = centre(box)[i] - extent / 2
    return (-d if sign < 0 else d) / extent


def holds(margin: float, dead_zone: float) -> bool | None:
    """GenEval-style verdict: True beyond the dead zone, False beyond it the other way, None
    (undecided) inside it."""
    if margin > dead_zone:
        return True
    if margin < -dead_zone:
        return False
    return None


def sliding_windows(
    size: tuple[int, int], scales: Sequence[float] = (0.45, 0.6), stride: float = 0.25
) -> list[Box]:
    """Square windows of side `scale * min(H, W)` for each scale, moved by `stride` of the
    side in both directions, the last one flush with the border (multi-scale proposals)."""
    h, w = size
    out: list[Box] = []
    for s in scales:
        side = max(1.0, s * min(h, w))
        step = max(1.0, stride * side)
        xs = _positions(w, side, step)
        ys = _positions(h, side, step)
        out += [(x, y, x + side, y + side) for y in ys for x in xs]
    return out


def _positions(extent: float, side: float, step: float) -> list[float]:
    if side >= extent:
        return [0.0]
    pos, p = [], 0.0
    while p + side < extent - 1e-6:
        pos.append(p)
        p += step
    pos.append(extent - side)
    return pos


def partitions(
    size: tuple[int, int], splits: Sequence[float] = (5, 6, 7, 8, 9, 10, 11), denom: float = 16
) -> list[tuple[str, Box, Box]]:
    """Split lines along each axis at `splits / denom` of the image: (axis, low side, high
    side). The two sides of a split are disjoint, so a phrase scored on one side never sees
    the object of a phrase scored on the other (what makes per-region scoring see binding)."""
    h, w = size
    out = []
    for f in splits:
        x = w * f / denom
        out.append(("x", (0.0, 0.0, x, float(h)), (x, 0.0, float(w), float(h))))
    for f in splits:
        y = h * f / denom
        out.append(("y", (0.0, 0.0, float(w), y), (0.0, y, float(w), float(h))))
    return out
