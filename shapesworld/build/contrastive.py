"""CLIP contrastive loss with per-image hard negatives (foil captions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def duplicate_mask(texts: list[str], captions: list[str]) -> torch.Tensor:
    """(B, T) bool: True where text column t equals image b's own caption at another index.

    Those columns are true descriptions of image b, so they must not act as negatives.
    """
    cap = {c: [] for c in captions}
    for b, c in enumerate(captions):
        cap[c].append(b)
    mask = torch.zeros(len(captions), len(texts), dtype=torch.bool)
    for t, text in enumerate(texts):
        for b in cap.get(text, ()):
            if t != b:
                mask[b, t] = True
    return mask


def hard_negative_clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    n_images: int,
    foils_per_image: int,
    dup_mask: torch.Tensor,
    hard_weight: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Contrastive loss over B images and B + B*F texts (captions first, then foils by image).

    image_emb: (B, D) normalised; text_emb: (B*(1+F), D) normalised.
    Terms: image->all texts CE, caption->images CE, and per image CE over [caption, its F foils]
    (weighted by `hard_weight`), which is what teaches every word kind to matter.
    """
    b, f = n_images, foils_per_image
    scale = logit_scale.exp()
    logits = scale * image_emb @ text_emb.T  # (B, T)
    logits = logits.masked_fill(dup_mask.to(logits.device), float("-inf"))
    target = torch.arange(b, device=logits.device)
    loss_i = F.cross_entropy(logits, target)
    loss_t = F.cross_entropy(logits[:, :b].T, target)
    foil_logits = logits[:, b:].reshape(b, b, f)[target, target]  # (B, F): own foils
    own = torch.cat([logits[target, target][:, None], foil_logits], 1)
    own = torch.nan_to_num(own, neginf=-1e4)
    loss_h = F.cross_entropy(own, torch.zeros(b, dtype=torch.long, device=own.device))
    loss = (loss_i + loss_t) / 2 + hard_weight * loss_h
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "loss_contrastive": float((loss_i + loss_t) / 2),
            "loss_hard": float(loss_h),
            "acc_retrieval": float((logits[:, :b].argmax(1) == target).float().mean()),
            "prefer_true": (own[:, :1] > own[:, 1:]).float(),  # (B, F) per foil
        }
    return loss, stats


def group_ranking_loss(
    image_emb: torch.Tensor,
    prompt_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    right: torch.Tensor,
) -> tuple[torch.Tensor, dict]:
    """Within-prompt ranking of generated images: for each of G prompts, a softmax over its n
    images' cosines with the prompt, whose mass should sit on the images the oracle finds
    right (-log of that mass). This is what selection by CLIPScore needs and what the
    caption-side loss above never asks for: which of *these* images shows the prompt.

    image_emb: (G * n, D) normalised, group by group; prompt_emb: (G, D) normalised;
    right: (G, n) bool with at least one True and one False per row.
    """
    g, n = right.shape
    logits = logit_scale.exp() * (image_emb.view(g, n, -1) * prompt_emb[:, None]).sum(-1)
    right = right.to(logits.device)
    pos = torch.logsumexp(logits.masked_fill(~right, float("-inf")), 1)
    loss = (torch.logsumexp(logits, 1) - pos).mean()
    with torch.no_grad():
        top_right = right[torch.arange(g, device=logits.device), logits.argmax(1)]
    return loss, {
        "loss_group": float(loss.detach()),
        "group_top_right": float(top_right.float().mean()),
    }
