"""Scene descriptions: what is in a ShapesWorld image, independent of pixels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .vocabulary import COLORS, REFERENCE_RESOLUTION, SHAPES, SIZES


@dataclass(frozen=True)
class ShapeObject:
    """One object. `cx`, `cy` and `extent` are in pixels at the reference resolution (32 px)."""

    color: str
    shape: str
    size: str
    cx: float
    cy: float
    extent: float


@dataclass(frozen=True)
class Scene:
    """A whole image: 1-2 objects, a gray background and pixel noise.

    With two objects, `axis` is "x" (side by side) or "y" (one above the other) and the objects
    are stored in reading order along that axis (left/top first).
    """

    objects: tuple[ShapeObject, ...]
    axis: str | None = None
    background: int = 40
    noise: float = 4.0
    seed: int = 0
    meta: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objs = tuple(ShapeObject(**o) for o in data["objects"])
        return cls(**{**data, "objects": objs})


def _place(rng: np.random.Generator, extent: float, lo: float, hi: float) -> float:
    # Keep the whole object inside [lo, hi] with half a pixel to spare.
    a, b = lo + extent / 2 + 0.5, hi - extent / 2 - 0.5
    return float(rng.uniform(a, b)) if b > a else (lo + hi) / 2


def sample_object(
    rng: np.random.Generator,
    *,
    color: str | None = None,
    shape: str | None = None,
    size: str | None = None,
) -> tuple[str, str, str, float]:
    color = color or str(rng.choice(list(COLORS)))
    shape = shape or str(rng.choice(SHAPES))
    size = size or str(rng.choice(list(SIZES)))
    extent = SIZES[size] * float(rng.uniform(0.9, 1.1))
    return color, shape, size, extent


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Draw a random scene of 1 or 2 objects (2 objects never share color *and* shape)."""
    r = REFERENCE_RESOLUTION
    n = int(n_objects or rng.integers(1, 3))
    background = int(rng.integers(15, 100))
    noise = float(rng.uniform(0.0, 8.0))
    seed = int(rng.integers(0, 2**31 - 1))
    if n == 1:
        c, s, z, e = sample_object(rng)
        obj = ShapeObject(c, s, z, _place(rng, e, 0, r), _place(rng, e, 0, r), e)
        return Scene((obj,), None, background, noise, seed)
    axis = "x" if rng.random() < 0.5 else "y"
    while True:
        a, b = sample_object(rng), sample_object(rng)
        if (a[0], a[1]) == (b[0], b[1]):
            continue
        # Objects never touch: at least 1.5 px of background between them along the axis.
        along = sorted([_place(rng, a[3], 0, r), _place(rng, b[3], 0, r)])
        if along[1] - along[0] >= (a[3] + b[3]) / 2 + 1.5:
            break
    objs = []
    for (c, s, z, e), x in zip((a, b), along):
        y = _place(rng, e, 0, r)
        cx, cy = (x, y) if axis == "x" else (y, x)
        objs.append(ShapeObject(c, s, z, cx, cy, e))
    return Scene(tuple(objs), axis, background, noise, seed)
