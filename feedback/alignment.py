"""Map a prompt's words onto the token positions of *another* tokenizer (a generator's).

The detector reports words with character spans in the caption. A diffusers pipeline reads the
same prompt with its own tokenizer(s) (SD 1.x/2.x: one `CLIPTokenizer`; SDXL: two), so a word
flagged by the detector reaches the generator through those spans: a generator token belongs
to every word whose characters it overlaps. Positions are model-input positions: the
start-of-text token is position 0 when the tokenizer adds one, padding and end-of-text are never
a word's, and tokens cut by `max_length` are dropped (the word is then marked `truncated`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .words import Word, bpe_token_spans, split_words


def tokenizer_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character spans in `text` of the content tokens (no specials) of a transformers
    tokenizer: offsets from a fast tokenizer, else the byte-level pieces of a slow CLIP one."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(o) for o in enc["offset_mapping"]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return bpe_token_spans(text, " ".join(text.split()).lower(), pieces, tokenizer.byte_decoder)


@dataclass
class WordTokens:
    """Where each word of `prompt` sits in one tokenizer's padded input.

    words: the prompt's words (text and [start, end) character span).
    positions: per word, the input positions (SOT = 0) of the tokens it owns; [] when the word
        owns no token or was cut by `max_length`.
    truncated: per word, True when at least one of its tokens was cut by `max_length`.
    input_ids: the tokenizer's ids for the prompt, padded/truncated to `max_length`.
    special_positions: positions holding start-of-text, end-of-text or padding.
    """

    prompt: str
    words: list[Word]
    positions: list[list[int]]
    truncated: list[bool]
    input_ids: list[int]
    special_positions: list[int]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["words"] = [asdict(w) for w in self.words]
        return d


def align_words(
    prompt: str,
    tokenizer,
    *,
    words: Sequence[Word] | None = None,
    max_length: int | None = None,
) -> WordTokens:
    """Token positions of each word of `prompt` in `tokenizer`'s input (see module docstring).

    words: the detector's words for this prompt (`DetectorOutput.words[b]`); defaults to
        `split_words(prompt)`, which is what the detector uses.
    max_length: input length (default `tokenizer.model_max_length`, 77 for SD's CLIP).
    """
    words = list(words) if words is not None else split_words(prompt)
    max_length = max_length or tokenizer.model_max_length
    spans = tokenizer_spans(tokenizer, prompt)
    padded = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True)[
        "input_ids"
    ]
    bos = tokenizer.bos_token_id
    offset = 1 if bos is not None and padded and padded[0] == bos else 0
    # CLIP-style: content, then end-of-text, then padding; the end-of-text slot is reserved.
    has_eos = tokenizer.eos_token_id is not None
    capacity = max_length - offset - (1 if has_eos else 0)
    n_kept = min(len(spans), capacity)
    positions: list[list[int]] = []
    truncated: list[bool] = []
    for w in words:
        owned = [k for k, (a, b) in enumerate(spans) if a < w.end and b > w.start]
        positions.append([offset + k for k in owned if k < n_kept])
        truncated.append(any(k >= n_kept for k in owned))
    content = set(range(offset, offset + n_kept))
    special = [p for p in range(len(padded)) if p not in content]
    return WordTokens(prompt, words, positions, truncated, list(padded), special)
