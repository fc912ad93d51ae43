"""Misaligned words -> Attend-and-Excite token indices, and the A&E pipeline built from the
same components (diffusers' `StableDiffusionAttendAndExcitePipeline`, which users otherwise
feed with indices picked by hand)."""

from __future__ import annotations

from collections.abc import Sequence

from feedback import Word, align_words


def token_indices(
    prompt: str, words: Sequence[Word], misaligned: Sequence[bool], tokenizer
) -> list[int]:
    """Input positions (start-of-text = 0, as A&E counts them) of the misaligned words' tokens;
    never start-of-text, end-of-text or padding; words cut by the context are skipped."""
    al = align_words(prompt, tokenizer, words=words)
    special = set(al.special_positions)
    out: list[int] = []
    for pos, flagged in zip(al.positions, misaligned):
        if flagged:
            out.extend(p for p in pos if p not in special and p not in out)
    return sorted(out)


def attention_resolution(unet, height_latent: int | None = None) -> tuple[int, int]:
    """The cross-attention map size A&E should read: the UNet resolution with cross-attention
    closest to 16 (A&E's default on SD 1.x at 512 px)."""
    size = height_latent or unet.config.sample_size
    res = [
        size // 2**i for i, kind in enumerate(unet.config.down_block_types) if "CrossAttn" in kind
    ]
    if not res:
        raise ValueError("this UNet has no cross-attention: Attend-and-Excite cannot act")
    best = min(res, key=lambda r: abs(r - 16))
    return (best, best)


def build_attend_and_excite(pipe):
    """diffusers' A&E pipeline over `pipe`'s own modules (no copy of the weights)."""
    from diffusers.pipelines.deprecated import StableDiffusionAttendAndExcitePipeline

    return StableDiffusionAttendAndExcitePipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
