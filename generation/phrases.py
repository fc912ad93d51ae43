"""Object phrases of a prompt, so a fix can act on one object rather than on the whole prompt.

The phrase rule lives in `feedback.regions.structure` (the detector judges each phrase on its
own region with it); here it is re-exported for the fixes, with what they add.
"""

from __future__ import annotations

from collections.abc import Sequence

from feedback.regions import RELATIONS, Phrase, split_phrases, word_phrases

__all__ = ["RELATIONS", "Phrase", "raise_phrase_weights", "split_phrases", "word_phrases"]


def raise_phrase_weights(
    weights: list[float],
    word_phrase: Sequence[int | None],
    misaligned: Sequence[bool],
    *,
    step: float,
    max_weight: float,
) -> list[float]:
    """The next round's phrase guidance weights: each phrase holding a flagged word grows by
    `step` (once per round, however many of its words are flagged), up to `max_weight`."""
    out = list(weights)
    for k in sorted({p for p, m in zip(word_phrase, misaligned) if m and p is not None}):
        out[k] = min(max_weight, out[k] + step)
    return out
