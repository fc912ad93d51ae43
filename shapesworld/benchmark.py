"""The held-out ShapesWorld FOIL set as a `clip4dm eval` benchmark (`shapes-foil`), registered
with the detector's evaluation on import (`feedback.eval.register_benchmark`): the detector
package never imports the testbed."""

from __future__ import annotations

from collections.abc import Iterator

from feedback.eval.datasets import Sample, register_benchmark

from .foils import HELD_OUT_SEED, foil_set
from .vocabulary import WORD_KINDS


def load_shapes_foil(n: int = 1000, seed: int | None = None) -> Iterator[Sample]:
    """The held-out ShapesWorld FOIL set, rendered in memory: each item yields its foiled
    caption (with the foil word's span and kind) and its original caption."""
    for ex in foil_set(n, seed=HELD_OUT_SEED if seed is None else seed):
        img = ex.image()
        f = ex.foil
        yield Sample(
            f"{ex.id}-foil",
            img,
            f.foil,
            is_original=False,
            foil_words=[f.foil_word],
            foil_spans=[(f.start, f.end)],
            kind=f.kind,
        )
        yield Sample(f"{ex.id}-orig", img, f.original, is_original=True, kind=f.kind)


register_benchmark(
    "shapes-foil",
    load_shapes_foil,
    "most-negative",
    needs_data=False,
    content=lambda w: w.lower() in WORD_KINDS,
)
