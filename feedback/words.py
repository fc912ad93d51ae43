"""Words of a caption, their character spans, and the mean of their BPE token scores.

The reference splits the templated text on spaces, with "." and "," as words of their own;
each word's score is the mean of its BPE tokens' scores and the template's words are dropped.
We split the template and the caption separately so every word keeps its span in the caption
the user passed, not in the templated text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_WORD = re.compile(r"[.,]|[^\s.,]+")
_PUNCT_ONLY = re.compile(r"^[^\w]+$")


@dataclass(frozen=True)
class Word:
    """A word and its [start, end) character span in the caption."""

    text: str
    start: int
    end: int

    @property
    def is_punctuation(self) -> bool:
        return bool(_PUNCT_ONLY.match(self.text))


def split_words(text: str) -> list[Word]:
    """Split on whitespace, with "." and "," as words of their own (reference semantics)."""
    return [Word(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def join_template(template: str, caption: str) -> str:
    """The text the model reads. A space is inserted if the template does not end in one, so
    the template's last word and the caption's first word never fuse into one BPE word."""
    if template and not template[-1].isspace():
        template += " "
    return template + caption


@dataclass(frozen=True)
class TokenLayout:
    """Where each caption word's tokens sit in the tokenized templated text.

    `slices[i]` is the token range (positions in the model input, SOT = 0) of caption word i,
    or None when the context cut the word off. `n_tokens` counts content tokens (no SOT/EOT)
    of the whole templated text before truncation.
    """

    words: list[Word]
    slices: list[tuple[int, int] | None]
    n_tokens: int
    capacity: int

    @property
    def truncated(self) -> bool:
        return self.n_tokens > self.capacity


def layout_tokens(
    template_words: list[str], caption_words: list[Word], counts: list[int], context_length: int
) -> TokenLayout:
    """Place words on token positions given each word's BPE token count.

    counts: tokens per word, template words first, then caption words.
    context_length: the model's context including SOT and EOT, so `context_length - 2` content
    tokens fit; words that do not fit entirely are unscored rather than averaged over a part.
    """
    capacity = context_length - 2
    pos = 1 + sum(counts[: len(template_words)])  # after SOT and the template
    slices: list[tuple[int, int] | None] = []
    for c in counts[len(template_words) :]:
        end = pos + c
        slices.append((pos, end) if end - 1 <= capacity and c > 0 else None)
        pos = end
    return TokenLayout(caption_words, slices, pos - 1, capacity)


def word_scores(token_scores: torch.Tensor, layout: TokenLayout) -> list[float | None]:
    """Mean token score per caption word (None for words cut off by the context).

    token_scores: (seq,) relevance of every input position (R[eot, j]).
    """
    out: list[float | None] = []
    for s in layout.slices:
        out.append(None if s is None else float(token_scores[s[0] : s[1]].mean()))
    return out
