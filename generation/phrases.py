"""Object phrases of a prompt, so a fix can act on one object rather than on the whole prompt.

The rule for free text (no parser dependency): the prompt is cut at commas and semicolons
(also the CJK "、，；"), "and", "with", and spatial relations ("to the left of", "above", "next
to", "in front of", ...). What lies between two cuts and holds a word is a phrase; the cut
words themselves belong to no phrase (they relate objects). "a red circle on the left and a
blue square on the right" gives "a red circle on the left" and "a blue square on the right";
"a red circle to the left of a blue square" gives "a red circle" and "a blue square". Words
are matched to phrases by character span, so the detector's words (any tokenizer) map onto
them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Relations that join two objects; longest first so "to the left of" wins over "left of".
RELATIONS = (
    "to the left of",
    "to the right of",
    "in front of",
    "on top of",
    "next to",
    "left of",
    "right of",
    "above",
    "below",
    "under",
    "beneath",
    "behind",
    "beside",
    "near",
)
_CUT = re.compile(
    r"\s*(?:[,;、，；]|\b(?:and|with|"
    + "|".join(r"\s+".join(r.split()) for r in RELATIONS)
    + r")\b)\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Phrase:
    """One object phrase: its text and [start, end) character span in the prompt."""

    text: str
    start: int
    end: int


def split_phrases(prompt: str) -> list[Phrase]:
    """The prompt's object phrases in order (one phrase when nothing cuts it)."""
    out, last = [], 0
    for m in list(_CUT.finditer(prompt)) + [None]:
        a, b = last, (m.start() if m is not None else len(prompt))
        piece = prompt[a:b]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            text = piece.strip()
            out.append(Phrase(text, a + lead, a + lead + len(text)))
        if m is not None:
            last = m.end()
    return out


def word_phrases(words: Sequence, phrases: Sequence[Phrase]) -> list[int | None]:
    """For each word (anything with `start`/`end`), the index of the phrase holding it, or
    None (a relation or conjunction word, or punctuation between phrases)."""
    out = []
    for w in words:
        hit = [k for k, p in enumerate(phrases) if p.start <= w.start and w.end <= p.end]
        out.append(hit[0] if hit else None)
    return out


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
