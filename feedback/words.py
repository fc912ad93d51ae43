"""Words of a caption, which BPE tokens belong to each, and the mean of their token scores.

What a word is (the paper's rule, extended for scripts without spaces):
- split on whitespace; "." and "," are words of their own (the reference's rule);
- every CJK ideograph, kana and CJK full stop/comma is a word of its own (those scripts put no
  spaces between words, and without this rule a whole CJK sentence would be one word). Hangul
  is written with spaces and follows the whitespace rule; so does every other script.

Which tokens a word owns is decided by the tokenizer's own view of the *whole* templated text:
each backend reports every token's character span in that text (`Backend.token_spans`), and a
word owns every token whose span overlaps the word's span. A token that straddles two words
(CLIP's BPE reads "..." as one token, but the rule makes it three "." words) belongs to
both, so both get its score. A word's score is the mean over the tokens it owns; a word that
owns no token (characters the tokenizer's cleaning removes) or whose tokens do not all fit the
context is unscored (None).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs (+ ext. A, compatibility)
    "\U00020000-\U0002ffff"  # CJK ext. B and later
    "\u3001\u3002\uff0c\uff0e"  # 、 。 ， ．
)
_WORD = re.compile(rf"[.,]|[{_CJK}]|[^\s.,{_CJK}]+")
_PUNCT_ONLY = re.compile(r"^[^\w]+$")
_FULL_STOPS = {"\u3001", "\u3002", "\uff0c", "\uff0e"}


@dataclass(frozen=True)
class Word:
    """A word and its [start, end) character span in the caption."""

    text: str
    start: int
    end: int

    @property
    def is_punctuation(self) -> bool:
        return bool(_PUNCT_ONLY.match(self.text)) or self.text in _FULL_STOPS


def split_words(text: str) -> list[Word]:
    """Split into words (see the module docstring); spans index into `text`."""
    return [Word(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def join_template(template: str, caption: str) -> str:
    """The text the model reads. A space is inserted if the template does not end in one, so
    the template's last word and the caption's first word never fuse into one BPE word."""
    if template and not template[-1].isspace():
        template += " "
    return template + caption


def shorten(text: str, limit: int = 40) -> str:
    """`text` cut to `limit` characters with an ellipsis, for messages about user input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class TokenLayout:
    """Where each caption word's tokens sit in the tokenized templated text.

    `slices[i]` is the token range [start, end) (positions in the model input, SOT = 0) owned
    by caption word i, or None when the word is unscored (cut off by the context, or owning
    no token). Ranges of neighbouring words may share a token. `n_tokens` counts content
    tokens (no SOT/EOT) of the whole templated text before truncation; `capacity` is how many
    the model reads.
    """

    words: list[Word]
    slices: list[tuple[int, int] | None]
    n_tokens: int
    capacity: int

    @property
    def truncated(self) -> bool:
        return self.n_tokens > self.capacity


def layout_tokens(
    caption_words: Sequence[Word],
    token_spans: Sequence[tuple[int, int]],
    caption_offset: int,
    context_length: int,
) -> TokenLayout:
    """Give each caption word the tokens whose character spans overlap it.

    caption_words: words with spans in the caption.
    token_spans: [start, end) character span in the templated text of every content token of
        the full (untruncated) tokenization, in order (no SOT/EOT).
    caption_offset: where the caption starts in the templated text.
    context_length: the model's context including SOT and EOT, so `context_length - 2` content
        tokens fit; words that do not fit entirely are unscored rather than averaged over a part.
    """
    capacity = context_length - 2
    slices: list[tuple[int, int] | None] = []
    k = 0  # first token that may still overlap the current word (words and tokens are ordered)
    n = len(token_spans)
    for w in caption_words:
        ws, we = w.start + caption_offset, w.end + caption_offset
        while k < n and token_spans[k][1] <= ws:
            k += 1
        j = k
        while j < n and token_spans[j][0] < we:
            j += 1
        first, last = k, j  # tokens [first, last) overlap the word
        if last > first and last <= capacity:
            slices.append((first + 1, last + 1))  # +1: SOT sits at position 0
        else:
            slices.append(None)
    return TokenLayout(list(caption_words), slices, n, capacity)


def word_scores(token_scores: torch.Tensor, layout: TokenLayout) -> list[float | None]:
    """Mean token score per caption word (None for unscored words).

    token_scores: (seq,) relevance of every input position (R[eot, j]).
    """
    out: list[float | None] = []
    for s in layout.slices:
        out.append(None if s is None else float(token_scores[s[0] : s[1]].mean()))
    return out


def word_pooling(
    layouts: Sequence[TokenLayout], seq_len: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batched version of `word_scores`: `word_scores = pool @ token_scores[..., None]`.

    Returns `pool` (B, W, seq_len) float32, row (b, i) averaging word i's tokens, and `mask`
    (B, W) bool, True where the word is scored. W is the longest layout's word count.
    """
    n_words = max((len(lay.words) for lay in layouts), default=0)
    rows, cols, vals = [], [], []
    mask = torch.zeros(len(layouts), n_words, dtype=torch.bool)
    for b, lay in enumerate(layouts):
        for i, s in enumerate(lay.slices):
            if s is None:
                continue
            mask[b, i] = True
            n = s[1] - s[0]
            for t in range(s[0], s[1]):
                rows.append(b * n_words + i)
                cols.append(t)
                vals.append(1.0 / n)
    pool = torch.zeros(len(layouts) * n_words, seq_len)
    if rows:
        pool[torch.tensor(rows), torch.tensor(cols)] = torch.tensor(vals)
    return pool.view(len(layouts), n_words, seq_len).to(device), mask.to(device)


# --- token character spans -------------------------------------------------------------------
def byte_token_spans(normalized: str, token_bytes: Sequence[bytes]) -> list[tuple[int, int]]:
    """Character spans in `normalized` of byte-level BPE tokens.

    normalized: the text exactly as the tokenizer split it (after its cleaning).
    token_bytes: the UTF-8 bytes each token stands for, in order; between tokens the text may
        only hold whitespace (what the pre-tokenizer skips). A token that ends inside a
        multi-byte character owns that character (so does the token that starts it).
    Raises ValueError when the tokens do not spell the text.
    """
    data = normalized.encode("utf-8")
    char_of_byte = []
    for i, ch in enumerate(normalized):
        char_of_byte.extend([i] * len(ch.encode("utf-8")))
    spans, pos = [], 0
    for tb in token_bytes:
        at = data.find(tb, pos) if tb else pos
        if at < 0 or data[pos:at].strip():
            raise ValueError(f"token {tb!r} not found at byte {pos} of {normalized!r}")
        end = at + len(tb)
        spans.append((char_of_byte[at], char_of_byte[end - 1] + 1) if tb else (at, at))
        pos = end
    return spans


def bpe_token_spans(
    text: str, cleaned: str, pieces: Sequence[str], byte_decoder: dict[str, int]
) -> list[tuple[int, int]]:
    """Spans in `text` of CLIP byte-level BPE pieces (vocabulary strings, `</w>`-suffixed)
    that a tokenizer made from `cleaned`, its cleaned version of `text`."""
    as_bytes = [bytes(byte_decoder[c] for c in p.removesuffix("</w>")) for p in pieces]
    return map_spans_to_original(text, cleaned, byte_token_spans(cleaned, as_bytes))


def map_spans_to_original(
    original: str, normalized: str, spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Map character spans in a tokenizer's cleaned text back onto the text it was given.

    Cleaning lowercases, collapses whitespace, fixes mojibake (ftfy) and unescapes HTML, so the
    two texts are aligned character by character (difflib, case-insensitive); a character the
    cleaning replaced maps to the whole original stretch it replaced.
    """
    if normalized == original.lower() and len(normalized) == len(original):
        return list(spans)
    a = [c.lower() for c in original]
    sm = difflib.SequenceMatcher(None, a, list(normalized), autojunk=False)
    lo = [0] * (len(normalized) + 1)
    hi = [0] * (len(normalized) + 1)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        for j in range(j1, j2):
            if tag == "equal":
                lo[j], hi[j] = i1 + (j - j1), i1 + (j - j1) + 1
            elif tag == "replace":
                lo[j], hi[j] = i1, i2
            elif tag == "insert":  # a character the cleaning added: attach it to its left
                lo[j], hi[j] = max(i1 - 1, 0), max(i1, 1)
    out = []
    for s, e in spans:
        out.append((lo[s], hi[e - 1]) if e > s else (lo[s], lo[s]))
    return out
