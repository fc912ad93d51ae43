"""Generated images as training data: what a generator drew, read back by the pixel oracle.

A detector trained only on rendered scenes sees crisp shapes on clean backgrounds; the loop
shows it a small generator's blurry, off-palette output, where it false-alarms. Here a
generated image gets a *true* caption from the objects the oracle finds in it, and the
prompt it was generated from becomes a hard negative whenever the oracle finds the image
wrong: the very mistakes the loop must recognise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .captions import describe
from .foils import HELD_OUT_SEED
from .oracle import DetectedObject, judge
from .scenes import Scene, ShapeObject
from .vocabulary import REFERENCE_RESOLUTION

#: Seed of the prompts a generated training pool is drawn from (never a benchmark seed).
POOL_SEED = HELD_OUT_SEED + 17


def scene_from_objects(objects: tuple[DetectedObject, ...], resolution: int) -> Scene | None:
    """The scene the oracle sees: 1 or 2 detected objects, coordinates rescaled to the
    reference resolution; two objects are ordered along the axis that separates them more.
    None when no caption of the grammar describes it (0 or > 2 objects, or two objects of the
    same color and shape, which the grammar cannot tell apart)."""
    if not 1 <= len(objects) <= 2:
        return None
    s = REFERENCE_RESOLUTION / resolution
    objs = [
        ShapeObject(o.color, o.shape, o.size, o.cx * s, o.cy * s, o.extent * s) for o in objects
    ]
    if len(objs) == 1:
        return Scene((objs[0],))
    a, b = objs
    if (a.color, a.shape) == (b.color, b.shape):
        return None
    axis = "x" if abs(a.cx - b.cx) >= abs(a.cy - b.cy) else "y"
    key = (lambda o: o.cx) if axis == "x" else (lambda o: o.cy)
    return Scene(tuple(sorted(objs, key=key)), axis)


@dataclass
class GeneratedExample:
    """One generated image's labels: the prompt it came from, whether the oracle finds it
    fully right, the kinds of the wrong words, and a true caption of what it shows (None when
    the grammar cannot describe it)."""

    prompt: str
    right: bool
    wrong_kinds: list[str]
    true_caption: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def label_generated(image, prompt: str, rng: np.random.Generator) -> GeneratedExample:
    """Label a generated PIL image (any size) against the prompt it was generated from."""
    j = judge(image, prompt)
    scene = scene_from_objects(j.objects, image.size[0])
    if j.all_correct:
        caption = prompt
    else:
        caption = describe(scene, rng).text if scene is not None else None
    kinds = sorted({w.kind for w in j.words if w.correct is False and w.kind})
    if not j.count_correct:
        kinds.append("count")
    return GeneratedExample(prompt, j.all_correct, kinds, caption)


def load_pool(path: str | Path) -> tuple[np.ndarray, list[GeneratedExample]]:
    """A pool written by `shapesworld.build.generate_shapes_pool`: uint8 images (N, H, W, 3)
    and their labels, read from every finished part of the folder in order."""
    path = Path(path)
    parts = sorted(path.glob("part-*.npz"))
    if not parts:
        raise FileNotFoundError(
            f"no generated pool in {path} (part-*.npz): make one with "
            "`python -m shapesworld.build.generate_shapes_pool`"
        )
    images, labels = [], []
    for part in parts:
        meta = part.with_suffix(".jsonl")
        if not meta.is_file():  # a part is finished only when its labels are written
            continue
        images.append(np.load(part)["images"])
        labels += [GeneratedExample(**json.loads(x)) for x in meta.read_text().splitlines()]
    return np.concatenate(images), labels
