"""Captions for scenes, with every word tagged by kind and by the object it describes."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from .scenes import Scene, ShapeObject
from .vocabulary import RELATIONS, SHAPES, WORD_KINDS


@dataclass(frozen=True)
class CaptionWord:
    """One space-separated word of a caption; `start`/`end` are character offsets."""

    text: str
    kind: str | None  # "color" | "shape" | "size" | "position" | None (function word)
    obj: int | None  # index of the described object in the scene (position: the subject)
    start: int
    end: int


@dataclass(frozen=True)
class Caption:
    text: str
    words: tuple[CaptionWord, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def build_caption(pieces: list[tuple[str, int | None]]) -> Caption:
    """Join `(word, object index)` pieces with single spaces, recording spans and kinds."""
    words, pos = [], 0
    for text, obj in pieces:
        kind = WORD_KINDS.get(text)
        words.append(CaptionWord(text, kind, obj, pos, pos + len(text)))
        pos += len(text) + 1
    return Caption(" ".join(w for w, _ in pieces), tuple(words))


def _noun_phrase(o: ShapeObject, i: int, with_size: bool) -> list[tuple[str, int | None]]:
    out = [("a", None)]
    if with_size:
        out.append((o.size, i))
    return out + [(o.color, i), (o.shape, i)]


def describe(scene: Scene, rng: np.random.Generator, *, p_size: float = 0.75) -> Caption:
    """A random correct caption of `scene` from several phrasings."""
    objs = scene.objects
    if len(objs) == 1:
        np0 = _noun_phrase(objs[0], 0, rng.random() < p_size)
        if rng.random() < 0.25:
            return build_caption([("there", None), ("is", None)] + np0)
        return build_caption(np0)
    a, b = (_noun_phrase(o, i, rng.random() < p_size) for i, o in enumerate(objs))
    first, second = ("left", "right") if scene.axis == "x" else ("top", "bottom")
    rel_first, rel_second = ("left", "right") if scene.axis == "x" else ("above", "below")
    style = rng.integers(0, 4)
    if style == 0:  # "A on the left and B on the right"
        return build_caption(
            a
            + [("on", None), ("the", None), (first, 0), ("and", None)]
            + b
            + [("on", None), ("the", None), (second, 1)]
        )
    if style == 1:  # "B on the right and A on the left"
        return build_caption(
            b
            + [("on", None), ("the", None), (second, 1), ("and", None)]
            + a
            + [("on", None), ("the", None), (first, 0)]
        )
    if style == 2:  # "A to the left of B" / "A above B"
        mid = (
            [("to", None), ("the", None), ("left", 0), ("of", None)]
            if scene.axis == "x"
            else [(rel_first, 0)]
        )
        return build_caption(a + mid + b)
    mid = (
        [("to", None), ("the", None), ("right", 1), ("of", None)]
        if scene.axis == "x"
        else [(rel_second, 1)]
    )
    return build_caption(b + mid + a)


@dataclass(frozen=True)
class ParsedPhrase:
    """An object phrase read back from caption text: word indices of its attributes."""

    color: int | None
    shape: int
    size: int | None


@dataclass(frozen=True)
class ParsedRelation:
    """`word` (index) says phrase `subject` is at `relation` (of phrase `other`, if relative)."""

    word: int
    relation: str
    subject: int
    other: int | None


#: What a word is: whitespace-separated, with "." and "," words of their own -- the detector's
#: rule (`feedback.words.split_words`) on ShapesWorld's ASCII captions, so that verdicts and
#: detector words line up by position and span.
_WORD = re.compile(r"[.,]|[^\s.,]+")


def caption_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for every word of `text`, punctuation words included."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def parse_caption(text: str) -> tuple[list[str], list[ParsedPhrase], list[ParsedRelation]]:
    """Read a ShapesWorld-grammar caption (possibly foiled) back into phrases and relations.

    Returns the words, the object phrases in order, and the position statements. Works on any
    caption of the grammar in `describe`, including ones with one word swapped.
    """
    words = [w.lower() for w, _, _ in caption_words(text)]
    phrases: list[ParsedPhrase] = []
    color = size = None
    for i, w in enumerate(words):
        kind = WORD_KINDS.get(w)
        if kind == "color":
            color = i
        elif kind == "size":
            size = i
        elif w in SHAPES:
            phrases.append(ParsedPhrase(color, i, size))
            color = size = None
    relations: list[ParsedRelation] = []
    for i, w in enumerate(words):
        if w not in RELATIONS:
            continue
        before = sum(1 for p in phrases if p.shape < i) - 1
        relative = (i + 1 < len(words) and words[i + 1] == "of") or w in ("above", "below")
        if relative and before >= 0 and before + 1 < len(phrases):
            relations.append(ParsedRelation(i, w, before, before + 1))
        elif before >= 0:
            relations.append(ParsedRelation(i, w, before, None))
    return words, phrases, relations


def caption_from_text(text: str) -> Caption:
    """A `Caption` read back from grammar text (e.g. a prompt): word kinds from the
    vocabulary, and each attribute word bound to its phrase (numbered in text order; a
    position word to its subject phrase), which is what foils and object swaps need."""
    words, phrases, relations = parse_caption(text)
    obj: dict[int, int] = {}
    for k, p in enumerate(phrases):
        for i in (p.color, p.shape, p.size):
            if i is not None:
                obj[i] = k
    for r in relations:
        obj[r.word] = r.subject
    pieces = [(w, obj.get(i)) for i, (w, _, _) in enumerate(caption_words(text))]
    cap = build_caption(pieces)
    if cap.text != text:
        raise ValueError(f"not a single-spaced grammar caption: {text!r}")
    return cap
