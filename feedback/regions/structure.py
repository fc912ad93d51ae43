"""What a prompt states about objects and where they are: object phrases and relations.

The phrase rule (no parser dependency): the prompt is cut at commas and semicolons (also the
CJK "、，；"), "and", "with", and relative spatial relations ("to the left of", "above", "next
to", "in front of", ...). What lies between two cuts and holds a word is a phrase; the cut
words belong to no phrase. "a red circle on the left and a blue square on the right" gives
"a red circle on the left" and "a blue square on the right" (`split_phrases`, what per-phrase
guidance uses); `parse_structure` then takes absolute placements ("on the left", "at the
top") out of their phrase as relations of one object, so the objects are "a red circle" and
"a blue square". Words are matched to phrases by character span, so any tokenizer's words
map onto them.

Geometry a relation states: `axis` "x" or "y" and `sign` -1 (the subject is left of / above
the other object, or in the left / top part of the image) or +1; axis None for relations a
2-D box cannot judge ("next to", "in front of", "behind": recorded, never judged).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

#: Relations that join two objects, with the geometry they state (subject vs other object);
#: longest first so "to the left of" wins over "left of".
RELATIVE: dict[str, tuple[str | None, int]] = {
    "to the left of": ("x", -1),
    "to the right of": ("x", 1),
    "on the left of": ("x", -1),
    "on the right of": ("x", 1),
    "in front of": (None, 0),
    "on top of": ("y", -1),
    "next to": (None, 0),
    "left of": ("x", -1),
    "right of": ("x", 1),
    "above": ("y", -1),
    "below": ("y", 1),
    "under": ("y", 1),
    "underneath": ("y", 1),
    "beneath": ("y", 1),
    "over": ("y", -1),
    "behind": (None, 0),
    "beside": (None, 0),
    "near": (None, 0),
}
#: Relations kept in `split_phrases`'s cut (the generation loop's historical list).
RELATIONS = tuple(
    k for k in RELATIVE if k not in ("on the left of", "on the right of", "over", "underneath")
)
#: Absolute placements inside a phrase ("on the left"): the place word and its geometry.
ABSOLUTE: dict[str, tuple[str | None, int]] = {
    "left": ("x", -1),
    "right": ("x", 1),
    "top": ("y", -1),
    "bottom": ("y", 1),
    "middle": (None, 0),
    "center": (None, 0),
    "centre": (None, 0),
}

_REL_ALT = "|".join(r"\s+".join(r.split()) for r in RELATIONS)
_CUT = re.compile(r"\s*(?:[,;、，；]|\b(?:and|with|" + _REL_ALT + r")\b)\s*", re.IGNORECASE)
_ABS = re.compile(
    r"\b(?:on|at|in|to)\s+the\s+(" + "|".join(ABSOLUTE) + r")(?:\s+(?:side|half|part))?\b"
    r"(?!\s+of\b)",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)
#: Words that name nothing in a region (articles, quantifiers, copulas): never an object's noun.
FUNCTION_WORDS = frozenset(
    "a an the this that these those some one two three there is are of on in at to it its "
    "image photo picture".split()
)


@dataclass(frozen=True)
class Phrase:
    """One object phrase: its text and [start, end) character span in the prompt."""

    text: str
    start: int
    end: int

    @property
    def noun(self) -> str:
        """The phrase's head noun, its last word that is not a function word ("circle" in "a
        small red circle"): what a zero-shot object detector is asked for."""
        words = [m.group() for m in _WORD.finditer(self.text)]
        content = [w for w in words if w.lower() not in FUNCTION_WORDS]
        return (content or words or [self.text])[-1]


@dataclass(frozen=True)
class Relation:
    """A placement the prompt states.

    text, start, end: the relation's words and their [start, end) span in the prompt.
    subject: index of the phrase it places; other: the phrase it is placed against (None for
        an absolute placement in the image, "on the left").
    axis, sign: the geometry ("x", -1) = subject left of other / in the left part; None when
        a 2-D box cannot judge it ("next to", "behind").
    """

    text: str
    start: int
    end: int
    subject: int
    other: int | None
    axis: str | None
    sign: int

    @property
    def judged(self) -> bool:
        return self.axis is not None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PromptStructure:
    """A prompt's object phrases and relations (`parse_structure`)."""

    prompt: str
    phrases: list[Phrase] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)

    @property
    def regional(self) -> bool:
        """Worth scoring by regions: two or more objects, or a judged placement of one."""
        return len(self.phrases) >= 2 or any(r.judged for r in self.relations)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "phrases": [asdict(p) for p in self.phrases],
            "relations": [r.to_dict() for r in self.relations],
        }


def split_phrases(prompt: str) -> list[Phrase]:
    """The prompt's object phrases in order (one phrase when nothing cuts it); absolute
    placements stay inside their phrase (see the module docstring)."""
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


def _trim(prompt: str, a: int, b: int) -> Phrase | None:
    piece = prompt[a:b]
    text = piece.strip().rstrip(".!?。").strip()
    if not _WORD.search(text):
        return None
    lead = len(piece) - len(piece.lstrip())
    return Phrase(text, a + lead, a + lead + len(text))


def parse_structure(prompt: str) -> PromptStructure:
    """Object phrases and the relations between them or within the image.

    "a red circle to the left of a blue square": phrases "a red circle", "a blue square";
    relation "to the left of" (subject 0, other 1, x, -1). "a red circle on the left and a blue
    square on the right": phrases "a red circle", "a blue square"; relations "on the left"
    (subject 0, absolute) and "on the right" (subject 1). Words of neither ("and", "there is")
    stay whole-image words."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    cuts = list(_CUT.finditer(prompt))
    pieces, last = [], 0
    for m in cuts + [None]:
        b = m.start() if m is not None else len(prompt)
        pieces.append((last, b, m))
        if m is not None:
            last = m.end()
    phrases: list[Phrase] = []
    absolute: list[tuple[int, re.Match]] = []
    owner_before: list[int] = []  # for each cut, the index of the last phrase before it
    for a, b, m in pieces:
        seg = prompt[a:b]
        abs_m = list(_ABS.finditer(seg))
        if abs_m:
            am = abs_m[-1]
            ph = _trim(prompt, a, a + am.start()) or _trim(prompt, a + am.end(), b)
            if ph is not None:
                phrases.append(ph)
                absolute.append((len(phrases) - 1, am, a))
        else:
            ph = _trim(prompt, a, b)
            if ph is not None:
                phrases.append(ph)
        if m is not None:
            owner_before.append(len(phrases) - 1)
    relations: list[Relation] = []
    for k, am, off in absolute:
        axis, sign = ABSOLUTE[am.group(1).lower()]
        relations.append(
            Relation(am.group().strip(), off + am.start(), off + am.end(), k, None, axis, sign)
        )
    for m, before in zip(cuts, owner_before):
        key = " ".join(m.group().strip().lower().split())
        if key not in RELATIVE or before < 0 or before + 1 >= len(phrases):
            continue
        axis, sign = RELATIVE[key]
        start = m.start() + (len(m.group()) - len(m.group().lstrip()))
        relations.append(
            Relation(
                prompt[start : start + len(m.group().strip())],
                start,
                start + len(m.group().strip()),
                before,
                before + 1,
                axis,
                sign,
            )
        )
    relations.sort(key=lambda r: r.start)
    return PromptStructure(prompt, phrases, relations)
