"""Region-aware results: which word is wrong, and where."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..report import MisalignmentReport, WordScore
from .geometry import Box

#: Why a word is judged where it is: on its object's region ("attribute"), by the geometry
#: of the regions ("relation"), because its object was found nowhere ("missing"), or on the
#: whole image ("image": a word of no phrase and no relation, or a one-object prompt).
REASONS = ("attribute", "relation", "missing", "image")


@dataclass(frozen=True)
class RegionWord(WordScore):
    """A caption word with where it was judged.

    score: signed, in attribution units (below the detector's eps = misaligned). A phrase
        word: CLIP4DM's attribution of its phrase on the phrase's own region. A relation
        word: the relation's margin (the stated arrangement's score minus the swapped one's,
        cosine units). A missing object's words: the phrase's lift over a blank image.
    box: (x0, y0, x1, y1) in pixels of the input image where the word was judged (its
        object's region; a relation's subject), None for whole-image words.
    reason: one of `REASONS`. phrase: index of the phrase it belongs to, or None.
    """

    box: Box | None = None
    reason: str = "image"
    phrase: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"] = list(self.box) if self.box is not None else None
        return d


@dataclass(frozen=True)
class PhraseResult:
    """One object phrase on its region.

    box: the region it was scored on (pixels); cosine: of the phrase (template + phrase) with
    that region; lift: cosine minus the phrase's cosine with a blank image (<= 0: the object
    was found nowhere, `found` False)."""

    text: str
    start: int
    end: int
    box: Box
    cosine: float
    lift: float
    found: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"] = list(self.box)
        return d


@dataclass(frozen=True)
class RelationResult:
    """A stated placement and its verdict.

    holds: True / False by the regions' geometry and CLIP's preference for the stated
    arrangement over the swapped one; None when it cannot be judged ("next to") or its object
    is missing. margin: stated minus swapped arrangement score (cosine units; < 0 = the image
    shows the swap)."""

    text: str
    start: int
    end: int
    subject: int
    other: int | None
    axis: str | None
    sign: int
    holds: bool | None
    margin: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RegionReport(MisalignmentReport):
    """`MisalignmentReport` with each word judged where it belongs (`RegionWord`), per phrase
    its region, per relation its verdict, and one combined `score`.

    score: higher = more aligned. With two or more phrases (or a placement): the weakest
        phrase's cosine on its region (a missing object's is low), lowered by every failed
        relation's margin (a minimum, so one failure cannot hide behind good phrases); with one
        phrase and nothing placed, the whole-image cosine (the whole-image report unchanged).
    clip_score, f_clip_score, cosine: whole-image CLIPScore and cosine; F-CLIPScore from the
        region words' flags and scores. size: (height, width) of the image in pixels.
    """

    score: float = 0.0
    phrases: list[PhraseResult] = field(default_factory=list)
    relations: list[RelationResult] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    regional: bool = False

    @property
    def missing(self) -> list[str]:
        return [p.text for p in self.phrases if not p.found]

    @property
    def weakest_phrase(self) -> PhraseResult | None:
        return min(self.phrases, key=lambda p: p.cosine) if self.phrases else None

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(
            score=self.score,
            regional=self.regional,
            size=list(self.size),
            phrases=[p.to_dict() for p in self.phrases],
            relations=[r.to_dict() for r in self.relations],
            missing=self.missing,
        )
        return d
