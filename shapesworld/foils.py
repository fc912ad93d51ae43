"""FOIL captions: one word swapped for a same-kind word that the image contradicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .captions import Caption, build_caption, describe
from .render import render_scene
from .scenes import Scene, sample_scene
from .vocabulary import COLORS, OPPOSITE, SHAPES, SIZES

_ALTERNATIVES = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "size": list(SIZES),
}


@dataclass(frozen=True)
class Foil:
    """A foiled caption. `word_index`, `start`, `end` locate the swapped word in `foil`."""

    original: str
    foil: str
    kind: str
    word_index: int
    original_word: str
    foil_word: str
    start: int
    end: int

    def to_dict(self) -> dict:
        return asdict(self)


def foil_kinds(caption: Caption) -> list[str]:
    """The word kinds that can be foiled in `caption`."""
    return sorted({w.kind for w in caption.words if w.kind})


def make_foil(caption: Caption, rng: np.random.Generator, kind: str | None = None) -> Foil:
    """Swap one content word of `caption` (of `kind`, or a random kind) for a contradicting one.

    Every replacement contradicts the scene: each content word is bound to one object, and a
    different color/shape/size for that object, or the opposite side, is false by construction.
    """
    kinds = foil_kinds(caption)
    if kind is None:
        kind = str(rng.choice(kinds))
    elif kind not in kinds:
        raise ValueError(f"caption {caption.text!r} has no {kind} word to foil")
    idx = [i for i, w in enumerate(caption.words) if w.kind == kind]
    i = int(rng.choice(idx))
    old = caption.words[i].text
    if kind == "position":
        new = OPPOSITE[old]
    else:
        new = str(rng.choice([v for v in _ALTERNATIVES[kind] if v != old]))
    pieces = [(w.text, w.obj) for w in caption.words]
    pieces[i] = (new, pieces[i][1])
    foiled = build_caption(pieces)
    w = foiled.words[i]
    return Foil(caption.text, foiled.text, kind, i, old, new, w.start, w.end)


def swap_objects(caption: Caption) -> str | None:
    """Hard negative for training: exchange the attribute words of the two objects."""
    objs = sorted({w.obj for w in caption.words if w.obj is not None and w.kind != "position"})
    if len(objs) != 2:
        return None
    attrs = {
        o: {w.kind: w.text for w in caption.words if w.obj == o and w.kind != "position"}
        for o in objs
    }
    a, b = objs
    out = []
    for w in caption.words:
        if w.obj in attrs and w.kind not in (None, "position"):
            other = attrs[b if w.obj == a else a]
            out.append(other.get(w.kind, w.text))
        else:
            out.append(w.text)
    text = " ".join(out)
    return None if text == caption.text else text


@dataclass(frozen=True)
class FoilExample:
    """One held-out evaluation item: the scene, its true caption and one foil of it."""

    id: str
    scene: Scene
    caption: Caption
    foil: Foil

    def image(self, resolution: int = 32):
        return render_scene(self.scene, resolution)


#: Seeds at or above this offset are reserved for evaluation; training draws below it.
HELD_OUT_SEED = 1_000_000_007


def foil_set(
    n: int, *, seed: int = HELD_OUT_SEED, kinds: tuple[str, ...] | None = None
) -> list[FoilExample]:
    """A deterministic FOIL set of `n` items, foil kinds balanced round-robin.

    The default seed is the held-out stream, disjoint from anything the training recipe draws.
    """
    rng = np.random.default_rng(seed)
    kinds = kinds or ("color", "shape", "size", "position")
    out: list[FoilExample] = []
    while len(out) < n:
        want = kinds[len(out) % len(kinds)]
        scene = sample_scene(rng, 2 if want == "position" else None)
        cap = describe(scene, rng)
        if want not in foil_kinds(cap):
            continue
        out.append(FoilExample(f"shapes-{seed}-{len(out)}", scene, cap, make_foil(cap, rng, want)))
    return out
