"""Misaligned words -> per-word weights -> weighted `prompt_embeds` (and their syntax strings).

The rule (bounded, documented in `LoopConfig`): weights start at 1; each round a word is
flagged, its weight grows by `weight_step * min(score / threshold, 2)` up to `max_weight`.
Weights reach the pipeline through character spans: each word's tokens in every tokenizer of
the pipeline (`feedback.align_words`), and the text encoder's output at those positions is
multiplied by the weight (Compel/A1111 style, without re-normalization, so only the mapped
positions change and weight 1 everywhere is exactly the plain call). Pooled embeddings
(SDXL) are left as the encoder made them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from feedback import Word, WordTokens

from .prompt_syntax import emit


def raise_weights(
    weights: list[float],
    scores: Sequence[float | None],
    misaligned: Sequence[bool],
    *,
    threshold: float,
    step: float,
    max_weight: float,
) -> list[float]:
    """The next round's weights: flagged words raised by `step * min(score/threshold, 2)`."""
    out = list(weights)
    for i, (s, flagged) in enumerate(zip(scores, misaligned)):
        if flagged and s is not None:
            severity = min(s / threshold, 2.0) if threshold < 0 else 1.0
            # 4 decimals: what the syntax strings carry, so they round-trip exactly
            # never lowers a weight the user gave above max_weight
            raised = min(max_weight, out[i] + step * max(severity, 1.0))
            out[i] = round(max(out[i], raised), 4)
    return out


def position_weights(alignment: WordTokens, weights: Sequence[float]) -> torch.Tensor:
    """(L,) float32 weight per position of one encoder's input, from where the words sit
    there (`feedback.align_words` / `TextSlot.align`): 1 where no word is weighted; a token
    shared by two words takes the weight further from 1 (the larger above 1, the smaller
    below)."""
    w = torch.ones(len(alignment.input_ids))
    for pos, wt in zip(alignment.positions, weights):
        for p in pos:
            w[p] = max(float(w[p]), float(wt)) if wt >= 1 else min(float(w[p]), float(wt))
    return w


def to_a1111(prompt: str, words: Sequence[Word], weights: Sequence[float]) -> str:
    """The prompt with weighted words in A1111 syntax, `(word:1.3)` (round-trips through
    `generation.parse_prompt`)."""
    return emit(prompt, words, weights, "a1111")


def to_compel(prompt: str, words: Sequence[Word], weights: Sequence[float]) -> str:
    """The prompt with weighted words in Compel syntax, `(word)1.3` (round-trips through
    `generation.parse_prompt`)."""
    return emit(prompt, words, weights, "compel")
