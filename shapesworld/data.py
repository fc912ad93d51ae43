"""Freshly rendered ShapesWorld training batches: images as tensors (normalization is a
parameter), captions, and per-word-kind hard negatives for contrastive training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .captions import Caption, caption_from_text, describe
from .foils import foil_kinds, make_foil, swap_objects
from .render import Degradation, render_scene
from .scenes import sample_scene

#: OpenAI CLIP normalisation, also written into the exported model's preprocess config.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
#: Maps [0, 1] to [-1, 1], what a diffusers VAE reads.
DIFFUSION_MEAN = (0.5, 0.5, 0.5)
DIFFUSION_STD = (0.5, 0.5, 0.5)


@dataclass
class ShapesBatch:
    """`images` (B, 3, R, R) normalised; `captions` B strings; `foils` B x F strings."""

    images: torch.Tensor
    captions: list[str]
    foils: list[list[str]]
    foil_kinds: list[list[str]]


def concat_batches(a: ShapesBatch, b: ShapesBatch) -> ShapesBatch:
    """One batch of `a`'s examples followed by `b`'s."""
    return ShapesBatch(
        torch.cat([a.images, b.images]),
        a.captions + b.captions,
        a.foils + b.foils,
        a.foil_kinds + b.foil_kinds,
    )


def to_tensor(images, mean=MEAN, std=STD) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) float32, (x / 255 - mean) / std per channel."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def render_batch(
    rng: np.random.Generator,
    batch_size: int,
    *,
    p_two_objects: float = 0.5,
    resolution: int = 32,
    mean=DIFFUSION_MEAN,
    std=DIFFUSION_STD,
) -> tuple[torch.Tensor, list[str]]:
    """`batch_size` random scenes (two objects with probability `p_two_objects`) as a
    normalized (B, 3, R, R) tensor, and their true captions (text-to-image training)."""
    images, captions = [], []
    for _ in range(batch_size):
        scene = sample_scene(rng, 2 if rng.random() < p_two_objects else 1)
        captions.append(describe(scene, rng).text)
        images.append(render_scene(scene, resolution))
    return to_tensor(images, mean, std), captions


def anchor_source(resolution: int = 32, p_two_objects: float = 0.6):
    """Anchor data for the fine-tuning recipes (`generation.finetune.anchors`): `(n, rng) ->
    (images (n, 3, R, R) in [0, 1], true captions)`, freshly rendered scenes from the base
    pipeline's own training distribution (`shapesworld.build.train_shapes_t2i`'s share of
    two-object scenes)."""

    def anchors(n: int, rng: np.random.Generator):
        return render_batch(
            rng,
            n,
            p_two_objects=p_two_objects,
            resolution=resolution,
            mean=(0, 0, 0),
            std=(1, 1, 1),
        )

    return anchors


def make_batch(
    rng: np.random.Generator,
    batch_size: int,
    *,
    foils_per_image: int = 3,
    resolution: int = 32,
    template: str = "A photo depicts ",
    p_template: float = 0.5,
    p_period: float = 0.1,
    degradation: Degradation | None = None,
) -> ShapesBatch:
    """Render `batch_size` random scenes with a true caption and `foils_per_image` foils each.

    Foils cover different word kinds where the caption allows (color, shape, size, position,
    and for two objects an attribute swap between them), so every word kind is a hard negative.
    The template prefix and a final period are added at random, identically to caption and
    foils, so the model sees the text the detector will feed it.
    """
    images, captions, foils, kinds = [], [], [], []
    for _ in range(batch_size):
        scene = sample_scene(rng)
        cap = describe(scene, rng)
        img = render_scene(scene, resolution)
        if degradation is not None:
            img = degradation(img, rng)
        caption, f_texts, f_kinds = _with_foils(
            cap, rng, foils_per_image, template, p_template, p_period
        )
        images.append(img)
        captions.append(caption)
        foils.append(f_texts)
        kinds.append(f_kinds)
    return ShapesBatch(to_tensor(images), captions, foils, kinds)


def _with_foils(
    cap: Caption,
    rng: np.random.Generator,
    foils_per_image: int,
    template: str,
    p_template: float,
    p_period: float,
    first: list[tuple[str, str]] = (),
) -> tuple[str, list[str], list[str]]:
    """(caption, foils, foil kinds) with the same random template prefix and final period on
    all; `first` are (kind, text) negatives that come before the drawn ones."""
    options: list[tuple[str, str]] = [(k, "") for k in foil_kinds(cap)]
    swapped = swap_objects(cap)
    if swapped:
        options.append(("swap", swapped))
    order = rng.permutation(len(options))
    chosen = list(first)[:foils_per_image]
    chosen += [options[i] for i in order[: foils_per_image - len(chosen)]]
    while len(chosen) < foils_per_image:
        chosen.append(options[int(rng.integers(len(options)))])
    prefix = template if rng.random() < p_template else ""
    suffix = " ." if rng.random() < p_period else ""
    f_texts, f_kinds = [], []
    for kind, text in chosen:
        if not text:
            text = make_foil(cap, rng, kind).foil
        f_texts.append(prefix + text + suffix)
        f_kinds.append(kind)
    return prefix + cap.text + suffix, f_texts, f_kinds


def pool_batch(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: list,
    batch_size: int,
    *,
    foils_per_image: int = 3,
    template: str = "A photo depicts ",
    p_template: float = 0.5,
    p_period: float = 0.1,
) -> ShapesBatch:
    """A batch from a generated pool (`shapesworld.generated.load_pool`): each image with the
    true caption the oracle read from it, and as the first foil the prompt it was generated
    from when the oracle finds the image wrong (kind "generated": the generator's own
    mistake); the other foils are drawn as in `make_batch`. Only images the grammar can
    describe are used."""
    usable = [i for i, x in enumerate(labels) if x.true_caption is not None]
    if not usable:
        raise ValueError("no image of the pool has a true caption")
    pick = rng.choice(usable, size=batch_size)
    pils, captions, foils, kinds = [], [], [], []
    for i in pick:
        x = labels[int(i)]
        cap = caption_from_text(x.true_caption)
        first = [] if x.right or x.prompt == x.true_caption else [("generated", x.prompt)]
        caption, f_texts, f_kinds = _with_foils(
            cap, rng, foils_per_image, template, p_template, p_period, first
        )
        pils.append(Image.fromarray(images[int(i)]))
        captions.append(caption)
        foils.append(f_texts)
        kinds.append(f_kinds)
    return ShapesBatch(to_tensor(pils), captions, foils, kinds)


def prompt_groups(labels: list) -> list[tuple[int, ...]]:
    """Indices of a generated pool's images grouped by the prompt they were generated from
    (a prompt's images are consecutive in the pool), keeping only *mixed* groups: at least
    one image the oracle finds right and one it finds wrong. Those are the groups where
    ranking a prompt's images decides whether the loop keeps a right one."""
    groups, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i].prompt != labels[start].prompt:
            rights = {labels[j].right for j in range(start, i)}
            if rights == {True, False}:
                groups.append(tuple(range(start, i)))
            start = i
    return groups


@dataclass
class GroupBatch:
    """G prompt groups of a generated pool, each with the same number of images n.

    images: (G * n, 3, H, W) normalised, group by group; texts: G prompts with the detector's
    template (the text the loop scores an image against); right: (G, n) bool oracle verdicts.
    """

    images: torch.Tensor
    texts: list[str]
    right: torch.Tensor


def group_batch(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: list,
    groups: list[tuple[int, ...]],
    n_groups: int,
    *,
    template: str = "A photo depicts ",
) -> GroupBatch:
    """`n_groups` mixed prompt groups (`prompt_groups`) drawn at random, for a within-prompt
    ranking loss: the prompt's right images should score above its wrong ones."""
    if not groups:
        raise ValueError("the pool has no prompt with both a right and a wrong image")
    n = min(len(g) for g in groups)
    idx = []
    for g in rng.choice(len(groups), size=n_groups):
        members = groups[int(g)]
        # Groups longer than n keep a right and a wrong image, so every row stays mixed.
        first = [next(i for i in members if labels[i].right)]
        first.append(next(i for i in members if not labels[i].right))
        idx += first + [i for i in members if i not in first][: n - 2]
    pils = [Image.fromarray(images[i]) for i in idx]
    texts = [template + labels[idx[k * n]].prompt for k in range(n_groups)]
    right = torch.tensor([labels[i].right for i in idx]).view(n_groups, n)
    return GroupBatch(to_tensor(pils), texts, right)
