"""Anchor data: real image-caption pairs mixed into every denoising batch at a stated share
(`RoundsConfig.anchor_fraction`), so the model's own samples never make up the whole signal
(self-training on one's own samples drifts; DPOK and the self-consuming-loop papers measured
it). On ShapesWorld the anchors are freshly rendered scenes with their exact captions, the
base model's own training distribution (`recipes` wire them); in general, a folder of images
with a caption each (`folder_anchors`).

An anchor source is `anchors(n, rng) -> (images (n, 3, H, W) float in [0, 1], captions)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

AnchorSource = Callable[[int, np.random.Generator], tuple[torch.Tensor, list[str]]]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def folder_anchors(folder: str | Path, size: tuple[int, int]) -> AnchorSource:
    """Anchors from `folder`: every image file with a same-stem `.txt` caption beside it
    (`cat.png` + `cat.txt`), resized to `size` (H, W). Raises `ValueError` naming the problem
    (no such folder, no pairs, an image without its caption, an empty caption, not an image)."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--anchor-dir: no such folder: {folder}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"--anchor-dir: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    pairs = []
    for p in images:
        cap = p.with_suffix(".txt")
        if not cap.is_file():
            raise ValueError(f"--anchor-dir: {p.name} has no caption file {cap.name}")
        text = cap.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"--anchor-dir: {cap.name} is empty")
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB").resize((size[1], size[0])), dtype=np.float32)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"--anchor-dir: {p.name} is not an image ({e})") from None
        pairs.append((torch.from_numpy(arr / 255.0).permute(2, 0, 1), text))

    def anchors(n: int, rng: np.random.Generator):
        idx = rng.choice(len(pairs), size=n, replace=len(pairs) < n)
        return torch.stack([pairs[i][0] for i in idx]), [pairs[i][1] for i in idx]

    return anchors


def anchors_needed(kept: int, fraction: float) -> int:
    """How many anchors make them `fraction` of a batch with `kept` own examples (at least one
    when the fraction is above 0, so a round with nothing kept still learns from anchors)."""
    if fraction <= 0:
        return 0
    return max(1, math.ceil(fraction * max(kept, 1) / (1 - fraction)))


def with_anchors(got, anchors: AnchorSource, fraction: float, rng: np.random.Generator):
    """`got` (a `Collected`) with anchors appended to its images and prompts; the number
    added is `anchors_needed(len(got.prompts), fraction)`."""
    import dataclasses

    k = anchors_needed(len(got.prompts), fraction)
    if k == 0:
        return got, 0
    imgs, caps = anchors(k, rng)
    own = got.images if len(got.prompts) else imgs[:0]
    images = torch.cat([own.to(imgs.device, imgs.dtype), imgs])
    return dataclasses.replace(got, images=images, prompts=[*got.prompts, *caps]), k
