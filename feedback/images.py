"""Image loading: any path or PIL image in any mode -> RGB PIL image, or a clear InputError."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

ImageLike = str | os.PathLike | Image.Image


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparency is composited on white (what a viewer shows); 16-bit and float images are
    rescaled from their full range instead of being clipped at 255 (PIL's plain convert would
    turn most 16-bit images white).
    """
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def _check_size(img: Image.Image, what: str) -> Image.Image:
    if img.width < 1 or img.height < 1:
        raise InputError(f"{what} has no pixels ({img.width}x{img.height})")
    return img


def load_image(image: ImageLike) -> Image.Image:
    """Open `image` (a path or a PIL image) as RGB, raising InputError naming the problem."""
    if isinstance(image, Image.Image):
        return to_rgb(_check_size(image, "image"))
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(f"expected an image path or a PIL image, got {type(image).__name__}")
    path = Path(image)
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        raise InputError(f"image path is a directory, not a file: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(_check_size(im, str(path)))
    except UnidentifiedImageError:
        raise InputError(f"not an image (PIL cannot identify it): {path}") from None
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e}") from None
