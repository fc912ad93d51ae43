"""Anchor data: real image-caption pairs mixed into every denoising batch at a stated share
(`RoundsConfig.anchor_fraction`), so the model's own samples never make up the whole signal
(self-training on one's own samples drifts; DPOK and the self-consuming-loop papers measured
it). On ShapesWorld the anchors are freshly rendered scenes with their exact captions, the
base model's own training distribution (`recipes` wire them); in general, a folder of images
with a caption each (`folder_anchors`: `.txt` files beside the images and/or the Hugging Face
imagefolder `metadata.jsonl`).

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


def read_anchor_pairs(folder: str | Path, flag: str = "--anchor-dir") -> list[tuple[Path, str]]:
    """The (image path, caption) pairs of an anchor folder, sorted by path. Captions come
    from `metadata.jsonl` (the Hugging Face imagefolder convention: one JSON object a line
    with `file_name`, relative to the folder, and `text`) and, for the images it does not
    list, from a same-stem `.txt` file beside the image (`cat.png` + `cat.txt`). Raises
    `ValueError` with one line naming `flag` and the problem (no such folder, no images, a bad
    metadata line, a listed file that is missing, an image without its caption, an empty
    caption). Images are not opened here (`folder_anchors` does)."""
    import json

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{flag}: no such folder: {folder}")
    captions: dict[Path, str] = {}
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{flag}: metadata.jsonl line {n} is not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "file_name" not in rec or "text" not in rec:
                raise ValueError(f'{flag}: metadata.jsonl line {n} needs "file_name" and "text"')
            path = folder / str(rec["file_name"])
            if not path.is_file():
                raise ValueError(
                    f"{flag}: metadata.jsonl line {n}: no such file {rec['file_name']}"
                )
            text = str(rec["text"] or "").strip()
            if not text:
                raise ValueError(f"{flag}: metadata.jsonl line {n}: empty text")
            captions[path] = text
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or p in captions:
            continue
        cap = p.with_suffix(".txt")
        if not cap.is_file():
            raise ValueError(f"{flag}: {p.name} has no caption file {cap.name}")
        text = cap.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{flag}: {cap.name} is empty")
        captions[p] = text
    if not captions:
        raise ValueError(f"{flag}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return sorted(captions.items())


def folder_anchors(
    folder: str | Path, size: tuple[int, int], flag: str = "--anchor-dir"
) -> AnchorSource:
    """Anchors from `folder` (`read_anchor_pairs`: `metadata.jsonl` and/or `.txt` captions),
    resized to `size` (H, W). Raises `ValueError` naming the problem (those of
    `read_anchor_pairs`, or a file that is not an image)."""
    from PIL import Image, UnidentifiedImageError

    pairs = []
    for p, text in read_anchor_pairs(folder, flag):
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB").resize((size[1], size[0])), dtype=np.float32)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{flag}: {p.name} is not an image ({e})") from None
        pairs.append((torch.from_numpy(arr / 255.0).permute(2, 0, 1), text))

    def anchors(n: int, rng: np.random.Generator):
        idx = rng.choice(len(pairs), size=n, replace=len(pairs) < n)
        return torch.stack([pairs[i][0] for i in idx]), [pairs[i][1] for i in idx]

    anchors.pairs = len(pairs)  # type: ignore[attr-defined]  (for the run's log)
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
