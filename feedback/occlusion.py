"""Leave-one-word-out occlusion: the strongest simple baseline, offered as `method="occlusion"`.

A word's score is `cos(image, caption) - cos(image, caption without that word)`: negative when
deleting the word makes the caption fit the image better, the same sign convention as the
gradient method. The image is encoded once; all word-deleted captions of a batch go through
one no-grad text forward. Cost: (1 + words) text forwards per pair, no backward.
"""

from __future__ import annotations

import torch

from .backends import Backend, cosine, encode_text_fast
from .words import TokenLayout


def delete_tokens(ids: torch.Tensor, start: int, end: int, pad: int) -> torch.Tensor:
    """(L,) ids with positions [start, end) removed and `pad` appended to keep the length."""
    return torch.cat([ids[:start], ids[end:], ids.new_full((end - start,), pad)])


def occlusion_scores(
    backend: Backend,
    image_emb: torch.Tensor,
    ids: torch.Tensor,
    eot: torch.Tensor,
    layouts: list[TokenLayout],
) -> tuple[torch.Tensor, list[list[float | None]]]:
    """Cosine of each full pair (B,) and per-word occlusion scores (None for unscored words).

    image_emb: (B, D); ids: (B, L) cut after the last EOT; eot: (B,).
    """
    variants, owner, slots = [], [], []
    for b, layout in enumerate(layouts):
        for w, sl in enumerate(layout.slices):
            if sl is not None:
                # Pad with the row's own last token: past EOT it is never read (causal mask).
                variants.append(delete_tokens(ids[b], sl[0], sl[1], int(ids[b, -1])))
                owner.append(b)
                slots.append((b, w, sl[1] - sl[0]))
    full = cosine(image_emb, encode_text_fast(backend, ids, eot))
    scores: list[list[float | None]] = [[None] * len(lay.slices) for lay in layouts]
    if variants:
        v_ids = torch.stack(variants)
        own = torch.tensor(owner, device=ids.device)
        v_eot = eot[own] - torch.tensor([n for _, _, n in slots], device=ids.device)
        v_cos = cosine(image_emb[own], encode_text_fast(backend, v_ids, v_eot))
        for (b, w, _), c in zip(slots, v_cos.tolist()):
            scores[b][w] = float(full[b]) - c
    return full, scores
