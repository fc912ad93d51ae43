"""Result types: a score per word and a report per (image, caption) pair."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WordScore:
    """One caption word.

    start, end: [start, end) character span in the caption as passed (template excluded).
    score: signed attribution (mean of the word's BPE token scores); negative = the image
        argues against this word. None when the word lies beyond the model's context.
    """

    word: str
    start: int
    end: int
    score: float | None
    misaligned: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MisalignmentReport:
    """Word-level misalignment of one (image, caption) pair.

    cosine: cosine similarity s of the normalised image and templated-text embeddings.
    clip_score: 2.5 * max(s, 0).
    sum_negative_attribution: sum of the misaligned words' scores (0 if none).
    f_clip_score: sum_negative_attribution * (1 - clip_score / 2.5); 0 = nothing found.
    truncated: the caption did not fit the model's context; the cut words have score None.
    """

    caption: str
    words: list[WordScore]
    cosine: float
    clip_score: float
    sum_negative_attribution: float
    f_clip_score: float
    truncated: bool = False

    @property
    def misaligned_words(self) -> list[str]:
        return [w.word for w in self.words if w.misaligned]

    @property
    def unscored_words(self) -> list[str]:
        return [w.word for w in self.words if w.score is None]

    def to_dict(self) -> dict:
        return {
            "caption": self.caption,
            "clip_score": self.clip_score,
            "f_clip_score": self.f_clip_score,
            "sum_negative_attribution": self.sum_negative_attribution,
            "cosine": self.cosine,
            "misaligned_words": self.misaligned_words,
            "truncated": self.truncated,
            "words": [w.to_dict() for w in self.words],
        }

    def highlighted(self, color: bool = False) -> str:
        """The caption with misaligned words in [brackets] (or red, for terminals)."""
        out, pos = [], 0
        for w in self.words:
            out.append(self.caption[pos : w.start])
            text = self.caption[w.start : w.end]
            if w.misaligned:
                text = f"\x1b[1;31m{text}\x1b[0m" if color else f"[{text}]"
            out.append(text)
            pos = w.end
        out.append(self.caption[pos:])
        return "".join(out)
