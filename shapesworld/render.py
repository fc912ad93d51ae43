"""Pixels from scenes: anti-aliased rendering plus the degradations a generator produces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .scenes import Scene
from .vocabulary import COLORS, REFERENCE_RESOLUTION

_SUPERSAMPLE = 4


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, extent: float, fill
) -> None:
    """Draw one shape whose bounding box is `extent` wide and tall, centred on (cx, cy)."""
    h = extent / 2
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)
    elif shape == "cross":
        t = extent / 6
        draw.rectangle([cx - h, cy - t, cx + h, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - h, cx + t, cy + h], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def shape_mask(
    shape: str, cx: float, cy: float, extent: float, size: tuple[int, int]
) -> np.ndarray:
    """Fractional pixel coverage (H, W) in [0, 1] of an ideal shape; used by the oracle."""
    w, h = size
    s = _SUPERSAMPLE
    img = Image.new("L", (w * s, h * s), 0)
    draw_shape(ImageDraw.Draw(img), shape, cx * s, cy * s, extent * s, 255)
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float32) / 255.0


def render_scene(scene: Scene, resolution: int = REFERENCE_RESOLUTION) -> Image.Image:
    """Render `scene` as an RGB image of `resolution` x `resolution` pixels (deterministic)."""
    s = _SUPERSAMPLE
    scale = resolution / REFERENCE_RESOLUTION * s
    big = Image.new("RGB", (resolution * s, resolution * s), (scene.background,) * 3)
    draw = ImageDraw.Draw(big)
    for o in scene.objects:
        draw_shape(draw, o.shape, o.cx * scale, o.cy * scale, o.extent * scale, COLORS[o.color])
    img = big.resize((resolution, resolution), Image.BOX)
    if scene.noise > 0:
        rng = np.random.default_rng(scene.seed)
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(0.0, scene.noise, size=arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    return img


@dataclass
class Degradation:
    """Make rendered images look more like a small generator's output.

    Attributes:
        blur: maximum Gaussian blur radius in pixels (drawn uniformly from [0, blur]).
        color_jitter: maximum per-channel shift of object colors, in 0-255 units.
        p: probability that an image is degraded at all.
    """

    blur: float = 0.8
    color_jitter: float = 30.0
    p: float = 0.5

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if rng.random() >= self.p:
            return img
        arr = np.asarray(img, dtype=np.float32)
        # Shift the whole image's palette a little: off-palette colors, same scene.
        arr = arr + rng.uniform(-self.color_jitter, self.color_jitter, size=(1, 1, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
        radius = float(rng.uniform(0, self.blur))
        return img.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.05 else img
