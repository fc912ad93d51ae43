"""CLIPScore, F-CLIPScore and the selection of misaligned words (pure functions)."""

from __future__ import annotations

import math

import torch

MODES = ("threshold", "most-negative")


def clip_score(cosine: float) -> float:
    """CLIPScore on Hessel et al.'s scale: 2.5 * max(cos, 0) (not torchmetrics' 100 * cos)."""
    return 2.5 * max(float(cosine), 0.0)


def f_clip_score(sum_negative_attribution: float, clip_score_value: float) -> float:
    """F-CLIPScore = sum_negative_attribution * (1 - CLIPScore / 2.5).

    0 means no misalignment was found; more negative is worse.
    """
    return float(sum_negative_attribution) * (1.0 - float(clip_score_value) / 2.5)


def select_misaligned(
    scores: list[float | None],
    *,
    mode: str = "threshold",
    threshold: float = -5e-5,
    eligible: list[bool] | None = None,
) -> list[int]:
    """Indices of misaligned words.

    scores: per-word scores (None = unscored, never selected).
    eligible: words that may be selected (punctuation-only words are not).
    mode "threshold": every eligible word with score < threshold.
    mode "most-negative": the single lowest-scoring eligible word (the FOIL variant).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cand = [i for i, s in enumerate(scores) if s is not None and (eligible is None or eligible[i])]
    if mode == "threshold":
        return [i for i in cand if scores[i] < threshold]
    return [min(cand, key=lambda i: scores[i])] if cand else []


def sum_negative_attribution(scores: list[float | None], misaligned: list[int]) -> float:
    """Sum of the selected words' scores (0 when none is selected)."""
    return float(sum(scores[i] for i in misaligned)) if misaligned else 0.0


def check_finite(name: str, value: float) -> None:
    from .errors import NonFiniteScoreError

    if not math.isfinite(value):
        raise NonFiniteScoreError(
            f"{name} is {value}: the model produced non-finite values (try --dtype fp32)"
        )


def misaligned_mask(
    word_scores: torch.Tensor, eligible: torch.Tensor, *, mode: str, threshold: float
) -> torch.Tensor:
    """Batched `select_misaligned`: (B, W) bool from (B, W) scores and an eligibility mask
    (scored and not punctuation-only)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "threshold":
        return eligible & (word_scores < threshold)
    masked = word_scores.masked_fill(~eligible, float("inf"))
    out = torch.zeros_like(eligible)
    if out.shape[1]:
        lowest = masked.argmin(dim=1)
        out[torch.arange(len(out), device=out.device), lowest] = True
    return out & eligible
