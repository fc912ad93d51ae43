"""Map a prompt's words onto the token positions of *another* tokenizer (a generator's).

The detector reports words with character spans in the caption. A diffusers pipeline reads the
same prompt with its own tokenizer(s) (SD 1.x/2.x: one `CLIPTokenizer`; SDXL: two; SD3: two CLIP
and a T5; FLUX: CLIP and T5; PixArt: T5; Sana: Gemma), so a word flagged by the detector reaches
the generator through those spans: a generator token belongs to every word whose characters it
overlaps. Any tokenizer works: fast tokenizers (CLIP, T5/sentencepiece, Gemma) report character
offsets; a slow CLIP tokenizer is read piece by piece. Positions are model-input positions: a
start-of-text token is position 0 when the tokenizer adds one, padding and end tokens are never
a word's, and tokens cut by `max_length` are dropped (the word is then marked `truncated`).

Two pipeline habits are modelled: a text the pipeline puts *before* the prompt (`prefix`, e.g.
Sana's complex human instruction, whose tokens shift every position), and an encoder output of
which the pipeline keeps only some positions (`keep`, Sana again: the start token and the last
`max_sequence_length - 1` positions).
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
    prefix: str = "",
    keep: Sequence[int] | None = None,
) -> WordTokens:
    """Token positions of each word of `prompt` in `tokenizer`'s input (see module docstring).

    words: the detector's words for this prompt (`DetectorOutput.words[b]`); defaults to
        `split_words(prompt)`, which is what the detector uses.
    max_length: input length (default `tokenizer.model_max_length`, 77 for SD's CLIP; a T5 or
        Gemma slot passes the pipeline's `max_sequence_length`).
    prefix: text the pipeline prepends to the prompt before tokenizing (its tokens belong to no
        word and count against `max_length`).
    keep: the input positions the pipeline keeps from the encoder's output, in order; positions
        are then reported in the kept sequence, and a word whose token is dropped is
        `truncated`. Default: every position.
    """
    words = list(words) if words is not None else split_words(prompt)
    max_length = max_length or tokenizer.model_max_length
    text = prefix + prompt
    shift = len(prefix)
    spans = tokenizer_spans(tokenizer, text)
    padded = tokenizer(text, padding="max_length", max_length=max_length, truncation=True)[
        "input_ids"
    ]
    bos = tokenizer.bos_token_id
    offset = 1 if bos is not None and padded and padded[0] == bos else 0
    # Content, then the tokenizer's trailing specials (CLIP's end-of-text, T5's </s>; Gemma
    # adds none), then padding: the trailing slots are reserved when the text is cut.
    trailing = max(_num_specials(tokenizer) - offset, 0)
    capacity = max_length - offset - trailing
    n_kept = min(len(spans), capacity)
    # Prefix tokens (wholly before the prompt) are content of the input, not of any word.
    first = next((k for k, (a, b) in enumerate(spans) if b > shift), len(spans))
    kept_at = list(range(len(padded))) if keep is None else [p % len(padded) for p in keep]
    where = {p: i for i, p in enumerate(kept_at)}
    positions: list[list[int]] = []
    truncated: list[bool] = []
    for w in words:
        a0, b0 = w.start + shift, w.end + shift
        owned = [k for k, (a, b) in enumerate(spans) if a < b0 and b > a0]
        inside = [offset + k for k in owned if k < n_kept and (offset + k) in where]
        positions.append([where[p] for p in inside])
        truncated.append(len(inside) < len(owned))
    content = {where[offset + k] for k in range(first, n_kept) if (offset + k) in where}
    ids = [padded[p] for p in kept_at]
    special = [i for i in range(len(ids)) if i not in content]
    return WordTokens(prompt, words, positions, truncated, ids, special)


def _num_specials(tokenizer) -> int:
    """How many special tokens the tokenizer adds to one text (CLIP 2, T5 1, Gemma 1)."""
    try:
        return int(tokenizer.num_special_tokens_to_add(pair=False))
    except (AttributeError, NotImplementedError, TypeError):
        n_with = len(tokenizer("a")["input_ids"])
        return n_with - len(tokenizer("a", add_special_tokens=False)["input_ids"])
